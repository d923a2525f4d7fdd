"""Compile-time weight prepacking (stage 3b of the pipeline): frozen weights of decode-shaped linears are repacked
into the blocked layouts the GEMV kernels stream fastest.

Runs as Inductor's ``post_grad_custom_post_pass``, after freezing has turned parameters into ``get_attr``
constants. Only graphs whose activation rows M are static and at most ``MAX_M`` are packed: larger M is prefill,
served by kernels that read the plain weight. A packed weight is a new tensor beside the module's own weight, made
once per process and shared by every graph that reads it (``_shared``: the prompt's and the step's graphs,
recompiles, a second ``torch.compile``); ``options={"inductor_quant.prepack": False}`` turns packing off.

* ``int8_weight_linear`` -> ``int8_weight_linear_packed`` (``primitives.pack_int8_blocked``): int8 weights held
  plain (``layout="plain"``, hand-written int8 code). A CPU ``Int8WeightTensor`` is held in that layout already
  (``quantize_``'s default), so its graphs carry ``int8_weight_linear_packed`` on the module's own tensor and
  nothing is packed or copied;
* ``int4_weight_linear`` -> ``int4_weight_linear_packed`` (``primitives.pack_int4_blocked``; a K that is not a
  multiple of the kernel's 128-value step is zero-padded to one, with zero scales and zero points for the padded
  groups);
* ``int4_a8_mm`` (W4A8) -> ``int4_a8_mm_packed``: nibbles, scales and zero points in the lane layout
  (``primitives.pack_int4_lanes`` / ``pack_group_lanes``) of the ``int4_a8_gemv`` template;
* aten's ``_weight_int4pack_mm_for_cpu`` on a constant weight -> ``int4_weight_linear_packed``: its weight is
  unpacked from aten's layout (exactly) and its ``[K / g, N, 2]`` scales and zeros become fp32 ``[N, K / g]`` scales
  and offsets (``W = q * s + (z - 8 s)``, aten's ``(q - 8) * s + z``), so the package's kernel serves it;
* linears that read one activation (q / k / v, gate / up) with weights of one scheme become one linear over their
  weights concatenated along N before they are packed, its output sliced back (``_fuse_siblings``): one GEMV in
  place of three (SmolLM2: 7 -> 4 per layer; a 576 x 192 GEMV is mostly fixed cost). The concatenation is the
  packed copy; for weights held blocked, the module's own tensors (weights, scales, biases) are moved into one
  storage each instead (``_joined``), so the fused GEMV reads them in place and nothing is copied;
* ``ternary_mm`` (BitLinear) reads its packed weight as stored; only a per-tensor weight scale (``[1]``) is
  repeated into a ``[N]`` constant. Inductor inlines constants of at most 8 values into the code as literals, so
  every layer's scale would otherwise make its own small kernel, each one a C++ compile (measured: 16 layers compile
  in 11.3 s with ``[1]`` scales, 5.5 s with ``[N]``).
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.fx import Graph, GraphModule, Node

from ..kernels import pack_int4_lanes
from ..primitives import (
    ATEN_INT4_N_MULTIPLE,
    INT4_GROUP_SIZES,
    PACK_K_STEP,
    PACK_ROWS,
    pack_group_lanes,
    pack_int4,
    pack_int4_blocked,
    pack_int8_blocked,
    unpack_aten_int4,
)
from ..settings import INT4_KERNEL_ENV, INT8_KERNEL_ENV, forced_int4_kernel, forced_int8_kernel
from ..templates.cpp import int4_gemv
from ..templates.cpp.gemv import MAX_M, cpp_templates_apply

log = logging.getLogger(__name__)
aten = torch.ops.aten


def _static_rows(x: Node) -> int | None:
    v = x.meta.get("val")
    if v is None or not isinstance(v.shape[0], int):
        return None
    return v.shape[0]


class _Made(NamedTuple):
    sources: tuple[weakref.ref, ...]
    versions: tuple[int | None, ...]
    value: weakref.ref


# Every constant this pass has made in this process, keyed by the ids of the frozen tensors it was computed from
# (a frozen parameter is the module's own tensor, the same object in every graph) and what was made of them. Only
# weak references: a constant lives while a compiled graph holds it, and is valid while its sources are the same
# objects with unchanged version counters (an in-place edit, such as a LoRA merge, makes it again).
_MADE: dict[tuple, _Made] = {}


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None


def _shared(sources: list[torch.Tensor], tag: str, make) -> tuple[torch.Tensor, bool]:
    """The constant ``make()`` computes from ``sources``, made once per process while any graph holds it.
    Returns it and whether it was made now."""
    key = (tuple(id(t) for t in sources), tag)
    versions = tuple(_version(t) for t in sources)
    hit = _MADE.get(key)
    if hit is not None:
        value = hit.value()
        alive = all(ref() is t for ref, t in zip(hit.sources, sources, strict=True))
        if value is not None and alive and hit.versions == versions:
            return value, False
    for stale in [
        k for k, made in _MADE.items() if made.value() is None or any(r() is None for r in made.sources)
    ]:
        del _MADE[stale]
    value = make()
    _MADE[key] = _Made(tuple(weakref.ref(t) for t in sources), versions, weakref.ref(value))
    return value, True


class _Constants:
    """New constants of the graph module, each made once per process from the frozen weights it is computed from
    (``_shared``): a weight read by several linears, by the prefill and decode graphs, by recompiles for new
    shapes or by a second ``torch.compile`` of the model is packed once, and every graph holds that one copy."""

    def __init__(self, gm: GraphModule, counter: str):
        self.gm = gm
        self.counter = counter
        self.made: dict[str, int] = {}  # name -> bytes counted as made by this graph
        # placeholders of weights concatenated for sibling fusion, computed only when packed:
        # name -> (the frozen constants concatenated, along N)
        self.pending: dict[str, tuple[str, ...]] = {}

    def sources(self, name: str) -> tuple[str, ...]:
        """The frozen constants a constant of the graph is computed from (itself, if it is one)."""
        return self.pending.get(name, (name,))

    def value(self, name: str) -> torch.Tensor:
        """A constant's value: a pending concatenation is computed (and not kept)."""
        if name in self.pending:
            return torch.cat([getattr(self.gm, n) for n in self.pending[name]])
        return getattr(self.gm, name)

    def _node(self, graph: Graph, name: str) -> Node:
        node = graph.get_attr(name)
        value = getattr(self.gm, name)
        node.meta["val"] = torch.empty(value.shape, dtype=value.dtype, device="meta")
        return node

    def get(self, graph: Graph, sources: tuple[str, ...], tag: str, make) -> Node:
        """The constant ``make()`` computes from the graph constants ``sources``, as a ``get_attr`` node."""
        name = f"{'_'.join(sources)}_iq_{tag}"
        if name not in self.made:
            frozen = [getattr(self.gm, n) for s in sources for n in self.sources(s)]
            tensor, new = _shared(frozen, tag, make)
            self.gm.register_buffer(name, tensor)
            nbytes = tensor.numel() * tensor.element_size()
            self.made[name] = nbytes if new else 0
            counters["inductor_quant"][self.counter if new else "prepack_reused_bytes"] += nbytes
        return self._node(graph, name)

    def concatenation(self, graph: Graph, sources: tuple[str, ...]) -> Node:
        """The weights ``sources`` concatenated along N, as a placeholder with no storage of its own: the packing
        of the fused linear computes the concatenation from the sources (``value``) and only its packed copy is
        made. ``materialize_pending`` makes any placeholder still read after packing a real constant."""
        name = f"{'_'.join(sources)}_iq_cat"
        if name not in self.pending:
            first = getattr(self.gm, sources[0])
            rows = sum(getattr(self.gm, n).shape[0] for n in sources)
            self.gm.register_buffer(name, first.new_zeros(()).expand(rows, *first.shape[1:]))
            self.pending[name] = sources
        return self._node(graph, name)

    def materialize_pending(self, graph: Graph) -> None:
        """Make every concatenation placeholder that a node still reads a real constant."""
        for name, sources in self.pending.items():
            readers = [n for n in graph.nodes if n.op == "get_attr" and n.target == name and n.users]
            if readers:
                del self.gm._buffers[name]
                tensor, _ = _shared(
                    [getattr(self.gm, s) for s in sources],
                    "cat",
                    lambda s=sources: torch.cat([getattr(self.gm, n) for n in s]),
                )
                self.gm.register_buffer(name, tensor)
        self.pending.clear()

    def drop_unused(self, graph: Graph) -> None:
        """Delete the constants this made that no node of ``graph`` reads any more (and uncount them)."""
        used = {node.target for node in graph.nodes if node.op == "get_attr"}
        for name in [*self.made, *self.pending]:
            if name not in used and hasattr(self.gm, name):
                delattr(self.gm, name)
                counters["inductor_quant"][self.counter] -= self.made.pop(name, 0)


