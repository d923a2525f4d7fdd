"""Decode attention (stage 3, on Dynamo's graph): scaled_dot_product_attention with a few query rows on CPU becomes
its math form, which Inductor fuses into the graph's own kernels.

On CPU, ATen's attention for a handful of query rows is the flash kernel built for long prompts: ~200 us per call
for one query row over a 256-entry KV cache (9 query heads, 64 dims, bf16; one or two threads alike), 9 ms of a
15 ms decode step on SmolLM2's 30 layers. The math form, traced into the graph, is a few fused loops over that cache.
Prompts (more than ``DECODE_QUERY_ROWS`` query rows) keep the flash kernel, which is the faster one there.
"""

from __future__ import annotations

import logging

import torch
from torch._dynamo.utils import counters

log = logging.getLogger(__name__)

# Query rows up to which attention runs as math: decode steps (one row per sequence), speculative / multi-token
# steps. Above it the flash kernel's blocking pays off.
DECODE_QUERY_ROWS = 16

_SDPA = (torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention)


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` (no dropout) in fp32 math: scores, mask, softmax and the weighted sum of
    values, one cast to ``query``'s dtype at the end (the precision of ATen's flash kernel, which accumulates in
    fp32). With grouped KV heads (``enable_gqa``), query head ``h`` reads KV head ``h // (Hq / Hkv)``, as ATen."""
    *batch, heads, rows, dim = query.shape
    kv_heads, length = key.shape[-3], key.shape[-2]
    group = heads // kv_heads
    # query heads of one KV head side by side as rows: one matmul per KV head, the KV cache read once
    q = query.float().reshape(*batch, kv_heads, group * rows, dim)
    scores = q @ key.float().transpose(-1, -2) * (dim**-0.5 if scale is None else scale)
    scores = scores.reshape(*batch, heads, rows, length)
    if is_causal:
        attn_mask = torch.ones(rows, length, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    probs = scores.softmax(dim=-1).reshape(*batch, kv_heads, group * rows, length)
    out = probs @ value.float()
    return out.reshape(*batch, heads, rows, value.shape[-1]).to(query.dtype)


def decode_attention_pass(gm: torch.fx.GraphModule) -> int:
    """Point every CPU ``scaled_dot_product_attention`` call of Dynamo's graph ``gm`` with at most
    ``DECODE_QUERY_ROWS`` static query rows and no dropout at ``decode_attention``. Returns how many."""
    rewritten = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _SDPA:
            continue
        why = _skip_reason(node)
        if why:
            log.debug("attention %s left to ATen: %s", node.name, why)
            continue
        node.target = decode_attention
        rewritten += 1
    if rewritten:
        gm.recompile()
        counters["inductor_quant"]["decode_attention"] += rewritten
        log.info("decode attention: %d scaled_dot_product_attention calls run as fused math", rewritten)
    return rewritten


def _skip_reason(node: torch.fx.Node) -> str | None:
    args = dict(
        zip(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"), node.args, strict=False)
    )
    args.update(node.kwargs)
    fakes = [getattr(args.get(name), "meta", {}).get("example_value") for name in ("query", "key", "value")]
    if any(not isinstance(t, torch.Tensor) for t in fakes):
        return "no example values for query / key / value"
    q, k, v = fakes
    if q.device.type != "cpu":
        return f"on {q.device.type}"
    if q.dim() < 3 or k.dim() != q.dim() or v.dim() != q.dim():
        return f"query / key / value of {q.dim()} / {k.dim()} / {v.dim()} dims"
    rows, heads, kv_heads = q.shape[-2], q.shape[-3], k.shape[-3]
    if not isinstance(rows, int) or rows > DECODE_QUERY_ROWS:
        return f"{rows} query rows (a prompt: more than {DECODE_QUERY_ROWS})"
    if not isinstance(heads, int) or not isinstance(kv_heads, int):
        return "symbolic head counts"
    if heads != kv_heads and not (args.get("enable_gqa") and heads % kv_heads == 0):
        return f"{heads} query heads over {kv_heads} KV heads without enable_gqa"
    if not isinstance(args.get("dropout_p", 0.0), (int, float)) or args.get("dropout_p", 0.0) != 0.0:
        return "dropout"
    if not isinstance(args.get("is_causal", False), bool):
        return "a traced is_causal"
    return None
