import pytest
import torch

import inductor_quant as iq
from inductor_quant.primitives import (
    dequantize_int4,
    dequantize_int8,
    int4_linear_reference,
    int8_linear_reference,
    pack_int4,
    pack_int8_blocked,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    sqnr,
    unpack_aten_int4,
    unpack_int4,
    unpack_int8_blocked,
)


def test_quantize_int8_is_symmetric_per_channel():
    w = torch.randn(65, 100)
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (65,)
    assert q.abs().max() <= 127
    # the largest magnitude of every channel maps to +-127 exactly
    assert torch.equal(q.abs().amax(dim=1), torch.full((65,), 127, dtype=torch.int8))
    # reference: q * s reconstructs w within half a step per channel
    assert (dequantize_int8(q, s) - w).abs().le(s[:, None] / 2 + 1e-7).all()
    # q(-w) == -q(w)
    assert torch.equal(quantize_int8_per_channel(-w)[0], -q)


def test_quantize_int8_zero_channel_has_finite_scale():
    w = torch.randn(3, 8)
    w[1] = 0
    q, s = quantize_int8_per_channel(w)
    assert torch.isfinite(s).all() and torch.equal(q[1], torch.zeros(8, dtype=torch.int8))


def test_quantize_int8_rejects_bad_weights():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        quantize_int8_per_channel(torch.randn(4))
    with pytest.raises(ValueError, match="torch.int32"):
        quantize_int8_per_channel(torch.ones(2, 2, dtype=torch.int32))


def test_int8_sqnr_vs_float_is_high():
    w = torch.randn(256, 512)
    q, s = quantize_int8_per_channel(w)
    assert sqnr(w, dequantize_int8(q, s)) > 38


@pytest.mark.parametrize("n, k", [(1, 32), (3, 32), (65, 96), (256, 512)])
def test_pack_unpack_round_trip_is_exact(n, k):
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = pack_int8_blocked(q)
    assert packed.numel() == -(-n // 4) * 4 * k
    torch.testing.assert_close(unpack_int8_blocked(packed, n, k), q, atol=0, rtol=0)


def test_pack_layout_blocks_are_contiguous_streams():
    q = torch.arange(8 * 64, dtype=torch.int32).reshape(8, 64).to(torch.int8)
    packed = pack_int8_blocked(q)
    # block 0, step 0: rows 0..3, columns 0..31, in that order
    torch.testing.assert_close(packed[:128].reshape(4, 32), q[:4, :32], atol=0, rtol=0)
    torch.testing.assert_close(packed[128:256].reshape(4, 32), q[:4, 32:64], atol=0, rtol=0)


def test_pack_rejects_k_not_multiple_of_step():
    with pytest.raises(ValueError, match="K=100"):
        pack_int8_blocked(torch.zeros(4, 100, dtype=torch.int8))


def test_reference_applies_scale_then_bias_in_fp32():
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    q = torch.randint(-127, 128, (3, 4), dtype=torch.int8)
    s, b = torch.rand(3), torch.rand(3)
    expected = ((x.float() @ q.float().t()) * s + b).to(torch.bfloat16)
    torch.testing.assert_close(int8_linear_reference(x, q, s, b), expected, atol=0, rtol=0)


# --- int4 -----------------------------------------------------------------------------------------------


def test_pack_int4_nibble_order_and_round_trip():
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 7, 8]], dtype=torch.uint8)
    packed = pack_int4(q)
    # k = 2j in the low nibble, k = 2j + 1 in the high nibble
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x87]]
    r = torch.randint(0, 16, (33, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(r)), r)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_quantize_int4_groupwise_shapes_range_and_error(group_size):
    torch.manual_seed(0)
    w = torch.randn(40, 512)
    q, s, z = quantize_int4_groupwise(w, group_size)
    g = 512 // group_size
    assert q.shape == (40, 256) and q.dtype == torch.uint8
    assert s.shape == z.shape == (40, g) and s.dtype == torch.bfloat16 and z.dtype == torch.uint8
    assert int(z.max()) <= 15
    # within the representable range [(0 - zp) * s, (15 - zp) * s] every value is within half a step;
    # values outside it (the clip search shrinks ranges) get the end codes 0 / 15
    step = s.float()[..., None]
    lo, hi = -z.float()[..., None] * step, (15 - z.float()[..., None]) * step
    wg = w.reshape(40, g, group_size)
    codes = unpack_int4(q).reshape(40, g, group_size)
    err = (dequantize_int4(q, s, z, group_size).reshape(40, g, group_size) - wg).abs()
    inside = (wg >= lo) & (wg <= hi)
    assert (err[inside] <= step.expand_as(wg)[inside] * 0.5001 + 1e-6).all()
    assert ((codes[wg > hi] == 15).all()) and ((codes[wg < lo] == 0).all())