def _skip_reason(node: Node, x: Node, weights: list[Node], gm: GraphModule, k_multiple: int) -> str | None:
    m = _static_rows(x)
    for w in weights:
        if w.op != "get_attr":
            return f"weight {w.name} is a graph input, not a frozen constant"
    device = getattr(gm, weights[0].target).device
    if not cpp_templates_apply(device):
        return f"weight on {device} (the GEMV templates need a CPU and Inductor's C++ backend)"
    k = x.meta["val"].shape[-1]
    if m is None or m > MAX_M or k % k_multiple:
        return f"M={m} (decode needs static M <= {MAX_M}), K={k} (needs K % {k_multiple} == 0)"
    return None


def _args(node: Node, count: int, **optional: int) -> list:
    """The op's first ``count`` arguments, positional or keyword (``optional``: name -> position, default None):
    an ``out_dtype`` passed positionally must reach the packed op as one passed by keyword does."""
    args = list(node.args) + [None] * (count - len(node.args))
    for name, index in optional.items():
        if name in node.kwargs:
            args[index] = node.kwargs[name]
    return args[:count]


def _forced_elsewhere(node: Node, env: str, forced: str | None, packed_kernel: str) -> bool:
    """The environment forces a kernel other than the packed layout's (it reads the plain weight): do not pack."""
    if forced in (None, packed_kernel):
        return False
    log.debug("not prepacked: %s: %s=%s forces a kernel that reads the plain weight", node.name, env, forced)
    return True


