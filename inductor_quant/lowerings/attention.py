"""Lowering of ``inductor_quant.decode_attention``: the CPP template ``templates/cpp/decode_attention.cpp`` where
the C++ backend runs it (CPU, static sizes), else the op's eager math as an extern call (logged)."""

from __future__ import annotations

import logging

import torch

from .._compat import inductor_internals
from ..templates.cpp.decode_attention import CppDecodeAttentionTemplate
from ..templates.cpp.gemv import cpp_templates_apply
from .common import all_static, kernel_inputs, select

_I = inductor_internals()
L = _I.lowering
log = logging.getLogger(__name__)


@L.register_lowering(torch.ops.inductor_quant.decode_attention.default, type_promotion_kind=None)
def decode_attention_lowering(query, key, value, attn_mask, is_causal, scale, *, layout=None):
    sizes = [s for t in (query, key, value, attn_mask) if t is not None for s in t.get_size()]
    why = None
    if not cpp_templates_apply(query.get_device()):
        why = f"no C++ backend for {query.get_device()}"
    elif not all_static(*sizes):
        why = "symbolic sizes"
    if why:
        log.info("decode_attention: the eager op (%s)", why)
        return L.fallback_handler(
            torch.ops.inductor_quant.decode_attention.default, add_to_fallback_set=False
        )(query, key, value, attn_mask, is_causal, scale)
    inputs = kernel_inputs(query, key, value, attn_mask)
    q, _, v = inputs[:3]
    b, heads, rows, _ = (int(s) for s in q.get_size())
    layout = _I.ir.FixedLayout(q.get_device(), q.get_dtype(), [b, heads, rows, int(v.get_size()[3])])
    template = CppDecodeAttentionTemplate.choice(layout, inputs, is_causal=is_causal, scale=scale)
    return select(
        "inductor_quant_decode_attention",
        {"decode_attention": template},
        inputs,
        layout,
        None,
        key=(rows, b, heads, *(int(s) for s in inputs[1].get_size()[1:]), *(t.get_dtype() for t in inputs)),
        scheme="attention",
    )
