"""Compile-time prepacking: which weights are packed, once each, and only when the GEMV will read them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import compile_and_run, int8_weight, verify
from torch import nn
from torch._dynamo.utils import counters

from inductor_quant.primitives import int8_linear_reference


class SharedWeight(nn.Module):
    """Two linears reading the same int8 weight (e.g. tied projections)."""

    def __init__(self, k=64, n=40):
        super().__init__()
        _, q, s = int8_weight(n, k)
        self.register_buffer("w", q)
        self.register_buffer("s", s.to(torch.bfloat16))

    def forward(self, x):
        a = F.linear(x, self.w.to(x.dtype)) * self.s
        b = F.linear(x * 2, self.w.to(x.dtype)) * self.s
        return a + b


def test_a_shared_weight_is_packed_once():
    model = SharedWeight()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_prepacked"] == 2
    assert (
        counters["inductor_quant"]["int8_prepacked_bytes"] == 40 * 64
    )  # N padded to 40 (already a multiple of 4)
    assert code.count("_iq_packed = rand_strided") == 1
    expected = int8_linear_reference(x, model.w, model.s) + int8_linear_reference(x * 2, model.w, model.s)
    verify(out, expected)


def test_prepack_option_off_keeps_the_row_major_weight():
    out, code = compile_and_run(
        SharedWeight(), torch.randn(3, 64, dtype=torch.bfloat16), options={"inductor_quant.prepack": False}
    )
    assert counters["inductor_quant"]["int8_prepacked"] == 0 and "_iq_packed" not in code
    assert "weight=row-major" in code or "inductor_quant_int8_linear_aten" in code


def test_prefill_shapes_are_not_packed():
    _, code = compile_and_run(SharedWeight(), torch.randn(33, 64, dtype=torch.bfloat16))
    assert counters["inductor_quant"]["int8_prepacked"] == 0
    assert counters["inductor_quant"]["int8_kernel_dequant_mm"] == 2
