"""Lowerings of the two kernel ops that only ``quantized_matmul`` emits (its other cells reuse the int8 / int4 ops).

* ``int8_blockwise_linear`` (W8A16 blockwise): ``dequant_mm`` (``ops.int8_blockwise_dequant_mm``): rows of W
  widened with their block scales ~2 MiB at a time, each chunk multiplied by the dense GEMM while hot in cache.
* ``int8_dynamic_linear`` (W8A8 / W4A8): ``int_mm`` (``ops.int8_dynamic_int_mm``): ``torch._int_mm``, oneDNN's
  VNNI / AMX-int8 GEMM with exact int32 sums, then the scales (and bias) in fp32. The per-token activation
  quantization in front is plain torch ops, which Inductor fuses into one kernel feeding this one.
Each is one extern choice today; going through ``select`` gives them the package's counters and log lines.
"""

from __future__ import annotations

import torch

from .._compat import inductor_internals
from ..ops import int8_blockwise_dequant_mm, int8_dynamic_int_mm
from .common import kernel_inputs, select

_I = inductor_internals()
L = _I.lowering

blockwise_dequant_mm_choice = _I.ExternKernelChoice(
    int8_blockwise_dequant_mm, name="inductor_quant_int8_blockwise_dequant_mm", has_out_variant=False
)
dynamic_int_mm_choice = _I.ExternKernelChoice(
    int8_dynamic_int_mm, name="inductor_quant_int8_dynamic_int_mm", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.int8_blockwise_linear.default, type_promotion_kind=None)
def int8_blockwise_linear_lowering(x, qweight, scale, bias=None, out_dtype=None, *, layout=None):
    out_dtype = out_dtype or x.get_dtype()
    inputs = kernel_inputs(x, qweight, scale, bias)
    m, k = inputs[0].get_size()
    n = qweight.get_size()[0]
    layout = _I.ir.FixedLayout(inputs[0].get_device(), out_dtype, [m, n])
    return select(
        "inductor_quant_int8_blockwise_linear",
        {"dequant_mm": blockwise_dequant_mm_choice.bind(inputs, layout, out_dtype=out_dtype)},
        inputs,
        layout,
        None,
        key=(m, n, k, *(t.get_dtype() for t in inputs), tuple(scale.get_size()), out_dtype),
        scheme="int8_blockwise",
    )


@L.register_lowering(torch.ops.inductor_quant.int8_dynamic_linear.default, type_promotion_kind=None)
def int8_dynamic_linear_lowering(x, x_scale, qweight, scale, bias=None, out_dtype=None, *, layout=None):
    out_dtype = out_dtype or torch.float32
    inputs = kernel_inputs(x, x_scale, qweight, scale, bias)
    m, k = inputs[0].get_size()
    n = qweight.get_size()[0]
    layout = _I.ir.FixedLayout(inputs[0].get_device(), out_dtype, [m, n])
    return select(
        "inductor_quant_int8_dynamic_linear",
        {"int_mm": dynamic_int_mm_choice.bind(inputs, layout, out_dtype=out_dtype)},
        inputs,
        layout,
        None,
        key=(m, n, k, *(t.get_dtype() for t in inputs), tuple(scale.get_size()), out_dtype),
        scheme="int8_dynamic",
    )
