"""The int4 half of the rewrite pass: a hand-written groupwise int4 dequantize chain feeding a matmul becomes
``torch.ops.inductor_quant.int4_weight_linear``.

The chain it recognises is the one the README documents (and ``primitives.dequantize_int4`` computes):

    q = torch.stack([qdata & 0xF, qdata >> 4], dim=-1)              # uint8 [N, K / 2] -> nibbles in K order
    w = (q.view(N, -1, g).to(dt) - zero_point.unsqueeze(-1)) * scale.unsqueeze(-1)
    y = F.linear(x, w.reshape(N, -1) [, bias])                       # or x @ w.reshape(N, -1).t()

in any of the spellings that trace to the same aten graph (``view`` / ``reshape``, ``unsqueeze`` / ``[..., None]``,
conversions of the zero point or scale, the operands of ``*`` in either order). Anything else is left alone with
the reason logged. It runs in the joint graph, before freezing could fold the chain into a dense float weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch._dynamo.utils import counters
from torch.fx import Graph, Node

from ..primitives import INT4_GROUP_SIZES
from .rewrite import FLOAT_DTYPES, NoMatch, _is, _shapes, _val, reads_dtype

log = logging.getLogger(__name__)
aten = torch.ops.aten
prims = torch.ops.prims

_SHAPE_OPS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default)
_CONVERT = (prims.convert_element_type.default, aten._to_copy.default)
_RSHIFT = (aten.__rshift__.Scalar, aten.bitwise_right_shift.Tensor_Scalar)


@dataclass
class Int4Linear:
    x: Node
    qdata: Node
    scale: Node
    zero_point: Node
    group_size: int
    bias: Node | None
    last: Node


def _through(node: Node, ops) -> Node:
    while _is(node, *ops):
        node = node.args[0]
    return node


def _per_group(node: Node, n: int, groups: int, what: str) -> Node:
    """A ``[N, G, 1]`` broadcast of a ``[N, G]`` tensor (through unsqueeze / view / conversions): its source."""
    v = _val(node)
    if v is None or tuple(v.shape) != (n, groups, 1):
        raise NoMatch(f"{what} has shape {tuple(getattr(v, 'shape', ()))}, not [{n}, {groups}, 1]")
    src = _through(node, (*_SHAPE_OPS, *_CONVERT, aten.unsqueeze.default))
    sv = _val(src)
    if sv is None or tuple(sv.shape) != (n, groups):
        raise NoMatch(f"{what} is not a [{n}, {groups}] tensor broadcast along the group")
    return src


def _nibbles(node: Node) -> Node:
    """``torch.stack([q & 0xF, q >> 4], -1)`` (a cat of unsqueezes once traced): returns the uint8 ``q``."""
    if _is(node, aten.stack.default):
        parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
    elif _is(node, aten.cat.default):
        parts = [
            _through(p, (aten.unsqueeze.default,)) if _is(p, aten.unsqueeze.default) else None
            for p in node.args[0]
        ]
        dim = node.args[1] if len(node.args) > 1 else 0
    else:
        raise NoMatch("the integer weight is not built from two nibble planes (stack / cat)")
    if len(parts) != 2 or None in parts or dim not in (-1, _val(node).dim() - 1):
        raise NoMatch("the nibbles are not stacked along the last dim as [low, high]")
    lo, hi = parts
    if _is(hi, aten.bitwise_and.Scalar) and hi.args[1] == 0xF:
        hi = hi.args[0]  # (q >> 4) & 0xF is q >> 4 for uint8 q
    if not (_is(lo, aten.bitwise_and.Scalar) and lo.args[1] == 0xF):
        raise NoMatch("the first nibble plane is not `q & 0xF` (low nibble first is the supported order)")
    if not (_is(hi, *_RSHIFT) and hi.args[1] == 4):
        raise NoMatch("the second nibble plane is not `q >> 4`")
    q = lo.args[0]
    if hi.args[0] is not q:
        raise NoMatch("the two nibble planes come from different tensors")
    qv = _val(q)
    if qv is None or qv.dtype != torch.uint8 or qv.dim() != 2:
        raise NoMatch(
            f"nibbles come from {getattr(qv, 'dtype', None)} {tuple(getattr(qv, 'shape', ()))}, not uint8 [N, K/2]"
        )
    return q


def match_int4_linear(mm: Node) -> Int4Linear:
    """Match one hand-written int4 groupwise linear anchored on ``mm`` / ``addmm``."""
    bias = None
    if _is(mm, aten.addmm.default):
        bias, x, mat2 = mm.args
        if mm.kwargs.get("beta", 1) != 1 or mm.kwargs.get("alpha", 1) != 1:
            raise NoMatch("addmm with alpha/beta != 1")
    else:
        x, mat2 = mm.args
    if not (_is(mat2, aten.permute.default) and list(mat2.args[1]) == [1, 0]) and not _is(
        mat2, aten.t.default
    ):
        raise NoMatch("mat2 is not a transposed weight")
    w = mat2.args[0]
    n, k = _val(w).shape
    mul = _through(w, _SHAPE_OPS)
    if not _is(mul, aten.mul.Tensor):
        raise NoMatch("weight is not a product `(q - zero_point) * scale`")
    for sub, scale in (mul.args, mul.args[::-1]):
        if _is(sub, aten.sub.Tensor) and isinstance(scale, Node):
            break
    else:
        raise NoMatch("weight is a product without `q - zero_point` (symmetric int4 is not a supported form)")
    deq, zero = sub.args
    dv = _val(deq)
    if dv is None or dv.dim() != 3 or dv.shape[0] != n or dv.shape[1] * dv.shape[2] != k:
        raise NoMatch(
            f"dequantized weight is {tuple(getattr(dv, 'shape', ()))}, not [{n}, G, g] with G * g = {k}"
        )
    groups, group_size = int(dv.shape[1]), int(dv.shape[2])
    if group_size not in INT4_GROUP_SIZES:
        raise NoMatch(f"group size {group_size} is not one of {INT4_GROUP_SIZES}")
    if not _is(deq, *_CONVERT):
        raise NoMatch("the grouped integer weight is not converted to float")
    qdata = _nibbles(_through(deq.args[0], _SHAPE_OPS))
    if _val(qdata).shape != (n, k // 2):
        raise NoMatch(f"nibbles of {tuple(_val(qdata).shape)} do not make a [{n}, {k}] weight")
    scale = _per_group(scale, n, groups, "scale")
    zero = _per_group(zero, n, groups, "zero point")
    if _val(scale).dtype not in FLOAT_DTYPES:
        raise NoMatch(f"scale dtype {_val(scale).dtype} is not a float dtype")
    xv = _val(x)
    if xv.dtype not in FLOAT_DTYPES or xv.dtype != _val(mat2).dtype:
        raise NoMatch(
            f"activation dtype {xv.dtype} does not match the dequantized weight's {_val(mat2).dtype}"
        )
    if len(mat2.users) != 1 or len(w.users) != 1 or len(mul.users) != 1:
        raise NoMatch("the dequantized weight has other users (e.g. a backward), so it would be built anyway")
    if bias is not None and (_val(bias).dim() != 1 or _val(bias).shape[0] != n):
        raise NoMatch(f"addmm bias of shape {tuple(_val(bias).shape)} is not a [{n}] vector")
    return Int4Linear(x, qdata, scale, zero, group_size, bias, mm)


def _replace(graph: Graph, m: Int4Linear) -> None:
    out_val = _val(m.last)
    with graph.inserting_before(m.last):
        zero = m.zero_point
        if _val(zero).dtype not in (torch.uint8, torch.float32):
            # integer zero points of other widths (and float ones) are exact in fp32
            zero = graph.call_function(prims.convert_element_type.default, (zero, torch.float32))
            zero.meta["val"] = _val(m.zero_point).to(torch.float32)
        op = graph.call_function(
            torch.ops.inductor_quant.int4_weight_linear.default,
            (m.x, m.qdata, m.scale, zero, m.group_size, m.bias),
            {"out_dtype": out_val.dtype},
        )
        op.meta["val"] = out_val
    m.last.replace_all_uses_with(op)


def rewrite_int4_linears(graph: Graph) -> int:
    """Rewrite every hand-written int4 groupwise linear of ``graph``; returns how many were rewritten."""
    rewritten = 0
    for mm in [n for n in graph.nodes if _is(n, aten.mm.default, aten.addmm.default)]:
        try:
            m = match_int4_linear(mm)
        except NoMatch as why:
            if reads_dtype(mm, torch.uint8, limit=16):
                log.info("not rewritten (int4): %s %s: %s", mm.name, _shapes(mm), why)
            continue
        _replace(graph, m)
        counters["inductor_quant"]["int4_rewrite"] += 1
        rewritten += 1
        log.info(
            "rewrote %s %s (int4 dequantize chain, g%d) -> inductor_quant.int4_weight_linear%s",
            mm.name,
            _shapes(mm),
            m.group_size,
            " + bias" if m.bias is not None else "",
        )
    if rewritten:
        graph.eliminate_dead_code()
    return rewritten


def guard_aten_int4_matmuls(graph: Graph) -> int:
    """Make aten's CPU int4 matmul safe in this backend's graphs; returns how many calls were changed.

    torch 2.15's ``_weight_int4pack_mm_for_cpu`` reads ``scales_and_zeros`` as if contiguous (a transposed view
    gives silently wrong results) and does not check its number of groups (too few reads out of bounds); its meta
    kernel checks neither. Here a wrong shape is an error naming it, before anything runs, and a call with a
    non-contiguous operand goes to ``inductor_quant::aten_int4pack_mm_checked``, which makes it contiguous first.
    """
    changed = 0
    for node in [n for n in graph.nodes if _is(n, aten._weight_int4pack_mm_for_cpu.default)]:
        x, w, group_size, sz = node.args
        k, n = _val(x).shape[-1], _val(w).shape[0]
        expected = (k // group_size, n, 2) if group_size and k % group_size == 0 else None
        if expected is None or tuple(_val(sz).shape) != expected:
            raise ValueError(
                f"_weight_int4pack_mm_for_cpu: scales_and_zeros has shape {tuple(_val(sz).shape)}, expected "
                f"[K / group_size, N, 2] = {list(expected) if expected else '?'} for K={k}, N={n}, "
                f"group_size={group_size}"
            )
        if all(_val(a).is_contiguous() for a in (x, w, sz)):
            continue
        with graph.inserting_before(node):
            checked = graph.call_function(
                torch.ops.inductor_quant.aten_int4pack_mm_checked.default, node.args
            )
        checked.meta.update(node.meta)
        node.replace_all_uses_with(checked)
        graph.erase_node(node)
        changed += 1
        counters["inductor_quant"]["int4_aten_made_contiguous"] += 1
        log.info(
            "%s: aten's int4 matmul has a non-contiguous operand, which it would misread: made contiguous",
            checked.name,
        )
    return changed
