"""Dequantize -> matmul rewrite (stage 3 of the pipeline): int8 weight-only linears become
``torch.ops.inductor_quant.int8_weight_linear``.

Runs as Inductor's ``joint_custom_post_pass`` on the aten graph, before freezing's constant folding could turn an
int8 weight into a float one. Each matmul is anchored on its ``mm`` / ``addmm`` node; the weight side and the output
side are matched by one function per form, each headed by the source line it stands for. Every decision is logged
(``TORCH_LOGS="+inductor_quant"``) and every rewrite counted in ``torch._dynamo.utils.counters["inductor_quant"]``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx import Graph, Node

import inductor_quant

from ..settings import cpu_matrix_isa, forced_int4_kernel, forced_int8_kernel, forced_ternary_kernel

log = logging.getLogger(__name__)

aten = torch.ops.aten
prims = torch.ops.prims
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOG_GRAPHS_ENV = "INDUCTOR_QUANT_LOG_GRAPHS"  # "1": log the graph before and after the rewrite


class NoMatch(Exception):
    """A matmul that is not rewritten; the message says why (it is logged)."""


def _val(node: Node | None) -> torch.Tensor | None:
    return node.meta.get("val") if isinstance(node, Node) else None


def _is(node: object, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _is_vector_of(node: Node, n: int) -> bool:
    """True when ``node`` is a float tensor holding exactly ``n`` values along its last dim (``[N]``, ``[1, N]``)."""
    v = _val(node)
    return (
        isinstance(v, torch.Tensor)
        and v.dtype in FLOAT_DTYPES
        and v.numel() == n
        and v.dim() >= 1
        and v.shape[-1] == n
    )


@dataclass
class Int8Linear:
    """What a matched linear is rewritten from: ``out = (x @ qweight.T) * scale + bias`` replaces ``last``."""

    x: Node
    qweight: Node
    scale: Node
    bias: Node | None
    last: Node
    form: str


# --- weight side: what stands as mat2 of the mm ---------------------------------------------------------


def _match_dequant(node: Node) -> Node:
    """``w.to(x.dtype)``: prims.convert_element_type(int8 tensor, float dtype). Returns the int8 node."""
    if not _is(node, prims.convert_element_type.default, aten._to_copy.default):
        raise NoMatch("weight is not a converted int8 tensor")
    src = node.args[0]
    if _val(src) is None or _val(src).dtype != torch.int8 or _val(src).dim() != 2:
        raise NoMatch(f"weight is converted from {getattr(_val(src), 'dtype', None)}, not a 2-D int8 tensor")
    return src


def _match_scale_before(node: Node, n: int) -> tuple[Node, Node | None]:
    """``w.to(x.dtype) * scale[:, None]``: returns (int8 node, [N, 1] scale node) or (int8 node, None)."""
    if _is(node, aten.mul.Tensor):
        a, b = node.args
        for deq, s in ((a, b), (b, a)):
            if _is(deq, prims.convert_element_type.default, aten._to_copy.default):
                sv = _val(s)
                if not (
                    isinstance(sv, torch.Tensor) and sv.dtype in FLOAT_DTYPES and tuple(sv.shape) == (n, 1)
                ):
                    raise NoMatch(
                        f"weight is scaled by a tensor of shape {tuple(getattr(sv, 'shape', ()))}, not [{n}, 1]"
                    )
                return _match_dequant(deq), s
        raise NoMatch("weight is a product that is not int8 weight * per-channel scale")
    return _match_dequant(node), None


def _match_transposed_weight(mat2: Node) -> tuple[Node, Node | None]:
    """``F.linear(x, w)``, ``x @ w.t()``: mat2 is ``permute(w, [1, 0])`` of a (scaled) dequantized weight."""
    if not (_is(mat2, aten.permute.default) and list(mat2.args[1]) == [1, 0]) and not _is(
        mat2, aten.t.default
    ):
        raise NoMatch("mat2 is not a transposed weight")
    w = mat2.args[0]
    n = _val(w).shape[0]
    return _match_scale_before(w, n)


# --- output side: what follows the mm ---------------------------------------------------------------------


def _single_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _match_scale_after(mm: Node, n: int) -> tuple[Node, Node, Node | None]:
    """``F.linear(x, w.to(x.dtype)) * scale [+ bias]``: returns (scale, last node, bias or None).

    A 3-D activation shows up as ``view -> mm -> view``: the view between mm and mul is looked through.
    """
    node = mm
    nxt = _single_user(node)
    if _is(nxt, aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        node, nxt = nxt, _single_user(nxt)
    if not _is(nxt, aten.mul.Tensor):
        raise NoMatch(
            "int8 weight has no per-channel scale: neither `w * scale[:, None]` nor `linear(...) * scale`"
        )
    a, b = nxt.args
    scale = b if a is node else a
    if not _is_vector_of(scale, n):
        raise NoMatch(
            f"output is scaled by {tuple(getattr(_val(scale), 'shape', ()))}, not a per-channel [{n}] scale"
        )
    last, bias = nxt, None
    add = _single_user(nxt)
    if _is(add, aten.add.Tensor) and len(add.args) == 2 and add.kwargs.get("alpha", 1) == 1:
        other = add.args[1] if add.args[0] is nxt else add.args[0]
        if _is_vector_of(other, n):
            last, bias = add, other
    return scale, last, bias


def match_int8_linear(mm: Node) -> Int8Linear:
    """Match one int8 weight-only linear anchored on ``mm`` / ``addmm`` / ``_weight_int8pack_mm``."""
    if _is(mm, aten._weight_int8pack_mm.default):
        # torch._weight_int8pack_mm(x, w, scale): hand-written int8 code (gpt-fast style)
        x, qweight, scale = mm.args
        return Int8Linear(x, qweight, scale, None, mm, "weight_int8pack_mm")
    bias = None
    if _is(mm, aten.addmm.default):
        bias, x, mat2 = mm.args
        if mm.kwargs.get("beta", 1) != 1 or mm.kwargs.get("alpha", 1) != 1:
            raise NoMatch("addmm with alpha/beta != 1")
    else:
        x, mat2 = mm.args
    qweight, scale_before = _match_transposed_weight(mat2)
    n = _val(qweight).shape[0]
    xv = _val(x)
    if xv.dtype not in FLOAT_DTYPES or xv.dtype != _val(mat2).dtype:
        raise NoMatch(
            f"activation dtype {xv.dtype} does not match the dequantized weight's {_val(mat2).dtype}"
        )
    if len(mat2.args[0].users) != 1 or len(mat2.users) != 1:
        raise NoMatch("the dequantized weight has other users (e.g. a backward), so it would be built anyway")
    if scale_before is not None:
        if bias is not None and not _is_vector_of(bias, n):
            raise NoMatch(f"addmm bias of shape {tuple(_val(bias).shape)} is not a [{n}] vector")
        return Int8Linear(
            x, qweight, scale_before, bias, mm, "scale_before" + ("_bias" if bias is not None else "")
        )
    if bias is not None:
        raise NoMatch(
            "bias is added before the scale (`linear(x, w.to(dt), b) * scale`): the bias would be scaled too"
        )
    scale, last, bias = _match_scale_after(mm, n)
    return Int8Linear(x, qweight, scale, bias, last, "scale_after" + ("_bias" if bias is not None else ""))


# --- replacement -----------------------------------------------------------------------------------------


def _replace(graph: Graph, m: Int8Linear) -> None:
    out_val = _val(m.last)
    n = _val(m.qweight).shape[0]
    with graph.inserting_before(m.last):
        scale, bias = _as_vector(graph, m.scale, n), _as_vector(graph, m.bias, n)
        op = graph.call_function(
            torch.ops.inductor_quant.int8_weight_linear.default,
            (m.x, m.qweight, scale, bias),
            {"out_dtype": out_val.dtype},
        )
        x_val = _val(m.x)
        fake_mode = x_val.fake_mode
        with fake_mode:
            op.meta["val"] = torch.empty((x_val.shape[0], n), dtype=out_val.dtype)
        result = op
        if tuple(out_val.shape) != tuple(op.meta["val"].shape):
            result = graph.call_function(aten.view.default, (op, list(out_val.shape)))
            result.meta["val"] = out_val
    m.last.replace_all_uses_with(result)


def _as_vector(graph: Graph, node: Node | None, n: int) -> Node | None:
    """The op takes scale and bias as ``[N]``: view a ``[N, 1]`` / ``[1, N]`` / ``[1, 1, N]`` one as such."""
    if node is None or _val(node).dim() == 1:
        return node
    flat = graph.call_function(aten.view.default, (node, [n]))
    flat.meta["val"] = _val(node).view(n)
    return flat


def _dequant_candidates(graph: Graph) -> list[Node]:
    anchors = (aten.mm.default, aten.addmm.default, aten._weight_int8pack_mm.default)
    return [n for n in graph.nodes if _is(n, *anchors)]


def rewrite_int8_linears(graph: Graph) -> int:
    """Rewrite every int8 weight-only linear of ``graph``; returns how many were rewritten."""
    rewritten = 0
    for mm in _dequant_candidates(graph):
        try:
            m = match_int8_linear(mm)
        except NoMatch as why:
            # Only matmuls that read an int8 weight deserve an INFO line; float matmuls are the common case.
            level = logging.INFO if reads_dtype(mm, torch.int8) else logging.DEBUG
            log.log(level, "not rewritten: %s %s: %s", mm.name, _shapes(mm), why)
            continue
        _replace(graph, m)
        counters["inductor_quant"]["int8_rewrite"] += 1
        counters["inductor_quant"][f"int8_rewrite_{m.form}"] += 1
        rewritten += 1
        log.info(
            "rewrote %s %s (form %s) -> inductor_quant.int8_weight_linear%s",
            mm.name,
            _shapes(mm),
            m.form,
            " + bias" if m.bias is not None else "",
        )
    if rewritten:
        graph.eliminate_dead_code()
    return rewritten


def reads_dtype(node: Node, dtype: torch.dtype, limit: int = 8) -> bool:
    """Whether one of the nearest ``limit`` producers of ``node`` is a tensor of ``dtype`` (for log levels only)."""
    seen, stack = set(), list(node.all_input_nodes)
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        v = _val(n)
        if isinstance(v, torch.Tensor) and v.dtype == dtype:
            return True
        if n.op == "call_function":
            stack.extend(n.all_input_nodes)
    return False


def _shapes(node: Node) -> str:
    vals = [_val(a) for a in node.all_input_nodes]
    return (
        "("
        + ", ".join(f"{list(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for v in vals if v is not None)
        + ")"
    )


class _PackagePass(CustomGraphPass):
    """A pass object handed to Inductor; its ``uuid`` covers every source file of the package."""

    stage = ""

    def __call__(self, graph: Graph) -> None:
        if os.environ.get(LOG_GRAPHS_ENV) == "1":
            log.info("graph before inductor_quant %s:\n%s", self.stage, graph)
        self.run(graph)
        if os.environ.get(LOG_GRAPHS_ENV) == "1":
            log.info("graph after inductor_quant %s:\n%s", self.stage, graph)

    def run(self, graph: Graph) -> None:
        raise NotImplementedError

    def uuid(self) -> bytes:
        # The forced-kernel switches and the CPU's matrix ISA change what the lowerings emit: part of the key too.
        forced = f"{forced_int8_kernel()},{forced_int4_kernel()},{forced_ternary_kernel()},{cpu_matrix_isa()}"
        return package_source_hash() + self.stage.encode() + forced.encode()


class QuantRewritePass(_PackagePass):
    stage = "rewrite"

    def run(self, graph: Graph) -> None:
        from .rewrite_int4 import guard_aten_int4_matmuls, rewrite_int4_linears

        rewrite_int8_linears(graph)
        rewrite_int4_linears(graph)
        guard_aten_int4_matmuls(graph)


class PrepackPass(_PackagePass):
    """Prepacking makes new constants; a cached graph would carry a copy of every packed weight into Inductor's
    cache directory (measured: ~9 s of pickling and writing for 1 GiB of weights). ``uuid() -> None`` makes Inductor
    bypass its FX-graph cache for the graphs this pass is installed on (frozen graphs); kernels stay cached."""

    stage = "prepack"

    def run(self, graph: Graph) -> None:
        from .prepack import prepack_weights

        prepack_weights(graph)

    def uuid(self) -> None:
        return None


def package_source_hash(root: Path | None = None) -> bytes:
    """Hash of every file of the package (its ``.py`` code, the ``.cpp`` and ``.jinja`` templates and kernels) plus
    its version: a changed pass or template never hits the cache."""
    root = root or Path(inductor_quant.__file__).parent
    digest = hashlib.sha256(inductor_quant.__version__.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.digest()


def rewrite_pass() -> QuantRewritePass:
    return QuantRewritePass()


def prepack_pass() -> PrepackPass:
    return PrepackPass()