def _swap(graph: Graph, node: Node, target, args: tuple, what: str) -> None:
    with graph.inserting_before(node):
        new = graph.call_function(target, args)
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    log.info("prepacked %s: %s -> blocked decode layout", new.name, what)


def prepack_weights(graph: Graph) -> int:
    """Replace every prepackable linear of ``graph`` by its packed op; returns the count."""
    gm = graph.owning_module
    int8 = _Constants(gm, "int8_prepacked_bytes")
    int4 = _Constants(gm, "int4_prepacked_bytes")
    ternary = _Constants(gm, "ternary_scale_repeated_bytes")
    _fuse_siblings(
        graph,
        {
            torch.ops.inductor_quant.int8_weight_linear.default: int8,
            _INT8_PACKED: int8,
            _INT4_PACKED: int4,
            torch.ops.inductor_quant.int4_weight_linear.default: int4,
        },
    )
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.inductor_quant.int8_weight_linear.default:
            count += _prepack_int8(graph, node, int8)
        elif node.target is torch.ops.inductor_quant.int4_weight_linear.default:
            count += _prepack_int4(graph, node, int4)
        elif node.target is torch.ops.inductor_quant.int4_a8_mm.default:
            count += _prepack_int4_a8(graph, node, int4)
        elif node.target is aten._weight_int4pack_mm_for_cpu.default:
            count += _prepack_aten_int4(graph, node, int4)
        elif node.target is torch.ops.inductor_quant.ternary_mm.default:
            _repeat_ternary_scale(graph, node, ternary)
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    for consts in (int8, int4, ternary):
        consts.materialize_pending(graph)  # (a fused weight is only read packed: defensive)
        consts.drop_unused(graph)
    return count


