"""Decode attention: scaled_dot_product_attention with a few query rows on CPU becomes
torch.ops.inductor_quant.decode_attention (eager: fp32 math; compiled: the CPP decode kernel), numerically ATen's
attention in fp32, over the KV cache itself where the model repeats its KV heads; prompts keep ATen's kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck

from inductor_quant.passes.attention import DECODE_QUERY_ROWS

decode_attention = torch.ops.inductor_quant.decode_attention


def _qkv(rows, heads=9, kv_heads=3, length=40, dim=64, dv=None, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, rows, dim, generator=g).to(dtype)
    k = torch.randn(2, kv_heads, length, dim, generator=g).to(dtype)
    v = torch.randn(2, kv_heads, length, dv or dim, generator=g).to(dtype)
    return q, k, v


def _reference(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """ATen's attention in fp64 with the KV heads repeated (independent of the grouping done by the op)."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.double()
    return F.scaled_dot_product_attention(
        q.double(), k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale
    )


class Op(nn.Module):
    def forward(self, q, k, v, mask, is_causal: bool, scale: float):
        return decode_attention(q, k, v, mask, is_causal, scale)


def _case(case):
    """(q, k, v, mask, is_causal, scale) of one test case."""
    rows = 4 if case in ("causal", "rows", "fully masked row") else 1
    dtype = {"float32": torch.float32, "float16": torch.float16}.get(case, torch.bfloat16)
    dims = {"odd dims": dict(dim=40, dv=24), "one head per kv head": dict(heads=3)}.get(case, {})
    q, k, v = _qkv(rows, dtype=dtype, **dims)
    length = k.shape[2]
    mask, is_causal, scale = None, False, q.shape[-1] ** -0.5
    if case in ("bool mask", "float32", "float16", "odd dims", "one head per kv head"):
        mask = (torch.arange(length) < 25).view(1, 1, 1, -1)  # a static cache filled to 25 of 40
    if case == "float mask":
        mask = torch.randn(1, 1, rows, length).to(q.dtype)
        mask[..., 30:] = float("-inf")
    if case == "rows":  # one mask per sequence and row, as a decode step of 4 tokens over a batch
        mask = torch.rand(2, 1, rows, length, generator=torch.Generator().manual_seed(1)) < 0.7
        mask[..., 0] = True
    if case == "fully masked row":
        mask = torch.ones(1, 1, rows, length, dtype=torch.bool)
        mask[0, 0, 2] = False
    if case == "causal":
        is_causal = True
    if case == "scale":
        scale = 0.3
    if case == "views":
        # as a model hands them over: query heads transposed out of [B, M, H, D], the cache as rows of a wider
        # buffer (a storage offset), one mask row expanded over the batch (stride 0)
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
        wide_k, wide_v = torch.cat([k, k], dim=2), torch.cat([v, v], dim=2)
        k, v = wide_k[:, :, length:], wide_v[:, :, length:]
        mask = (torch.arange(length) < 25).view(1, 1, 1, -1).expand(2, 1, rows, -1)
    return q, k, v, mask, is_causal, scale