@pytest.mark.parametrize(("group_size", "floor_db"), [(32, 21.5), (64, 20.7), (128, 20.0), (256, 19.5)])
def test_quantize_int4_sqnr_on_normal_weights(group_size, floor_db):
    # reference: the float weight. The floor is 20 dB at g128 (measured 20.4 here; 19.9 without the clip search)
    torch.manual_seed(0)
    w = torch.randn(512, 2048)
    q, s, z = quantize_int4_groupwise(w, group_size)
    assert sqnr(w, dequantize_int4(q, s, z, group_size)) >= floor_db


def test_quantize_int4_zero_group_and_constant_group():
    w = torch.zeros(2, 64)
    w[1, :32] = 3.0  # one positive constant group: zero point 0, exact
    q, s, z = quantize_int4_groupwise(w, 32, torch.float32)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(dequantize_int4(q, s, z, 32), w, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("k", "group_size", "match"), [(96, 64, "K=96"), (128, 48, "got 48")])
def test_quantize_int4_bad_group_names_the_value(k, group_size, match):
    with pytest.raises(ValueError, match=match):
        quantize_int4_groupwise(torch.randn(4, k), group_size)


def test_int4_reference_matches_float_matmul_of_dequantized_weight():
    q, s, z = quantize_int4_groupwise(torch.randn(8, 64), 32, torch.float32)
    x = torch.randn(3, 64)
    torch.testing.assert_close(
        int4_linear_reference(x, q, s, z, 32), x @ dequantize_int4(q, s, z, 32).t(), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("n", [16, 48, 64, 80, 192])
def test_unpack_aten_int4_inverts_aten_packing(n):
    # reference: aten's own packing of known values
    q = torch.randint(0, 16, (n, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(unpack_aten_int4(packed, n, 64), q.to(torch.uint8))


# --- ternary weights, int8 activations ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 64, 256, 300, 513])
def test_pack_ternary_round_trips_and_pads_k_to_whole_blocks(k):
    from inductor_quant.primitives import pack_ternary, ternary_packed_k, unpack_ternary

    q = torch.randint(-1, 2, (7, k), dtype=torch.int8, generator=torch.Generator().manual_seed(k))
    packed = pack_ternary(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, ternary_packed_k(k)) == (7, -(-k // 256) * 64)
    assert torch.equal(unpack_ternary(packed, k), q)


def test_pack_ternary_layout_byte_i_holds_k_i_64_128_192():
    from inductor_quant.primitives import pack_ternary

    q = torch.zeros(1, 256, dtype=torch.int8)  # code 1 everywhere: 0b01010101
    q[0, 3], q[0, 64 + 3], q[0, 128 + 3], q[0, 192 + 3] = -1, 1, 0, 1  # codes 0, 2, 1, 2
    packed = pack_ternary(q)
    assert packed[0, 3].item() == 0b10_01_10_00
    assert packed[0, 4].item() == 0b01_01_01_01
    # padding of a short row is code 1 (the value 0)
    assert pack_ternary(torch.zeros(1, 10, dtype=torch.int8))[0, 10:].eq(0b01_01_01_01).all()


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_quantize_ternary_is_absmean_round_clip(granularity):
    from inductor_quant.primitives import quantize_ternary

    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_ternary(w, granularity)
    expected_scale = w.abs().mean().reshape(1) if granularity == "per_tensor" else w.abs().mean(dim=1)
    torch.testing.assert_close(scale, expected_scale)
    assert q.dtype == torch.int8 and set(q.unique().tolist()) == {-1, 0, 1}
    s = scale if granularity == "per_channel" else scale.expand(16)
    assert torch.equal(q, torch.round(w / s[:, None]).clamp(-1, 1).to(torch.int8))
    # an all-zero weight gets the eps scale and all-zero codes, not NaN
    q0, s0 = quantize_ternary(torch.zeros(4, 8), granularity, eps=1e-5)
    assert q0.eq(0).all() and s0.eq(1e-5).all()


def test_quantize_ternary_rejects_bad_granularity_and_shapes():
    from inductor_quant.primitives import quantize_ternary

    with pytest.raises(ValueError, match="weight granularity must be one of .* got 'per_group'"):
        quantize_ternary(torch.randn(4, 8), "per_group")
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        quantize_ternary(torch.randn(8))


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_quantize_activation_int8_absmax(granularity):
    from inductor_quant.primitives import quantize_activation_int8

    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 6)[:, None]
    q, scale = quantize_activation_int8(x, granularity)
    assert q.dtype == torch.int8 and scale.shape == (5,) and scale.dtype == torch.float32
    absmax = x.abs().amax(dim=1) if granularity == "per_token" else x.abs().amax().expand(5)
    torch.testing.assert_close(scale, absmax / 127)
    assert q.abs().amax(dim=1).eq(127).any()  # the largest value of each scaled group maps to +-127
    # one quantization step: |x - q * scale| <= scale / 2
    assert ((x - q.float() * scale[:, None]).abs() <= scale[:, None] / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="activation granularity must be one of .* got 'per_channel'"):
        quantize_activation_int8(x, "per_channel")


def test_fake_quantizers_are_straight_through_and_match_the_real_ones():
    from inductor_quant.primitives import (
        fake_quantize_activation_int8,
        fake_quantize_ternary,
        quantize_activation_int8,
        quantize_ternary,
    )

    w = torch.randn(8, 64, requires_grad=True)
    x = torch.randn(3, 64, requires_grad=True)
    wq, xq = fake_quantize_ternary(w, "per_channel"), fake_quantize_activation_int8(x, "per_token")
    q, s = quantize_ternary(w, "per_channel")
    qx, sx = quantize_activation_int8(x, "per_token")
    torch.testing.assert_close(wq, q.float() * s[:, None])
    torch.testing.assert_close(xq, qx.float() * sx[:, None])
    (wq.sum() + 2 * xq.sum()).backward()
    assert torch.equal(w.grad, torch.ones_like(w)) and torch.equal(x.grad, torch.full_like(x, 2.0))


def test_int4_lane_layout_round_trips_and_puts_values_where_the_kernel_reads_them():
    from inductor_quant.primitives import (
        pack_group_lanes,
        pack_int4_lanes,
        unpack_group_lanes,
        unpack_int4,
        unpack_int4_lanes,
    )

    g = torch.Generator().manual_seed(0)
    # N = 37: 3 blocks, the last padded
    qdata = torch.randint(0, 256, (37, 160), dtype=torch.uint8, generator=g)
    packed = pack_int4_lanes(qdata)
    assert packed.numel() == 48 * 160
    assert torch.equal(unpack_int4_lanes(packed, 37, 320), qdata)
    q = unpack_int4(qdata)
    # row 19 = block 1, lane 3; k = 13 = step 1, high nibble of byte 1
    b = packed.view(-1, 320 // 8, 16, 4)[1, 1, 3, 1]
    assert b >> 4 == q[19, 13] and b & 0xF == q[19, 9]
    scale = torch.randn(37, 5, generator=g)
    lanes = pack_group_lanes(scale)
    assert lanes.view(-1, 5, 16)[1, 2, 3] == scale[19, 2]
    assert torch.equal(unpack_group_lanes(lanes, 37, 5), scale)


@pytest.mark.parametrize("n, half_k", [(37, 160), (16, 4), (300, 2048)])
def test_native_lane_packing_equals_the_reference_bit_for_bit(n, half_k):
    from inductor_quant.kernels import _int4_lanes_fn
    from inductor_quant.kernels import pack_int4_lanes as native
    from inductor_quant.primitives import pack_int4_lanes as reference

    assert _int4_lanes_fn() is not None  # built here: the comparison below is native vs torch
    q = torch.randint(0, 256, (n, half_k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    assert torch.equal(native(q), reference(q))


def test_float_zero_points_hold_a_q4_1_grid_exactly():
    """Weights on llama.cpp's Q4_1 grid (``q * d + m`` per 32 values; made by the ``gguf`` package's own quantizer,
    an independent implementation) come back exactly with fractional zero points and fp32 scales, where integer zero
    points (whose grid must contain 0) round them a second time."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    torch.manual_seed(0)
    w = (
        torch.randn(64, 256) * 0.05 + torch.randn(64, 1) * 0.05
    )  # rows off centre, as trained weights often are
    q41 = gguf.GGMLQuantizationType.Q4_1
    grid = torch.from_numpy(dequantize(quantize(w.numpy(), q41), q41).copy()).reshape(w.shape)
    q, s, z = quantize_int4_groupwise(grid, 32, torch.float32, torch.float32)
    assert z.dtype == torch.float32
    assert sqnr(grid, dequantize_int4(q, s, z, 32)) > 100  # exact up to fp32 rounding of (q - z) * s
    q, s, z = quantize_int4_groupwise(grid, 32, torch.float32, torch.uint8)
    assert sqnr(grid, dequantize_int4(q, s, z, 32)) < 40


def test_float_zero_points_are_no_worse_than_integer_ones_on_gaussian_weights():
    torch.manual_seed(0)
    w = torch.randn(256, 512) + 0.3
    for g in (32, 128):
        by_dtype = {
            dt: sqnr(w, dequantize_int4(*quantize_int4_groupwise(w, g, torch.bfloat16, dt), g))
            for dt in (torch.uint8, torch.float16)
        }
        assert by_dtype[torch.float16] >= by_dtype[torch.uint8], by_dtype


def test_unsupported_zero_point_dtype_is_named():
    with pytest.raises(ValueError, match="zero_point_dtype must be one of .* got torch.int8"):
        quantize_int4_groupwise(torch.randn(4, 64), 32, torch.bfloat16, torch.int8)
    with pytest.raises(ValueError, match="W4A8 takes integer"):
        iq.Int8DynamicActivationInt4WeightConfig(zero_point_dtype=torch.float16)
