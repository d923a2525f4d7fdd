"""Lowerings of ``inductor_quant::int8_weight_linear`` (a plain ``[N, K]`` weight: below) and
``int8_weight_linear_packed`` (the blocked layout a CPU ``Int8WeightTensor`` is held in: its GEMV template for
decode, the widening GEMM on that layout for prefill) (stage 5 of the pipeline): offer the kernels, autotune, pick.

CPU (Inductor's C++ backend), decode (static M <= ``MAX_M``): autotuned among, aten fallback first,
  * ``aten``: the op's eager implementation (``_weight_int8pack_mm`` + bias);
  * ``int8_gemv``: the CPP template of ``templates/cpp/int8_gemv.cpp`` on the row-major weight, scale and bias
    fused (frozen weights of decode graphs are prepacked before this and take its packed variant).
  Identical problems (same M, N, K, dtypes, bias) are tuned once per process: the winner is remembered.
CPU prefill (M > ``MAX_M``, or M dynamic): ``dequant_mm`` (``ops.int8_dequant_mm``): a native GEMM that widens the
  weight slice by slice inside (``kernels/widening_gemm.cpp``: bf16 dot products for bf16 activations, fp32 FMAs
  for fp32 / fp16); for K % 32 != 0 the weight is widened to the activation dtype one chunk of rows at a time
  (exact for int8), each chunk multiplied by the dense GEMM and scaled while it is hot in cache. The float weight is
  never whole, never stored. aten's kernel is not offered there: it is a GEMV-style loop, 2.6x slower than the
  GEMM at M = 512 in bf16 and ~80x in fp32 / fp16 on this class of machine.
GPU (wherever Inductor takes Triton templates), any M: ``aten``, ``dequant_mm`` and the Triton template of
  ``templates/triton/int8_mm.py.jinja`` in its decode or prefill block configs (named
  ``triton_<BM>x<BN>x<BK>_w<warps>_s<stages>``), scale and bias in its epilogue, pointwise consumers fused.
"""

from __future__ import annotations

import logging

import torch

from .._compat import inductor_internals
from ..ops import int8_dequant_mm, int8_weight_linear, int8_weight_linear_packed
from ..primitives import unpack_int8_blocked
from ..settings import INT8_KERNEL_ENV, forced_int8_kernel
from ..templates.cpp.int8_gemv import K_STEP, MAX_M, CppInt8GemvTemplate
from ..templates.triton.common import triton_applies
from ..templates.triton.int8_mm import add_int8_mm_choices
from .common import gemv_applies, is_static_decode, kernel_inputs, note_cpu_gemm, select

_I = inductor_internals()
L = _I.lowering
log = logging.getLogger(__name__)


def _aten_int8_linear(x, qweight, scale, bias=None, *, out_dtype=None):
    return int8_weight_linear(x, qweight, scale, bias, out_dtype)


aten_choice = _I.ExternKernelChoice(
    _aten_int8_linear, name="inductor_quant_int8_linear_aten", has_out_variant=False
)
dequant_mm_choice = _I.ExternKernelChoice(
    int8_dequant_mm, name="inductor_quant_int8_dequant_mm", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear.default, type_promotion_kind=None)
