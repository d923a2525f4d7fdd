"""The int4 rewrite: hand-written groupwise dequantize chains become int4_weight_linear; others are left alone
with the reason logged. Reference: primitives.int4_linear_reference on the same int4 data."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, constant_bytes, verify
from torch import nn
from torch._dynamo.utils import counters

from inductor_quant.primitives import INT4_GROUP_SIZES, int4_linear_reference, quantize_int4_groupwise

N, K, G = 72, 256, 64


class HandWrittenInt4(nn.Module):
    """The documented dequantize chain, in several spellings (``form``). The scale is converted to the activation
    dtype (as such code must, for fp16); the rewritten op looks through that and applies the stored scale in fp32."""

    def __init__(self, form="stack", bias=False, zero_dtype=torch.uint8, group_size=G):
        super().__init__()
        torch.manual_seed(0)
        w = torch.randn(N, K) / K**0.5
        if group_size in INT4_GROUP_SIZES:
            q, s, z = quantize_int4_groupwise(w, group_size)
        else:  # a group size the package does not support: same nibbles, made-up scales and zeros per group
            q = quantize_int4_groupwise(w, 32)[0]
            s = torch.rand(N, K // group_size, dtype=torch.bfloat16) / 50
            z = torch.randint(0, 16, (N, K // group_size), dtype=torch.uint8)
        self.register_buffer("q", q)
        self.register_buffer("s", s)
        self.register_buffer("z", z.to(zero_dtype))
        self.b = nn.Buffer(torch.randn(N)) if bias else None
        self.form, self.g = form, group_size

    def weight(self, dtype):
        q, s, z, g = self.q, self.s.to(dtype), self.z, self.g
        if self.form == "high_first":  # a different nibble order: not the supported layout
            nib = torch.stack([q >> 4, q & 0xF], dim=-1)
        else:
            nib = torch.stack([q & 0xF, q >> 4], dim=-1)
        if self.form == "scale_first":
            return (s[..., None] * (nib.reshape(N, -1, g).to(dtype) - z[..., None].to(dtype))).reshape(N, -1)
        if self.form == "symmetric":
            return (nib.view(N, -1, g).to(dtype) * s.unsqueeze(-1)).view(N, -1)
        return ((nib.view(N, -1, g).to(dtype) - z.unsqueeze(-1).to(dtype)) * s.unsqueeze(-1)).view(N, -1)

    def forward(self, x):
        w = self.weight(x.dtype)
        b = None if self.b is None else self.b.to(x.dtype)
        if self.form == "matmul":
            return x @ w.t()
        return F.linear(x, w, b)

    def reference(self, x):
        return int4_linear_reference(x.reshape(-1, K), self.q, self.s, self.z, self.g, self.b).reshape(
            *x.shape[:-1], N
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "form, bias, zero_dtype, shape",
    [
        ("stack", False, torch.uint8, (3, K)),
        ("stack", True, torch.uint8, (2, 3, K)),
        ("scale_first", False, torch.float32, (1, K)),
        ("matmul", False, torch.int32, (4, K)),
    ],
    ids=["linear", "linear-bias-3d", "scale-first-fp32-zero", "matmul-int32-zero"],
)
def test_chain_is_rewritten_and_weights_stay_int4(dtype, form, bias, zero_dtype, shape):
    model = HandWrittenInt4(form, bias, zero_dtype)
    x = torch.randn(*shape, dtype=dtype)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_rewrite"] == 1
    assert counters["inductor_quant"]["int4_lowered"] == 1
    # the frozen graph holds the nibbles (and a packed copy), never a float [N, K] weight
    held = constant_bytes(code)
    assert held.get("uint8", 0) >= N * K // 2
    assert sum(v for d, v in held.items() if d != "uint8") < N * K, held
    verify(out, model.reference(x))


@pytest.mark.parametrize(
    "form, group_size, reason",
    [
        ("high_first", G, "the first nibble plane is not `q & 0xF`"),
        ("symmetric", G, "without `q - zero_point`"),
        ("stack", 16, "group size 16 is not one of"),
    ],
)
def test_other_chains_are_left_alone_with_the_reason(form, group_size, reason, caplog):
    model = HandWrittenInt4(form, group_size=group_size)
    x = torch.randn(2, K, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="inductor_quant"):
        out, _ = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_rewrite"] == 0
    assert reason in caplog.text, caplog.text
    with torch.no_grad():
        verify(out, model(x))  # stock lowering of the unmatched graph: still the same numbers
