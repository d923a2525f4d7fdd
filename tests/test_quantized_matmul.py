"""The quantized_matmul op eagerly: every cell of the W8A16 ... W4A8 table against the fp32 reference, opcheck,
gradients, the kernel ops it is built on, and errors that name the bad value."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES

import inductor_quant  # noqa: F401
from inductor_quant.primitives import dequantize_weight, quantize_weight, quantized_matmul_reference, sqnr

qmm = torch.ops.inductor_quant.quantized_matmul

# (weight_bits, block_size, quantize_activation): the design document's eight cells
CELLS = [(bits, block, a8) for bits in (8, 4) for block in (-1, 64) for a8 in (False, True)]


def cell_id(cell) -> str:
    bits, block, a8 = cell
    return f"W{bits}A{8 if a8 else 16}-{'per_channel' if block == -1 else f'block{block}'}"


def _weight(n=48, k=256, bits=8, block=-1, zero_point=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    return (w, *quantize_weight(w, bits, block, zero_point))


# Output SQNR (dB) vs the unquantized fp32 linear, lower bounds measured with margin on N(0, 1) activations and
# N(0, 1/K) weights: int8 weights keep ~40 dB, int4 ~17-20 dB; int8 activations cost a few dB on top.
MIN_SQNR_DB = {(8, False): 36.0, (8, True): 33.0, (4, False): 14.0, (4, True): 14.0}


@pytest.mark.parametrize("zero_point", [False, True], ids=["symmetric", "zero_point"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_every_cell_matches_the_reference(cell, dtype, zero_point):
    bits, block, a8 = cell
    w, q, s, zp = _weight(bits=bits, block=block, zero_point=zero_point)
    x = torch.randn(2, 3, w.shape[1]).to(dtype)
    b = torch.randn(w.shape[0])
    out = qmm(x, q, s, zp, block, bits == 4, a8, b)
    assert out.shape == (2, 3, w.shape[0]) and out.dtype == dtype
    # the same quantized numbers in fp32: only summation order and the output rounding differ
    expected = quantized_matmul_reference(x, q, s, zp, a8, b)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])
    # and what quantization costs against the float layer
    assert sqnr(x.float() @ w.t() + b, out.float()) > MIN_SQNR_DB[(bits, a8)]


def test_zero_point_weights_are_exactly_the_asymmetric_grid():
    """(q - zero_point) * scale with integral zero points, codes spanning the whole int4 / int8 range."""
    for bits, lo, hi in ((8, -128, 127), (4, -8, 7)):
        w, q, s, zp = _weight(bits=bits, block=32, zero_point=True)
        assert int(q.min()) >= lo and int(q.max()) <= hi
        assert torch.equal(zp, zp.round()) and int(zp.min()) >= lo and int(zp.max()) <= hi
        step = s.repeat_interleave(32, dim=1)
        assert ((dequantize_weight(q, s, zp) - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_opcheck(cell):
    bits, block, a8 = cell
    _, q, s, zp = _weight(n=24, k=128, bits=bits, block=block, zero_point=True)
    x = torch.randn(5, 128)
    torch.library.opcheck(qmm, (x, q, s, zp, block, bits == 4, a8, torch.randn(24)))


@pytest.mark.parametrize("block", [-1, 32])
def test_a16_gradient_reaches_x(block):
    w, q, s, zp = _weight(k=128, block=block, zero_point=True)
    x = torch.randn(4, 128, requires_grad=True)
    qmm(x, q, s, zp, block).sum().backward()
    torch.testing.assert_close(x.grad, dequantize_weight(q, s, zp).sum(0).expand(4, -1), atol=1e-5, rtol=1e-5)


def test_kernel_ops_opcheck():
    _, q, s, _ = _weight(n=24, k=128, block=32)
    x = torch.randn(5, 128)
    torch.library.opcheck(torch.ops.inductor_quant.int8_blockwise_linear, (x, q, s, torch.randn(24), None))
    xq = torch.randint(-127, 128, (5, 128), dtype=torch.int8)
    for scale in (s, s[:, 0].contiguous()):
        torch.library.opcheck(
            torch.ops.inductor_quant.int8_dynamic_linear, (xq, torch.rand(5), q, scale, None, torch.bfloat16)
        )


def test_int8_dynamic_linear_sums_are_exact():
    """Blockwise scales: each block's int32 sum scaled on its own, against an int64 reference."""
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(-127, 128, (7, 1024), dtype=torch.int8, generator=g)
    q = torch.randint(-128, 128, (600, 1024), dtype=torch.int8, generator=g)  # 600: a partial column chunk
    xs, s = torch.rand(7, generator=g), torch.rand(600, 8, generator=g)
    sums = torch.einsum("mgk,ngk->mng", xq.long().view(7, 8, 128), q.long().view(600, 8, 128))
    # unit scales: the result is the integer sum itself (below 2**24, so exact in fp32)
    ones = torch.ones(600, 8)
    out = torch.ops.inductor_quant.int8_dynamic_linear(xq, torch.ones(7), q, ones)
    assert torch.equal(out, sums.sum(-1).float())
    # fp32 scaling and adding of the blocks: within fp32 rounding of the sum of the terms' magnitudes
    out = torch.ops.inductor_quant.int8_dynamic_linear(xq, xs, q, s)
    terms = sums.double() * s.double() * xs.double()[:, None, None]
    bound = 4 * 2**-24 * terms.abs().sum(-1)
    assert ((out.double() - terms.sum(-1)).abs() <= bound).all()


