"""Level A: the Triton templates' kernel math, rendered standalone (``standalone.py``) and run by Triton's
interpreter on CPU tensors, against the package's fp32 references (``primitives.*_linear_reference``).

Runs in its own process with ``interpreter_shim`` installed (``test_triton_templates.py`` starts it).
Tolerance: the conftest's per-output-dtype ``TOLERANCES`` (the kernels accumulate in fp32 and round once).
"""

from __future__ import annotations

import pytest
import torch
from conftest import verify
from standalone import run

from inductor_quant import primitives as P
from inductor_quant.templates.triton import common

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (M, N, K): decode and prefill rows, N not a multiple of any BLOCK_N, K with and without a tail
INT8_SHAPES = ((1, 37, 64), (5, 37, 100), (16, 9, 131), (33, 70, 96))


def _config(m, group_size=None):
    return common.configs_for(m, group_size=group_size)[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", (False, True), ids=("no_bias", "bias"))
def test_int8_mm(shape, dtype, with_bias):
    m, n, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(m, k, generator=g).to(dtype)
    q, s = P.quantize_int8_per_channel(torch.randn(n, k, generator=g))
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    config = _config(m)
    out = run(
        "int8_mm.py.jinja",
        {"A": x, "W": q},
        (m, n),
        dtype,
        config,
        scale=s,
        bias=bias,
        EVEN_K=k % config.block_k == 0,
    )
    verify(out, P.int8_linear_reference(x, q, s, bias))


def test_int8_mm_bf16_scale_and_strided_activations():
    """A bf16 scale (read in fp32 by the epilogue) and activations that are a column slice (row stride > K)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 200, generator=g).to(torch.bfloat16)[:, 50:146]
    q, s = P.quantize_int8_per_channel(torch.randn(21, 96, generator=g))
    s = s.to(torch.bfloat16)
    out = run(
        "int8_mm.py.jinja", {"A": x, "W": q}, (6, 21), torch.bfloat16, _config(6), scale=s, EVEN_K=False
    )
    verify(out, P.int8_linear_reference(x, q, s))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", (32, 64, 128, 256))
@pytest.mark.parametrize("m", (1, 3, 20))
def test_int4_mm(m, group_size, dtype):
    n, k = 37, 2 * max(group_size, 128)  # at least two groups, several K steps
    g = torch.Generator().manual_seed(group_size + m)
    x = torch.randn(m, k, generator=g).to(dtype)
    qdata, scale, zero = P.quantize_int4_groupwise(torch.randn(n, k, generator=g), group_size)
    bias = torch.randn(n, generator=g).to(dtype) if m == 3 else None
    inputs = {"A": x, "Q": qdata, "S": scale, "Z": zero}
    out = run(
        "int4_mm.py.jinja", inputs, (m, n), dtype, _config(m, group_size), bias=bias, GROUP_SIZE=group_size
    )
    verify(out, P.int4_linear_reference(x, qdata, scale, zero, group_size, bias))


def test_int4_mm_extreme_nibbles():
    """Every nibble value 0..15 against zero points 0 and 15: (q - z) spans -15..15, exact in fp16 / bf16."""
    n, k, group_size = 16, 64, 32
    q = (torch.arange(n * k) % 16).reshape(n, k).to(torch.uint8)
    qdata = P.pack_int4(q)
    zero = torch.tensor([[0, 15]] * n, dtype=torch.uint8)
    scale = torch.full((n, 2), 0.5, dtype=torch.bfloat16)
    x = torch.ones(2, k, dtype=torch.float16)
    inputs = {"A": x, "Q": qdata, "S": scale, "Z": zero}
    out = run(
        "int4_mm.py.jinja", inputs, (2, n), torch.float16, _config(2, group_size), GROUP_SIZE=group_size
    )
    verify(out, P.int4_linear_reference(x, qdata, scale, zero, group_size))


@pytest.mark.parametrize(
    ("m", "n", "k", "group_size"), [(1, 1, 32, 32), (2, 5, 64, 64), (17, 3, 256, 256), (4, 130, 128, 32)]
)
def test_int4_mm_tiny_and_single_group_shapes(m, n, k, group_size):
    """One group, one column, N past a block, K a single step: all masks and wraps on the edges."""
    g = torch.Generator().manual_seed(k + n)
    x = torch.randn(m, k, generator=g).to(torch.float16)
    qdata, scale, zero = P.quantize_int4_groupwise(torch.randn(n, k, generator=g), group_size)
    inputs = {"A": x, "Q": qdata, "S": scale, "Z": zero}
    config = _config(m, group_size)
    out = run("int4_mm.py.jinja", inputs, (m, n), torch.float16, config, GROUP_SIZE=group_size)
    verify(out, P.int4_linear_reference(x, qdata, scale, zero, group_size))


@pytest.mark.parametrize("weight_granularity", ("per_tensor", "per_channel"))
@pytest.mark.parametrize(("m", "n", "k"), [(1, 37, 256), (5, 37, 300), (20, 9, 700)])
def test_ternary_mm(m, n, k, weight_granularity):
    """Exact int32 sums of int8 activations and ternary weights (every plane, K tails) times the row's activation
    scale, then the weight scale and bias by the shared epilogue: the eager reference up to fp32 rounding."""
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g)
    q, w_scale = P.quantize_ternary(torch.randn(n, k, generator=g), weight_granularity)
    xq, x_scale = P.quantize_activation_int8(x, "per_token")
    bias = torch.randn(n, generator=g)
    out = run(
        "ternary_mm.py.jinja",
        {"A": xq, "XS": x_scale, "Q": P.pack_ternary(q)},
        (m, n),
        torch.float32,
        common.BlockConfig(_config(m).block_m, _config(m).block_n, 256, 4, 3),
        scale=w_scale.float(),
        bias=bias,
    )
    verify(out, P.ternary_linear_reference(x, q, w_scale, bias))
