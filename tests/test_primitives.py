import pytest
import torch

from inductor_quant.primitives import (
    dequantize_int8,
    int8_linear_reference,
    pack_int8_blocked,
    quantize_int8_per_channel,
    sqnr,
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
