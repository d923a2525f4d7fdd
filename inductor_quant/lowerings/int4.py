"""Lowering of ``inductor_quant::int4_weight_linear`` and its prepacked variant: offer the kernels, autotune, pick.

CPU (Inductor's C++ backend), decode (static M <= ``MAX_M``, K % 64 == 0): autotuned among
  * ``dequant_mm``: the op's eager implementation (below);
  * ``int4_gemv``: the CPP template of ``templates/cpp/int4_gemv.cpp`` on the plain ``[N, K / 2]`` nibbles, with
    the scale, zero-point and bias epilogue fused (frozen weights of decode graphs are prepacked before this and
    take its packed variant, the one choice there).
  Identical problems are tuned once per process.
Prefill (M > ``MAX_M``, or M dynamic) and shapes the template does not take: ``dequant_mm``
  (``ops.int4_dequant_mm``): a native GEMM that widens the weight slice by slice inside, rounded to the activation
  dtype (``kernels/widening_gemm.cpp``); for K % 32 != 0 rows of W widened by a native kernel one chunk at a time,
  each chunk multiplied by the dense GEMM while it is hot in cache. The float weight is never whole.
GPU (wherever Inductor takes Triton templates), any M: ``dequant_mm`` and the Triton template of
  ``templates/triton/int4_mm.py.jinja`` (group scales and zero points in its K loop, bias in its epilogue) in its
  decode or prefill block configs, K steps cut to the group.
W4A8 (``int4_a8_mm``, int8 activations quantized per token by an Inductor kernel in front): frozen decode weights
are prepacked into the lane layout of the ``int4_a8_gemv`` template (its packed op's one choice); graph-input
weights autotune ``int4_gemv`` in its int8 mode (AVX512-VNNI sums) against ``dequant_mm`` (the op's eager path);
prefill and GPUs take the eager path (no Triton template for it yet).
aten's ``_weight_int4pack_mm_for_cpu`` is not offered for this op: it needs its own packing of the weight
(N % 16 == 0, a different nibble order), which a graph-input weight would pay for on every call.
"""

from __future__ import annotations

import logging

import torch

from .._compat import inductor_internals
from ..ops import int4_a8_dequant_mm, int4_dequant_mm, int4_weight_linear_packed
from ..settings import INT4_KERNEL_ENV, forced_int4_kernel
from ..templates.cpp.gemv import cpp_templates_apply
from ..templates.cpp.int4_a8_gemv import CppInt4A8GemvTemplate
from ..templates.cpp.int4_gemv import K_STEP, MAX_M, CppInt4GemvTemplate, CppInt4RowMajorA8Template
from ..templates.triton.common import triton_applies
from ..templates.triton.int4_mm import add_int4_mm_choices
from .common import gemv_applies, is_static_decode, kernel_inputs, note_cpu_gemm, select

_I = inductor_internals()
L = _I.lowering
log = logging.getLogger(__name__)


def _int4_dequant_mm(x, qdata, scale, zero_point, bias=None, *, group_size, out_dtype=None):
    # tensors first, as extern kernels are called: (inputs..., **kwargs)
    return int4_dequant_mm(x, qdata, scale, zero_point, group_size, bias, out_dtype=out_dtype)


dequant_mm_choice = _I.ExternKernelChoice(
    _int4_dequant_mm, name="inductor_quant_int4_dequant_mm", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.int4_weight_linear.default, type_promotion_kind=None)
def int4_weight_linear_lowering(
    x, qdata, scale, zero_point, group_size, bias=None, out_dtype=None, *, layout=None
):
    out_dtype = out_dtype or x.get_dtype()
    inputs = kernel_inputs(x, qdata, scale, zero_point, bias)
    x, qdata, *weights = inputs[:4]
    m, k = x.get_size()
    n = qdata.get_size()[0]
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, n])
    key = (m, n, k, *(t.get_dtype() for t in inputs), group_size, out_dtype)
    forced = forced_int4_kernel()
    choices = {
        "dequant_mm": dequant_mm_choice.bind(inputs, layout, group_size=group_size, out_dtype=out_dtype)
    }
    if triton_applies(layout):
        # its K loop subtracts zero points as int16: uint8 ones, and the integer-valued fp32 ones quantized_matmul's
        # cells make; not the fractional fp16 / bf16 ones of Int4WeightOnlyConfig(zero_point_dtype=...)
        if weights[1].get_dtype() in (torch.uint8, torch.float32):
            add_int4_mm_choices(choices, x, qdata, *weights, group_size, bias, layout)
        else:
            log.debug("int4 Triton template not offered: fractional %s zero points", weights[1].get_dtype())
    elif forced != "dequant_mm" and gemv_applies(x, qdata, MAX_M, K_STEP):
        choices["int4_gemv"] = CppInt4GemvTemplate.choice(
            layout,
            inputs,
            has_bias=bias is not None,
            packed=False,
            n=int(n),
            group_size=group_size,
            zero_is_offset=False,
        )
    return select(
        "inductor_quant_int4_weight_linear",
        choices,
        inputs,
        layout,
        forced,
        key,
        scheme="int4",
        env=INT4_KERNEL_ENV,
    )


