"""Decode attention (stage 3, on Dynamo's graph): ``scaled_dot_product_attention`` with a few query rows on CPU
becomes ``torch.ops.inductor_quant.decode_attention`` (``inductor_quant/attention.py``), one C++ kernel compiled.

On CPU, ATen's attention for a handful of query rows is the flash kernel built for long prompts: ~200 us per call
for one query row over a 256-entry KV cache (9 query heads, 64 dims, bf16; one or two threads alike), 9 ms of a
15 ms decode step on SmolLM2's 30 layers; Inductor's fusion of the math form still took ~55 us. The decode kernel
reads only the cache positions the mask keeps, and the grouped KV heads in place: where the model repeats them
for ATen (``repeat_kv``: index with a new axis, expand, reshape), the op is given the cache itself.
Prompts (more than ``DECODE_QUERY_ROWS`` query rows) keep the flash kernel, which is the faster one there.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch._dynamo.utils import counters

from .. import attention  # noqa: F401  (registers torch.ops.inductor_quant.decode_attention)

log = logging.getLogger(__name__)

# Query rows up to which attention runs as the decode op: decode steps (one row per sequence), speculative /
# multi-token steps. Above it the flash kernel's blocking pays off.
DECODE_QUERY_ROWS = 16

_SDPA = (torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention)
_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def decode_attention_pass(gm: torch.fx.GraphModule) -> int:
    """Replace every CPU ``scaled_dot_product_attention`` call of Dynamo's graph ``gm`` with at most
    ``DECODE_QUERY_ROWS`` static query rows and no dropout by ``decode_attention``. Returns how many."""
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA:
            continue
        args = dict(zip(_ARGS, node.args, strict=False))
        args.update(node.kwargs)
        why = _skip_reason(args)
        if why:
            log.debug("attention %s left to ATen: %s", node.name, why)
            continue
        query, key, value = args["query"], args["key"], args["value"]
        heads = _fake(query).shape[1]
        bypassed: list[torch.fx.Node] = []
        if _fake(key).shape[1] == heads:
            (key, key_repeat), (value, value_repeat) = _unrepeated(key, heads), _unrepeated(value, heads)
            bypassed = key_repeat + value_repeat
        scale = args.get("scale")
        if scale is None:
            scale = _fake(query).shape[3] ** -0.5
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(
                torch.ops.inductor_quant.decode_attention.default,
                (query, key, value, args.get("attn_mask"), bool(args.get("is_causal", False)), float(scale)),
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        for view in dict.fromkeys(bypassed):  # the repeat's view ops, once nothing else reads them
            if not view.users:
                gm.graph.erase_node(view)
        rewritten += 1
    if rewritten:
        gm.recompile()
        counters["inductor_quant"]["decode_attention"] += rewritten
        log.info(
            "decode attention: %d scaled_dot_product_attention calls run as the decode kernel", rewritten
        )
    return rewritten


def _fake(node):
    return getattr(node, "meta", {}).get("example_value")


def _unrepeated(node: torch.fx.Node, heads: int) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """The KV cache ``node`` was repeated from (``x[:, :, None].expand(B, Hkv, g, L, D).reshape(B, Hkv * g, L,
    D)``, as HF's ``repeat_kv`` writes it) and the repeat's nodes, last first; ``(node, [])`` where ``node`` is not
    such a repeat."""
    reshape = node
    if not (reshape.op == "call_method" and reshape.target in ("reshape", "view")):
        return node, []
    expand = reshape.args[0]
    if not (isinstance(expand, torch.fx.Node) and expand.op == "call_method" and expand.target == "expand"):
        return node, []
    index = expand.args[0]
    if not (
        isinstance(index, torch.fx.Node) and index.op == "call_function" and index.target is operator.getitem
    ):
        return node, []
    source, item = index.args
    full = slice(None)
    if not (isinstance(source, torch.fx.Node) and isinstance(item, tuple) and item[:3] == (full, full, None)):
        return node, []
    if any(i != full and i is not Ellipsis for i in item[3:]):
        return node, []
    src, expanded = _fake(source), _fake(expand)
    if not isinstance(src, torch.Tensor) or not isinstance(expanded, torch.Tensor) or src.dim() != 4:
        return node, []
    b, kv_heads, length, dim = src.shape
    if tuple(expanded.shape) != (b, kv_heads, heads // kv_heads, length, dim) or heads % kv_heads:
        return node, []
    return source, [reshape, expand, index]


def _skip_reason(args: dict) -> str | None:
    fakes = [_fake(args.get(name)) for name in ("query", "key", "value")]
    if any(not isinstance(t, torch.Tensor) for t in fakes):
        return "no example values for query / key / value"
    q, k, v = fakes
    if q.device.type != "cpu":
        return f"on {q.device.type}"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"query / key / value of {q.dim()} / {k.dim()} / {v.dim()} dims (the decode kernel takes 4)"
    if not (q.dtype == k.dtype == v.dtype):
        return f"query / key / value of {q.dtype} / {k.dtype} / {v.dtype}"
    rows, heads, kv_heads = q.shape[2], q.shape[1], k.shape[1]
    if not isinstance(rows, int) or rows > DECODE_QUERY_ROWS:
        return f"{rows} query rows (a prompt: more than {DECODE_QUERY_ROWS})"
    if not all(isinstance(s, int) for s in (*q.shape, *k.shape, *v.shape)):
        return "symbolic sizes"
    if heads != kv_heads and not (args.get("enable_gqa") and heads % kv_heads == 0):
        return f"{heads} query heads over {kv_heads} KV heads without enable_gqa"
    if not isinstance(args.get("dropout_p", 0.0), (int, float)) or args.get("dropout_p", 0.0) != 0.0:
        return "dropout"
    if not isinstance(args.get("is_causal", False), bool):
        return "a traced is_causal"
    if not isinstance(args.get("scale"), (int, float, type(None))):
        return "a traced scale"
    mask = args.get("attn_mask")
    if mask is not None:
        m = _fake(mask)
        wanted = (q.shape[0], heads, rows, k.shape[2])
        if not isinstance(m, torch.Tensor) or m.dim() != 4:
            return "a mask that is not a 4-D tensor"
        if any(not isinstance(s, int) or s not in (1, w) for s, w in zip(m.shape, wanted, strict=True)):
            return f"a mask of shape {tuple(m.shape)}, not broadcast from {list(wanted)}"
        if m.shape[3] != k.shape[2]:
            return f"a mask of shape {tuple(m.shape)} broadcast over the key positions"
    return None