CASES = [
    "bool mask",
    "float mask",
    "no mask",
    "causal",
    "rows",
    "scale",
    "one head per kv head",
    "odd dims",
    "float32",
    "float16",
    "fully masked row",
    "views",
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", CASES)
def test_decode_attention_matches_aten_attention(case, compiled):
    q, k, v, mask, is_causal, scale = _case(case)
    if compiled:
        with torch.no_grad():
            out, code = compile_and_run(Op(), q, k, v, mask, is_causal, scale)
        FileCheck().check("inductor_quant decode_attention").run(code)
    else:
        out = decode_attention(q, k, v, mask, is_causal, scale)
    expected = _reference(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    assert out.dtype == q.dtype and out.shape == expected.shape
    if case == "fully masked row":  # NaN, as ATen's math form; the other rows as usual
        assert out[:, :, 2].isnan().all() and not out[:, :, [0, 1, 3]].isnan().any()
        out, expected = out[:, :, [0, 1, 3]], expected[:, :, [0, 1, 3]]
    # one rounding of an fp32 result to the output dtype
    tolerance = {torch.float32: 1e-5, torch.float16: 2**-10}.get(q.dtype, 2**-8)
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_symbolic_sizes_run_the_eager_op():
    """With symbolic sizes (a dynamic graph) the template cannot be rendered: the op runs eagerly, same numbers."""
    q, k, v, mask, is_causal, scale = _case("bool mask")
    compiled = torch.compile(Op(), backend="quant_inductor", dynamic=True)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, q, k, v, mask, is_causal, scale)
    code = "\n".join(code)
    assert "inductor_quant decode_attention" not in code
    FileCheck().check("torch.ops.inductor_quant.decode_attention.default").run(code)
    expected = _reference(q, k, v, attn_mask=mask, scale=scale)
    torch.testing.assert_close(out.double(), expected, atol=2**-8, rtol=2**-8)


def test_decode_attention_rejects_bad_shapes():
    q, k, v = _qkv(1)
    with pytest.raises(ValueError, match="9 query heads cannot be grouped over 2 KV heads"):
        decode_attention(q, k[:, :2], v[:, :2], None, False, 0.1)
    with pytest.raises(ValueError, match=r"attn_mask must be 4-D and broadcast to \[2, 9, 1, 40\]"):
        decode_attention(q, k, v, torch.ones(3, 1, 1, 40, dtype=torch.bool), False, 0.1)
    with pytest.raises(ValueError, match="value must be"):
        decode_attention(q, k, v[:, :, :39], None, False, 0.1)


def _repeat_kv(x, group):
    """HF's repeat_kv (transformers' sdpa path under torch.compile, where ATen would get the KV heads repeated)."""
    b, heads, length, dim = x.shape
    return x[:, :, None, :, :].expand(b, heads, group, length, dim).reshape(b, heads * group, length, dim)


class RepeatedAttention(nn.Module):
    """The attention of a decoder layer over its KV cache as HF's sdpa path writes it under torch.compile."""

    def forward(self, q, k, v, mask):
        group = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group), attn_mask=mask)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


class GroupedAttention(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("rows", [1, DECODE_QUERY_ROWS, DECODE_QUERY_ROWS + 1])
@pytest.mark.parametrize("module", [RepeatedAttention, GroupedAttention])
def test_compiled_attention_is_rewritten_only_for_decode_rows(module, rows):
    q, k, v = _qkv(rows, length=64)
    mask = torch.ones(1, 1, rows, 64, dtype=torch.bool).tril(diagonal=64 - rows)
    with torch.no_grad():
        out, code = compile_and_run(module(), q, k, v, mask)
    decode = rows <= DECODE_QUERY_ROWS
    assert counters["inductor_quant"]["decode_attention"] == int(decode)
    assert ("aten._scaled_dot_product" in code) != decode
    if decode:
        # the kernel reads the cache as it is: no repeated copy of its 3 KV heads (a [2, 3, 3, 64, 64] buffer)
        FileCheck().check("inductor_quant decode_attention").check_not("(2, 3, 3, 64, 64)").run(code)
    expected = _reference(q, k, v, attn_mask=mask)
    if module is RepeatedAttention:
        expected = expected.transpose(1, 2).reshape(2, rows, -1)
    torch.testing.assert_close(out.double(), expected, atol=2**-7, rtol=2**-7)


def test_decode_attention_option_off_keeps_atens_kernel():
    q, k, v = _qkv(1)
    mask = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool)
    with torch.no_grad():
        _, code = compile_and_run(
            GroupedAttention(), q, k, v, mask, options={"inductor_quant.decode_attention": False}
        )
    assert counters["inductor_quant"]["decode_attention"] == 0
    assert "aten._scaled_dot_product" in code