@L.register_lowering(torch.ops.inductor_quant.int4_weight_linear_packed.default, type_promotion_kind=None)
def int4_weight_linear_packed_lowering(
    x,
    packed_weight,
    scale,
    zero,
    group_size,
    bias,
    out_dtype,
    out_features,
    zero_is_offset=False,
    *,
    layout=None,
):
    """The nibbles in the blocked layout (an ``Int4WeightTensor`` held so, or a constant the prepack pass packed):
    decode (static M <= ``MAX_M``, C++ backend) takes the GEMV template; anything else (prefill, a dynamic M) the
    op's eager kernel (the widening GEMM on the blocked layout, ``ops.int4_weight_linear_packed``).
    ``INT4_KERNEL=dequant_mm`` forces the latter."""
    out_dtype = out_dtype or x.get_dtype()
    inputs = kernel_inputs(x, packed_weight, scale, zero, bias)
    m, k = inputs[0].get_size()
    layout = _I.ir.FixedLayout(inputs[0].get_device(), out_dtype, [m, out_features])
    key = (m, out_features, k, *(t.get_dtype() for t in inputs), group_size, zero_is_offset, out_dtype)
    # (any K: a packed constant's K is zero-padded to the template's step, the groups of its scales tell it)
    decode = is_static_decode(inputs[0], MAX_M) and cpp_templates_apply(inputs[0].get_device())
    forced = forced_int4_kernel()
    if forced not in (None, "dequant_mm", "int4_gemv" if decode else None):
        log.info("%s=%s is not offered for a blocked int4 weight at M=%s", INT4_KERNEL_ENV, forced, m)
    if forced != "dequant_mm" and decode:
        name, choice = (
            "int4_gemv_packed",
            CppInt4GemvTemplate.choice(
                layout,
                inputs,
                has_bias=bias is not None,
                packed=True,
                n=out_features,
                group_size=group_size,
                zero_is_offset=zero_is_offset,
            ),
        )
    else:
        note_cpu_gemm("int4", inputs[0])
        name, choice = (
            "dequant_mm_packed",
            packed_gemm_choice.bind(
                inputs,
                layout,
                group_size=group_size,
                out_dtype=out_dtype,
                out_features=out_features,
                zero_is_offset=zero_is_offset,
            ),
        )
    return select(
        "inductor_quant_int4_weight_linear_packed", {name: choice}, inputs, layout, None, key, scheme="int4"
    )


def _packed_gemm(
    x, packed_weight, scale, zero, bias=None, *, group_size, out_dtype=None, out_features, zero_is_offset
):
    return int4_weight_linear_packed(
        x, packed_weight, scale, zero, group_size, bias, out_dtype, out_features, zero_is_offset
    )


packed_gemm_choice = _I.ExternKernelChoice(
    _packed_gemm, name="inductor_quant_int4_packed_gemm", has_out_variant=False
)


def _int4_a8_dequant_mm(x, x_scale, qdata, scale, zero_point, bias=None, *, group_size, out_dtype=None):
    return int4_a8_dequant_mm(x, x_scale, qdata, scale, zero_point, group_size, bias, out_dtype=out_dtype)


a8_dequant_mm_choice = _I.ExternKernelChoice(
    _int4_a8_dequant_mm, name="inductor_quant_int4_a8_dequant_mm", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.int4_a8_mm.default, type_promotion_kind=None)
def int4_a8_mm_lowering(
    x, x_scale, qdata, scale, zero_point, group_size, bias=None, out_dtype=None, *, layout=None
):
    out_dtype = out_dtype or torch.float32
    inputs = kernel_inputs(x, x_scale, qdata, scale, zero_point, bias)
    x, qdata = inputs[0], inputs[2]
    m, k = x.get_size()
    n = qdata.get_size()[0]
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, n])
    forced = forced_int4_kernel()
    choices = {
        "dequant_mm": a8_dequant_mm_choice.bind(inputs, layout, group_size=group_size, out_dtype=out_dtype)
    }
    if forced != "dequant_mm" and gemv_applies(x, qdata, MAX_M, K_STEP):
        choices["int4_gemv"] = CppInt4RowMajorA8Template.choice(
            layout, inputs, has_bias=bias is not None, n=int(n), group_size=group_size
        )
    return select(
        "inductor_quant_int4_a8_mm",
        choices,
        inputs,
        layout,
        forced,
        key=(m, n, k, *(t.get_dtype() for t in inputs), group_size, out_dtype),
        scheme="int4_a8",
        env=INT4_KERNEL_ENV,
    )


@L.register_lowering(torch.ops.inductor_quant.int4_a8_mm_packed.default, type_promotion_kind=None)
def int4_a8_mm_packed_lowering(
    x, x_scale, packed_weight, scale, zero_point, group_size, bias, out_dtype, out_features, *, layout=None
):
    """Made by the prepack pass for decode-shaped problems only: the lane-layout template is the one choice."""
    out_dtype = out_dtype or torch.float32
    inputs = kernel_inputs(x, x_scale, packed_weight, scale, zero_point, bias)
    m, k = (int(s) for s in inputs[0].get_size())
    layout = _I.ir.FixedLayout(inputs[0].get_device(), out_dtype, [m, out_features])
    gemv = CppInt4A8GemvTemplate.choice(
        layout, inputs, has_bias=bias is not None, n=out_features, group_size=group_size
    )
    return select(
        "inductor_quant_int4_a8_mm_packed",
        {"int4_a8_gemv": gemv},
        inputs,
        layout,
        None,
        key=(m, out_features, k, *(t.get_dtype() for t in inputs), group_size, out_dtype),
        scheme="int4_a8",
    )
