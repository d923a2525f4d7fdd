"""Lowering of ``inductor_quant::ternary_mm`` (BitLinear's matmul): offer the kernels, autotune, pick.

Decode (static M <= ``MAX_M`` on CPU): autotuned between
  * ``unpack_int_mm``: the op's eager implementation (the 2-bit weight unpacked to int8 a chunk of rows at a time,
    ``torch._int_mm``, then the scales);
  * ``ternary_gemv``: the CPP template of ``templates/cpp/ternary_gemv.cpp``, which streams the packed weight once
    and sums with AVX512-VNNI; scales and bias fused.
Prefill (M > ``MAX_M``, or M dynamic): ``unpack_int_mm``.
GPU (wherever Inductor takes Triton templates), any M: ``unpack_int_mm`` and the Triton template of
``templates/triton/ternary_mm.py.jinja`` (int8 dots on the 2-bit planes, scales and bias in its epilogue).
The activation quantization in front (``primitives.quantize_activation_int8``) is plain torch ops: Inductor makes
one kernel of it, feeding the template its int8 rows and scales.
"""

from __future__ import annotations

import torch

from .._compat import inductor_internals
from ..ops import ternary_mm
from ..settings import TERNARY_KERNEL_ENV, forced_ternary_kernel
from ..templates.cpp.ternary_gemv import MAX_M, CppTernaryGemvTemplate
from ..templates.triton.common import triton_applies
from ..templates.triton.ternary_mm import add_ternary_mm_choices
from .common import gemv_applies, is_static_decode, kernel_inputs, select

_I = inductor_internals()
L = _I.lowering

unpack_int_mm_choice = _I.ExternKernelChoice(
    ternary_mm, name="inductor_quant_ternary_unpack_int_mm", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.ternary_mm.default, type_promotion_kind=None)
def ternary_mm_lowering(x, x_scale, qweight, weight_scale, bias=None, out_dtype=None, *, layout=None):
    out_dtype = out_dtype or torch.float32
    inputs = kernel_inputs(x, x_scale, qweight, weight_scale, bias)
    x = inputs[0]
    m, k = x.get_size()
    n = qweight.get_size()[0]
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, n])
    forced = forced_ternary_kernel()
    choices = {"unpack_int_mm": unpack_int_mm_choice.bind(inputs, layout, out_dtype=out_dtype)}
    if triton_applies(layout):
        add_ternary_mm_choices(choices, *inputs[:3], weight_scale, bias, layout)
    elif forced != "unpack_int_mm" and is_static_decode(x, MAX_M) and gemv_applies(x, qweight, MAX_M, 1):
        choices["ternary_gemv"] = CppTernaryGemvTemplate.choice(
            layout, inputs, has_bias=bias is not None, n=int(n)
        )
    return select(
        "inductor_quant_ternary_mm",
        choices,
        inputs,
        layout,
        forced,
        key=(m, n, k, *(t.get_dtype() for t in inputs), tuple(weight_scale.get_size()), out_dtype),
        scheme="ternary",
        env=TERNARY_KERNEL_ENV,
    )
