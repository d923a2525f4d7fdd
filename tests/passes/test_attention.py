"""Decode attention: scaled_dot_product_attention with a few query rows on CPU runs as fused math, numerically
ATen's attention in fp32, prompts keep ATen's kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run
from torch import nn
from torch._dynamo.utils import counters

from inductor_quant.passes.attention import DECODE_QUERY_ROWS, decode_attention


def _qkv(rows, heads=9, kv_heads=3, length=40, dim=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, rows, dim, generator=g).to(dtype)
    k = torch.randn(2, kv_heads, length, dim, generator=g).to(dtype)
    v = torch.randn(2, kv_heads, length, dim, generator=g).to(dtype)
    return q, k, v


def _reference(q, k, v, **kwargs):
    """ATen's attention in fp64 with the KV heads repeated (independent of the grouping done by the math form)."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    mask = kwargs.pop("attn_mask", None)
    if mask is not None and mask.is_floating_point():
        mask = mask.double()
    return F.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask, **kwargs)


@pytest.mark.parametrize(
    "case",
    ["bool mask", "float mask", "no mask", "causal", "scale", "one head per kv head", "float32"],
)
def test_decode_attention_matches_aten_attention(case):
    rows = 4 if case == "causal" else 1
    q, k, v = _qkv(rows, dtype=torch.float32 if case == "float32" else torch.bfloat16)
    if case == "one head per kv head":
        q, k, v = _qkv(rows, heads=3)
    kwargs = {}
    if case == "bool mask":
        kwargs["attn_mask"] = (torch.arange(k.shape[2]) < 25).view(
            1, 1, 1, -1
        )  # a static cache filled to 25 of 40
    if case == "float mask":
        kwargs["attn_mask"] = torch.randn(1, 1, rows, k.shape[2]).to(q.dtype)
    if case == "causal":
        kwargs["is_causal"] = True
    if case == "scale":
        kwargs["scale"] = 0.3
    out = decode_attention(q, k, v, enable_gqa=True, **kwargs)
    expected = _reference(q, k, v, **kwargs)
    assert out.dtype == q.dtype
    # one rounding of an fp32 result to the output dtype
    tolerance = 1e-5 if q.dtype == torch.float32 else 2**-8
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


class Attention(nn.Module):
    """The attention of a decoder layer over a KV cache, as HF's sdpa path calls it."""

    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("rows", [1, DECODE_QUERY_ROWS, DECODE_QUERY_ROWS + 1])
def test_compiled_decode_attention_is_rewritten_only_for_decode_rows(rows):
    q, k, v = _qkv(rows, length=64)
    mask = torch.ones(1, 1, rows, 64, dtype=torch.bool).tril(diagonal=64 - rows)
    with torch.no_grad():
        out, code = compile_and_run(Attention(), q, k, v, mask)
    decode = rows <= DECODE_QUERY_ROWS
    assert counters["inductor_quant"]["decode_attention"] == int(decode)
    assert ("aten._scaled_dot_product" in code) != decode
    torch.testing.assert_close(out.double(), _reference(q, k, v, attn_mask=mask), atol=2**-7, rtol=2**-7)


def test_decode_attention_option_off_keeps_atens_kernel():
    q, k, v = _qkv(1)
    mask = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool)
    with torch.no_grad():
        _, code = compile_and_run(
            Attention(), q, k, v, mask, options={"inductor_quant.decode_attention": False}
        )
    assert counters["inductor_quant"]["decode_attention"] == 0
    assert "aten._scaled_dot_product" in code