class _Siblings(NamedTuple):
    """Where an op that sibling fusion handles keeps its arguments."""

    count: int  # arguments
    bias: int
    out_dtype: int
    per_row: tuple[int, ...]  # per-output-row constants: concatenated along N
    same: tuple[int, ...]  # must be equal across the siblings


_INT8_PACKED = torch.ops.inductor_quant.int8_weight_linear_packed.default
_INT4_PACKED = torch.ops.inductor_quant.int4_weight_linear_packed.default
# ops on weights held in a blocked layout: their siblings' constants are joined in place (``_joined``), and the
# fused op's out_features argument is the sum of theirs
_BLOCKED = {_INT8_PACKED: 5, _INT4_PACKED: 7}
_SIBLINGS = {
    torch.ops.inductor_quant.int8_weight_linear.default: _Siblings(5, 3, 4, per_row=(1, 2, 3), same=(4,)),
    _INT8_PACKED: _Siblings(6, 3, 4, per_row=(1, 2, 3), same=(4,)),
    _INT4_PACKED: _Siblings(9, 5, 6, per_row=(1, 2, 3, 5), same=(4, 6, 8)),
    torch.ops.inductor_quant.int4_weight_linear.default: _Siblings(
        7, 5, 6, per_row=(1, 2, 3, 5), same=(4, 6)
    ),
}
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _activation_key(x: Node) -> tuple:
    """Linears read one activation when their inputs are one node, or views of one node to one shape."""
    if x.op == "call_function" and x.target in _VIEWS:
        return (x.args[0], tuple(x.meta["val"].shape))
    return (x, None)


def _sibling_key(node: Node, gm: GraphModule) -> tuple | None:
    spec = _SIBLINGS[node.target]
    args = _args(node, spec.count, bias=spec.bias, out_dtype=spec.out_dtype)
    x = args[0]
    int8 = node.target in (torch.ops.inductor_quant.int8_weight_linear.default, _INT8_PACKED)
    k_multiple = PACK_K_STEP if int8 else args[4]  # what the prepack of the fused linear will ask for
    if node.target in _BLOCKED:
        if node.args[_BLOCKED[node.target]] % PACK_ROWS or len(node.args) > spec.count or node.kwargs:
            return None  # a blocked weight joins others as whole 4-row blocks only
        if node.target is _INT4_PACKED and (len(node.args) > 8 and node.args[8]):
            return None  # (aten's weights taken over: constants the pass made, not the module's)
    if not isinstance(k_multiple, int) or _skip_reason(node, x, [args[1]], gm, k_multiple):
        return None
    if (forced_int8_kernel() if int8 else forced_int4_kernel()) not in (
        None,
        "int8_gemv" if int8 else "int4_gemv",
    ):
        return None
    constants = []
    for i in spec.per_row:
        t = args[i]
        if t is None:
            constants.append(None)
        elif isinstance(t, Node) and t.op == "get_attr":
            value = getattr(gm, t.target)
            constants.append((value.dtype, tuple(value.shape[1:])))
        else:
            return None
    return (node.target, _activation_key(x), tuple(args[i] for i in spec.same), tuple(constants))