def int8_weight_linear_lowering(x, qweight, scale, bias=None, out_dtype=None, *, layout=None):
    out_dtype = out_dtype or x.get_dtype()
    m, n, k, layout, mat1, mat2 = _I.mm_args(
        x, qweight, layout=layout, out_dtype=out_dtype, mat2_transposed=True
    )
    if mat2.get_dtype() != torch.int8:
        raise TypeError(
            f"int8_weight_linear: qweight must be int8, got {mat2.get_dtype()} (x is {mat1.get_dtype()})"
        )
    forced = forced_int8_kernel()
    inputs = kernel_inputs(mat1, mat2, scale, bias)
    mat1, mat2 = inputs[:2]
    key = (m, n, k, *(t.get_dtype() for t in inputs), out_dtype)
    if triton_applies(layout):
        # GPU: aten's kernel, the dequantize + dense GEMM path and the Triton template, for every M
        choices = {
            "aten": aten_choice.bind(inputs, layout, out_dtype=out_dtype),
            "dequant_mm": dequant_mm_choice.bind(inputs, layout, out_dtype=out_dtype),
        }
        add_int8_mm_choices(choices, mat1, mat2, scale, bias, layout)
    elif forced == "dequant_mm" or (forced is None and not is_static_decode(mat1, MAX_M)):
        note_cpu_gemm("int8", mat1)
        choices = {"dequant_mm": dequant_mm_choice.bind(inputs, layout, out_dtype=out_dtype)}
    else:
        choices = {"aten": aten_choice.bind(inputs, layout, out_dtype=out_dtype)}
        if gemv_applies(mat1, mat2, MAX_M, K_STEP):
            choices["int8_gemv"] = CppInt8GemvTemplate.choice(
                layout, inputs, has_bias=bias is not None, packed=False, n=int(n)
            )
    return select(
        "inductor_quant_int8_weight_linear",
        choices,
        inputs,
        layout,
        forced,
        key,
        scheme="int8",
        env=INT8_KERNEL_ENV,
    )


def _packed_gemm(x, packed_weight, scale, bias=None, *, out_dtype=None, out_features):
    return int8_weight_linear_packed(x, packed_weight, scale, bias, out_dtype, out_features)


def _packed_aten(x, packed_weight, scale, bias=None, *, out_dtype=None, out_features):
    qweight = unpack_int8_blocked(packed_weight, out_features, x.shape[1])
    return int8_weight_linear(x, qweight, scale, bias, out_dtype)


packed_gemm_choice = _I.ExternKernelChoice(
    _packed_gemm, name="inductor_quant_int8_packed_gemm", has_out_variant=False
)
packed_aten_choice = _I.ExternKernelChoice(
    _packed_aten, name="inductor_quant_int8_packed_aten", has_out_variant=False
)


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear_packed.default, type_promotion_kind=None)
def int8_weight_linear_packed_lowering(
    x, packed_weight, scale, bias, out_dtype, out_features, *, layout=None
):
    """The weight in the blocked layout (an ``Int8WeightTensor`` held so, or a constant the prepack pass packed):
    decode (static M <= ``MAX_M``, C++ backend) takes the GEMV template, anything else (prefill, a dynamic M) the
    widening GEMM reading the blocked layout (the eager op's kernel). ``INT8_KERNEL`` may force ``int8_gemv``,
    ``dequant_mm`` (that GEMM) or ``aten`` (unpack, then aten's kernel: a reference, not a fast path)."""
    out_dtype = out_dtype or x.get_dtype()
    inputs = kernel_inputs(x, packed_weight, scale, bias)
    x = inputs[0]
    m, k = x.get_size()
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, out_features])
    offered = {
        "dequant_mm": lambda: packed_gemm_choice.bind(
            inputs, layout, out_dtype=out_dtype, out_features=out_features
        ),
        "aten": lambda: packed_aten_choice.bind(
            inputs, layout, out_dtype=out_dtype, out_features=out_features
        ),
    }
    decode = gemv_applies(x, inputs[1], MAX_M, K_STEP)
    if decode:
        offered["int8_gemv"] = lambda: CppInt8GemvTemplate.choice(
            layout, inputs, has_bias=bias is not None, packed=True, n=out_features
        )
    forced = forced_int8_kernel()
    name = forced if forced in offered else "int8_gemv" if decode else "dequant_mm"
    if forced is not None and forced != name:
        log.info(
            "%s=%s is not offered for a blocked int8 weight at M=%s; using %s",
            INT8_KERNEL_ENV,
            forced,
            m,
            name,
        )
    if name == "dequant_mm":
        note_cpu_gemm("int8", x)
    return select(
        "inductor_quant_int8_weight_linear_packed",
        {f"{name}_packed": offered[name]()},
        inputs,
        layout,
        None,
        key=(m, out_features, k, *(t.get_dtype() for t in inputs), out_dtype),
        scheme="int8",
    )