def test_int4_values_are_checked_once_per_weight():
    _, q, s, _ = _weight(k=64)
    x = torch.randn(1, 64)
    with pytest.raises(
        ValueError, match=r"int4_weight=True needs w in \[-8, 7\], got values in \[-1\d\d, 1\d\d\]"
    ):
        qmm(x, q, s, None, -1, True)
    q4 = q.clamp(-8, 7)
    qmm(x, q4, s, None, -1, True)
    q4[0, 0] = 100  # an in-place change bumps the version: checked again
    with pytest.raises(ValueError, match="got values in"):
        qmm(x, q4, s, None, -1, True)


def test_bad_inputs_name_the_value():
    _, q, s, zp = _weight(n=48, k=256, block=64, zero_point=True)
    x = torch.randn(3, 256)
    cases = [
        ((x.to(torch.int32), q, s), r"x must be a \[\.\.\., K\] tensor .* torch\.int32"),
        ((x, q.float(), s), r"w must be a 2-D int8 \[N, K\] tensor, got shape \(48, 256\) of torch\.float32"),
        ((x[:, :200], q, s), "x has K=200 input features but w"),
        (
            (x, q, s, None, 48),
            r"block_size must be -1 \(per-channel\) or a positive divisor of K=256, got 48",
        ),
        ((x, q, s, None, 0), "got 0"),
        ((x, q, s), r"scaler must be a float \[48\] tensor for per-channel .* got shape \(48, 4\)"),
        ((x, q, s.t(), None, 64), r"scaler must be a float \[48, 4\] tensor for block_size=64 .* \(4, 48\)"),
        (
            (x, q, s, zp[:, :2], 64),
            r"zero_point must be a float \[48, 4\] tensor like scaler, got shape \(48, 2\)",
        ),
        ((x, q, s, None, 64, False, False, torch.zeros(47)), r"bias must be a float \[48\] tensor"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            qmm(*args)


def test_quantize_weight_rejects_bad_settings():
    w = torch.randn(8, 96)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_weight(w, bits=2)
    with pytest.raises(ValueError, match="positive divisor of K=96, got 64"):
        quantize_weight(w, block_size=64)
    with pytest.raises(ValueError, match="2-D floating point weight"):
        quantize_weight(w.to(torch.int8))