def _fuse_siblings(graph: Graph, concatenated: dict) -> int:
    """Each set of linears of one scheme that read one activation (and would be prepacked) becomes one linear over
    their constants concatenated along N, whose output is sliced back into theirs. Returns the linears removed."""
    gm = graph.owning_module
    groups: dict[tuple, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _SIBLINGS:
            key = _sibling_key(node, gm)
            weight = node.args[1].target
            # (one weight twice on one activation is a duplicate, not a sibling: it would be packed twice)
            if key is not None and all(n.args[1].target != weight for n in groups[key]):
                groups[key].append(node)
    removed = 0
    for nodes in groups.values():
        if len(nodes) > 1:
            _fuse(graph, nodes, concatenated[nodes[0].target])
            removed += len(nodes) - 1
    if removed:
        counters["inductor_quant"]["linears_fused"] += removed
    return removed


def _fuse(graph: Graph, nodes: list[Node], consts: _Constants) -> None:
    gm = graph.owning_module
    spec = _SIBLINGS[nodes[0].target]
    args = [_args(n, spec.count, bias=spec.bias, out_dtype=spec.out_dtype) for n in nodes]
    out_features = _BLOCKED.get(nodes[0].target)
    blocked = out_features is not None
    widths = [
        n.args[out_features] if blocked else getattr(gm, a[1].target).shape[0]
        for n, a in zip(nodes, args, strict=True)
    ]
    fused_args = list(args[0])
    if blocked:  # (positional arguments only: see _sibling_key)
        fused_args = fused_args[: len(nodes[0].args)]
        fused_args[out_features] = sum(widths)
    with graph.inserting_before(nodes[0]):
        for i in spec.per_row:
            if args[0][i] is None:
                continue
            names = tuple(a[i].target for a in args)
            if blocked:  # the module's weights, scales, biases are moved into one storage each (no copy kept)
                fused_args[i] = _joined(graph, names)
            elif i == 1:  # the weight: only its packed copy is made
                fused_args[i] = consts.concatenation(graph, names)
            else:
                fused_args[i] = consts.get(
                    graph, names, "cat", lambda names=names: torch.cat([getattr(gm, n) for n in names])
                )
        fused = graph.call_function(nodes[0].target, tuple(fused_args))
        fused.meta.update(nodes[0].meta)
        val = nodes[0].meta["val"]
        fused.meta["val"] = val.new_empty((val.shape[0], sum(widths)))
        start = 0
        for node, width in zip(nodes, widths, strict=True):
            part = graph.call_function(aten.slice.Tensor, (fused, 1, start, start + width))
            part.meta.update(node.meta)
            part.meta["val"] = fused.meta["val"][:, start : start + width]
            node.replace_all_uses_with(part)
            start += width
    for node in nodes:
        graph.erase_node(node)
    log.info(
        "fused %d linears reading %s into one over N = %s",
        len(nodes),
        args[0][0].name,
        "+".join(map(str, widths)),
    )


def _joined(graph: Graph, names: tuple[str, ...]) -> Node:
    """One constant over constants laid end to end along their first dimension (blocked weights of whole 4-row
    blocks, their scales, zero points, biases), without a second copy: the tensors themselves (the module's own, frozen) are moved into one storage,
    each becoming a view of its part of it (``Tensor.set_``: every holder sees the same values at the new place).
    A later graph joining the same tensors in the same order finds them joined. Where a tensor cannot be moved (an
    inference tensor, a parameter that requires grad), the joined constant is a copy (logged)."""
    gm = graph.owning_module
    parts = [getattr(gm, n) for n in names]
    first = parts[0]
    shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    storage = first.untyped_storage()
    offsets = [first.storage_offset()]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + p.numel())
    if all(
        p.untyped_storage().data_ptr() == storage.data_ptr() and p.storage_offset() == o and p.is_contiguous()
        for p, o in zip(parts, offsets, strict=True)
    ):
        joined = first.new_empty(0).set_(
            storage, offsets[0], shape, torch.empty(shape, device="meta").stride()
        )
    else:
        joined = torch.cat(parts)
        try:
            offset = 0
            for p in parts:
                p.set_(joined.untyped_storage(), offset, p.shape, p.stride())
                offset += p.numel()
            counters["inductor_quant"]["constants_joined"] += len(parts)
        except RuntimeError as e:
            counters["inductor_quant"]["prepacked_bytes_joined_by_copy"] += (
                joined.numel() * joined.element_size()
            )
            log.info("fused constants %s copied, not moved (%s): a second copy of them is held", names, e)
    name = f"{'_'.join(names)}_iq_joined"
    if not hasattr(gm, name):
        gm.register_buffer(name, joined)
    node = graph.get_attr(name)
    node.meta["val"] = torch.empty(joined.shape, dtype=joined.dtype, device="meta")
    return node


