"""Compile-time weight prepacking (stage 3b of the pipeline): frozen int8 weights of decode-shaped linears are
repacked into the blocked layout the GEMV kernel streams fastest.

Runs as Inductor's ``post_grad_custom_post_pass``, after freezing has turned parameters into ``get_attr``
constants. Only graphs whose activation rows M are static and at most ``MAX_M`` are packed: larger M is prefill,
served by kernels that read the plain ``[N, K]`` weight. A packed weight is a new tensor held by the compiled
graph next to the module's own int8 weight (``options={"inductor_quant.prepack": False}`` turns this off).
"""

from __future__ import annotations

import logging

import torch
from torch._dynamo.utils import counters
from torch.fx import Graph, Node

from ..primitives import PACK_K_STEP, pack_int8_blocked
from ..settings import INT8_KERNEL_ENV, forced_int8_kernel
from ..templates.cpp.int8_gemv import MAX_M

log = logging.getLogger(__name__)


def _static_rows(x: Node) -> int | None:
    v = x.meta.get("val")
    if v is None or not isinstance(v.shape[0], int):
        return None
    return v.shape[0]


def prepack_int8_weights(graph: Graph) -> int:
    """Replace ``int8_weight_linear`` on a constant weight by ``int8_weight_linear_packed``; returns the count."""
    forced = forced_int8_kernel()
    if forced not in (None, "int8_gemv"):
        log.debug(
            "not prepacking: %s=%s forces a kernel that reads the plain weight", INT8_KERNEL_ENV, forced
        )
        return 0
    gm = graph.owning_module
    packed_attrs: dict[str, str] = {}  # a weight used by several linears is packed once
    count = 0
    for node in list(graph.nodes):
        if node.target is not torch.ops.inductor_quant.int8_weight_linear.default:
            continue
        x, w, scale, bias = (list(node.args) + [None])[:4]
        bias = node.kwargs.get("bias", bias)
        out_dtype = node.kwargs.get("out_dtype")
        m = _static_rows(x)
        if w.op != "get_attr":
            log.debug(
                "not prepacked: %s: weight %s is a graph input, not a frozen constant", node.name, w.name
            )
            continue
        weight = getattr(gm, w.target)
        if weight.device.type != "cpu":
            log.debug(
                "not prepacked: %s: weight on %s (the GEMV template is CPU only)", node.name, weight.device
            )
            continue
        n, k = weight.shape
        if m is None or m > MAX_M or k % PACK_K_STEP:
            log.debug(
                "not prepacked: %s: M=%s (decode needs static M <= %d), K=%d (needs K %% %d == 0)",
                node.name,
                m,
                MAX_M,
                k,
                PACK_K_STEP,
            )
            continue
        if w.target not in packed_attrs:
            name = f"{w.target}_iq_packed"
            gm.register_buffer(name, pack_int8_blocked(getattr(gm, w.target)))
            packed_attrs[w.target] = name
            counters["inductor_quant"]["int8_prepacked_bytes"] += getattr(gm, name).numel()
        with graph.inserting_before(node):
            packed = graph.get_attr(packed_attrs[w.target])
            packed.meta["val"] = torch.empty(
                getattr(gm, packed_attrs[w.target]).shape, dtype=torch.int8, device="meta"
            )
            new = graph.call_function(
                torch.ops.inductor_quant.int8_weight_linear_packed.default,
                (x, packed, scale, bias, out_dtype, n),
            )
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
        counters["inductor_quant"]["int8_prepacked"] += 1
        log.info(
            "prepacked %s: int8 weight %s [%d, %d] -> blocked decode layout (M=%d)",
            new.name,
            w.target,
            n,
            k,
            m,
        )
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users and node.target in packed_attrs:
            graph.erase_node(node)
    return count
