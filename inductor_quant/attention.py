"""``torch.ops.inductor_quant.decode_attention``: attention for a few query rows over a KV cache (decode steps).

The op the decode attention pass (``passes/attention.py``) puts in place of ``scaled_dot_product_attention`` on
CPU. Its KV heads are grouped (query head ``h`` reads KV head ``h // (Hq / Hkv)``, as ATen's ``enable_gqa``), so a
model's ``repeat_kv`` copy of the cache is never made. Compiled, it lowers to one C++ kernel
(``templates/cpp/decode_attention.cpp``) that skips the masked positions of the cache: a static cache of 256
positions holding 50 tokens costs the 50. Eagerly it is the math form below.
"""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def attention_math(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` (no dropout, grouped KV heads) in fp32 math: scores, mask, softmax and the
    weighted sum of values, one cast to ``query``'s dtype at the end (the precision of ATen's flash kernel, which
    accumulates in fp32). A causal mask is top-left aligned, as ATen's. A row with every position masked is NaN,
    as ATen's math form."""
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


def check_decode_attention_args(query, key, value, attn_mask) -> None:
    """The shapes ``decode_attention`` takes; every message names the offending value."""
    if query.dim() != 4 or query.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"query must be a 4-D [B, Hq, M, D] float tensor, got shape {tuple(query.shape)} of {query.dtype}"
        )
    b, heads, rows, dim = query.shape
    if key.dim() != 4 or key.shape[0] != b or key.shape[3] != dim or key.dtype != query.dtype:
        raise ValueError(
            f"key must be [{b}, Hkv, L, {dim}] of {query.dtype}, got shape {tuple(key.shape)} of {key.dtype}"
        )
    kv_heads, length = key.shape[1], key.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot be grouped over {kv_heads} KV heads")
    if value.dim() != 4 or tuple(value.shape[:3]) != (b, kv_heads, length) or value.dtype != query.dtype:
        raise ValueError(
            f"value must be [{b}, {kv_heads}, {length}, Dv] of {query.dtype}, got shape {tuple(value.shape)} "
            f"of {value.dtype}"
        )
    if attn_mask is None:
        return
    wanted = (b, heads, rows, length)
    if attn_mask.dim() != 4 or any(s not in (1, w) for s, w in zip(attn_mask.shape, wanted, strict=True)):
        raise ValueError(
            f"attn_mask must be 4-D and broadcast to {list(wanted)}, got shape {tuple(attn_mask.shape)}"
        )
    if attn_mask.shape[3] != length:
        raise ValueError(
            f"attn_mask must cover all {length} key positions, got shape {tuple(attn_mask.shape)}"
        )
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"attn_mask must be bool or float, got {attn_mask.dtype}")


@torch.library.custom_op("inductor_quant::decode_attention", mutates_args=())
def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """Attention of ``query [B, Hq, M, D]`` over ``key [B, Hkv, L, D]`` / ``value [B, Hkv, L, Dv]`` with
    ``Hq / Hkv`` query heads per KV head; ``attn_mask`` (bool: keep where True; float: added to the scores) is 4-D
    and broadcasts to ``[B, Hq, M, L]``. Computed in fp32, the result ``[B, Hq, M, Dv]`` rounded once to
    ``query``'s dtype."""
    check_decode_attention_args(query, key, value, attn_mask)
    return attention_math(query, key, value, attn_mask, is_causal, scale)


@decode_attention.register_fake
def _(query, key, value, attn_mask, is_causal, scale):
    check_decode_attention_args(query, key, value, attn_mask)
    return query.new_empty((*query.shape[:3], value.shape[3]))