def _prepack_int8(graph: Graph, node: Node, consts: _Constants) -> int:
    if _forced_elsewhere(node, INT8_KERNEL_ENV, forced_int8_kernel(), "int8_gemv"):
        return 0
    x, w, scale, bias, out_dtype = _args(node, 5, bias=3, out_dtype=4)
    why = _skip_reason(node, x, [w], consts.gm, PACK_K_STEP)
    if why:
        log.debug("not prepacked: %s: %s", node.name, why)
        return 0
    n, k = getattr(consts.gm, w.target).shape
    with graph.inserting_before(node):
        packed = consts.get(graph, (w.target,), "packed", lambda: pack_int8_blocked(consts.value(w.target)))
    _swap(
        graph,
        node,
        torch.ops.inductor_quant.int8_weight_linear_packed.default,
        (x, packed, scale, bias, out_dtype, n),
        f"int8 weight {w.target} [{n}, {k}] (M={_static_rows(x)})",
    )
    counters["inductor_quant"]["int8_prepacked"] += 1
    return 1


def _repeat_ternary_scale(graph: Graph, node: Node, consts: _Constants) -> None:
    qweight, weight_scale = node.args[2], node.args[3]
    if weight_scale.op != "get_attr" or qweight.op != "get_attr":
        return
    scale = getattr(consts.gm, weight_scale.target)
    n = getattr(consts.gm, qweight.target).shape[0]
    if scale.numel() != 1 or n <= 8:
        return
    with graph.inserting_before(node):
        repeated = consts.get(graph, (weight_scale.target,), f"x{n}", lambda: scale.expand(n).contiguous())
    node.update_arg(3, repeated)
    counters["inductor_quant"]["ternary_scale_repeated"] += 1
    log.debug(
        "%s: per-tensor weight scale %s repeated to [%d] (not inlined)", node.name, weight_scale.target, n
    )


def _prepack_int4(graph: Graph, node: Node, consts: _Constants) -> int:
    if _forced_elsewhere(node, INT4_KERNEL_ENV, forced_int4_kernel(), "int4_gemv"):
        return 0
    x, q, scale, zero_point, group_size, bias, out_dtype = _args(node, 7, bias=5, out_dtype=6)
    # any K (the group divides it): the kernel's K steps of 128 run over a zero-padded tail, read against zero
    # activations; the padded groups' scales and zero points are zeros (SmolLM2's K = 576 -> 640)
    qdata = getattr(consts.gm, q.target, None)
    pad = -2 * qdata.shape[1] % int4_gemv.K_STEP if qdata is not None else 0
    why = _skip_reason(node, x, [q, scale, zero_point] if pad else [q], consts.gm, group_size)
    if why:
        log.debug("not prepacked: %s: %s", node.name, why)
        return 0
    n = qdata.shape[0]
    with graph.inserting_before(node):
        packed = consts.get(
            graph,
            (q.target,),
            "packed",
            lambda: pack_int4_blocked(F.pad(consts.value(q.target), (0, pad // 2))),
        )
        if pad:
            scale, zero_point = (
                consts.get(
                    graph,
                    (t.target,),
                    "padded",
                    lambda t=t: F.pad(consts.value(t.target), (0, pad // group_size)),
                )
                for t in (scale, zero_point)
            )
    _swap(
        graph,
        node,
        torch.ops.inductor_quant.int4_weight_linear_packed.default,
        (x, packed, scale, zero_point, group_size, bias, out_dtype, n),
        f"int4 weight {q.target} [{n}, {2 * qdata.shape[1]}] g{group_size} (M={_static_rows(x)})",
    )
    counters["inductor_quant"]["int4_prepacked"] += 1
    return 1


def _prepack_int4_a8(graph: Graph, node: Node, consts: _Constants) -> int:
    if _forced_elsewhere(node, INT4_KERNEL_ENV, forced_int4_kernel(), "int4_gemv"):
        return 0
    x, x_scale, q, scale, zero_point, group_size, bias, out_dtype = _args(node, 8, bias=6, out_dtype=7)
    # the lane layout takes any K the group divides (8 values per step)
    why = _skip_reason(node, x, [q, scale, zero_point], consts.gm, 8)
    if why:
        log.debug("not prepacked: %s: %s", node.name, why)
        return 0
    qdata = getattr(consts.gm, q.target)
    n = qdata.shape[0]
    with graph.inserting_before(node):
        packed = consts.get(graph, (q.target,), "lanes", lambda: pack_int4_lanes(qdata))
        s, z = (
            consts.get(graph, (t.target,), "lanes", lambda t=t: pack_group_lanes(consts.value(t.target)))
            for t in (scale, zero_point)
        )
    _swap(
        graph,
        node,
        torch.ops.inductor_quant.int4_a8_mm_packed.default,
        (x, x_scale, packed, s, z, group_size, bias, out_dtype, n),
        f"int4 weight {q.target} [{n}, {2 * qdata.shape[1]}] g{group_size}, int8 activations "
        f"(M={_static_rows(x)}; lane layout)",
    )
    counters["inductor_quant"]["int4_a8_prepacked"] += 1
    return 1


def _prepack_aten_int4(graph: Graph, node: Node, consts: _Constants) -> int:
    """aten's CPU int4 matmul on constants -> the package's packed op (its lowering is then ours)."""
    x, w, group_size, sz = node.args
    why = _skip_reason(node, x, [w, sz], consts.gm, int4_gemv.K_STEP)
    if why:
        log.info("not taken over: aten int4 matmul %s stays on aten's kernel: %s", node.name, why)
        return 0
    weight, scales_zeros = getattr(consts.gm, w.target), getattr(consts.gm, sz.target)
    n, k = weight.shape[0], x.meta["val"].shape[-1]
    groups = k // group_size if group_size in INT4_GROUP_SIZES and k % group_size == 0 else None
    if groups is None or n % ATEN_INT4_N_MULTIPLE or tuple(scales_zeros.shape) != (groups, n, 2):
        log.info(
            "not taken over: aten int4 matmul %s: group_size=%s, N=%d, scales_and_zeros %s (expected [K/g, N, 2])",
            node.name,
            group_size,
            n,
            tuple(scales_zeros.shape),
        )
        return 0
    sz32 = scales_zeros.float()
    with graph.inserting_before(node):
        packed = consts.get(
            graph,
            (w.target,),
            "from_aten",
            lambda: pack_int4_blocked(pack_int4(unpack_aten_int4(weight, n, k))),
        )
        scale = consts.get(graph, (sz.target,), "scale", lambda: sz32[:, :, 0].t().contiguous())
        offset = consts.get(
            graph, (sz.target,), "offset", lambda: (sz32[:, :, 1] - 8 * sz32[:, :, 0]).t().contiguous()
        )
    _swap(
        graph,
        node,
        torch.ops.inductor_quant.int4_weight_linear_packed.default,
        (x, packed, scale, offset, group_size, None, None, n, True),
        f"aten int4 weight {w.target} [{n}, {k}] g{group_size} (M={_static_rows(x)})",
    )
    counters["inductor_quant"]["int4_prepacked_from_aten"] += 1
    return 1
