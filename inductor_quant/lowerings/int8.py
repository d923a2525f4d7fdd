"""Lowering of ``inductor_quant::int8_weight_linear`` (stage 5 of the pipeline): offer the kernels, autotune, pick.

Choices, aten fallback first:
  * ``aten``: the op's eager implementation (``_weight_int8pack_mm`` + bias);
  * ``dequant_mm``: widen the int8 weight to the activation dtype (exact) and run the dense GEMM, then scale:
    the prefill choice, since the dense GEMM is the fastest large-M kernel on the machine;
  * ``int8_gemv`` CPP template (``templates/cpp/int8_gemv.cpp``): the decode choice, streams W once;
  * Inductor's ``CppGemmTemplate`` with the scale (and bias) as its epilogue, when W is a constant (freezing) and
    the activations are bf16.
Identical problems (same M, N, K, dtypes, bias) are tuned once per process: the winner is remembered.
"""

from __future__ import annotations

import logging

import torch
from torch._dynamo.utils import counters

from .._compat import inductor_internals
from ..ops import int8_weight_linear
from ..settings import forced_int8_kernel
from ..templates.cpp.int8_gemv import K_STEP, MAX_M, CppInt8GemvTemplate

log = logging.getLogger(__name__)
_I = inductor_internals()
L = _I.lowering


def _aten_int8_linear(x, qweight, scale, bias=None, *, out_dtype=None):
    return int8_weight_linear(x, qweight, scale, bias, out_dtype)


def _dequant_mm(x, qweight, scale, bias=None, *, out_dtype=None):
    out = torch.mm(x, qweight.to(x.dtype).t()).float().mul_(scale.float())
    if bias is not None:
        out.add_(bias.float())
    return out.to(out_dtype or x.dtype)


aten_choice = _I.ExternKernelChoice(_aten_int8_linear, name="inductor_quant_int8_linear_aten", has_out_variant=False)
dequant_mm_choice = _I.ExternKernelChoice(_dequant_mm, name="inductor_quant_int8_dequant_mm", has_out_variant=False)

# (M, N, K, x dtype, scale dtype, bias dtype, out dtype, weight is constant) -> name of the winning choice
_tuned: dict[tuple, str] = {}


def reset_tuning_cache() -> None:
    _tuned.clear()


def _problem_key(x, w, scale, bias, out_dtype) -> tuple:
    sizes = tuple(int(s) for s in (*x.get_size(), w.get_size()[0]))
    return (*sizes, x.get_dtype(), scale.get_dtype(), bias.get_dtype() if bias is not None else None, out_dtype,
            _is_constant(w))


def _is_constant(node) -> bool:
    return node.get_name() in _I.V.graph.constants


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear.default, type_promotion_kind=None)
def int8_weight_linear_lowering(x, qweight, scale, bias=None, *, out_dtype=None, layout=None):
    out_dtype = out_dtype or x.get_dtype()
    m, n, k, layout, mat1, mat2 = _I.mm_args(x, qweight, layout=layout, out_dtype=out_dtype, mat2_transposed=True)
    if mat2.get_dtype() != torch.int8:
        raise TypeError(f"int8_weight_linear: qweight must be int8, got {mat2.get_dtype()} (x is {mat1.get_dtype()})")
    mat1 = _I.ir.ExternKernel.require_contiguous(mat1)
    mat2 = _I.ir.ExternKernel.require_contiguous(mat2)
    scale = _I.realize_inputs(scale)
    inputs = [mat1, mat2, scale] + ([_I.realize_inputs(bias)] if bias is not None else [])
    choices = _choices(inputs, layout, out_dtype, has_bias=bias is not None, scale_tb=scale, bias_tb=bias)

    forced = forced_int8_kernel()
    if forced is not None:
        if forced not in [name for name, _ in choices]:
            raise ValueError(f"INDUCTOR_QUANT_INT8_KERNEL={forced!r} is not offered for this problem; offered: "
                             f"{[name for name, _ in choices]}")
        choices = [(name, c) for name, c in choices if name == forced]
    key = _problem_key(mat1, mat2, scale, bias, out_dtype)
    if key in _tuned:
        remembered = [c for name, c in choices if name == _tuned[key]]
        if remembered:
            log.info("int8_weight_linear M=%s N=%s K=%s: reusing tuned choice %s", m, n, k, _tuned[key])
            choices = [(name, c) for name, c in choices if name == _tuned[key]]
    counters["inductor_quant"]["int8_lowered"] += 1
    names = [name for name, _ in choices]
    out, winner = _I.autotune_select_algorithm(
        "inductor_quant_int8_weight_linear", [c for _, c in choices], inputs, layout
    )
    chosen = names[[c for _, c in choices].index(winner)] if winner in [c for _, c in choices] else names[0]
    _tuned[key] = chosen
    counters["inductor_quant"][f"int8_kernel_{chosen}"] += 1
    log.info("int8_weight_linear M=%s N=%s K=%s x=%s: offered %s, chose %s", m, n, k, mat1.get_dtype(), names, chosen)
    return out


def _choices(inputs, layout, out_dtype, *, has_bias, scale_tb, bias_tb) -> list[tuple[str, object]]:
    mat1, mat2 = inputs[0], inputs[1]
    kwargs = {"out_dtype": out_dtype}
    choices = [
        ("aten", aten_choice.bind(inputs, layout, **kwargs)),
        ("dequant_mm", dequant_mm_choice.bind(inputs, layout, **kwargs)),
    ]
    if _gemv_applies(mat1, mat2):
        gemv: list = []
        n = int(mat2.get_size()[0])
        CppInt8GemvTemplate.add_choice(gemv, layout, inputs, has_bias=has_bias, packed=False, n=n)
        choices += [("int8_gemv", c) for c in gemv]
    return choices


def _gemv_applies(mat1, mat2) -> bool:
    """The GEMV template needs static shapes, M <= MAX_M and K a multiple of its K step."""
    sizes = (*mat1.get_size(), *mat2.get_size())
    if not all(isinstance(s, int) or s.is_number for s in sizes):
        return False
    m, k = (int(s) for s in mat1.get_size())
    return m <= MAX_M and k % K_STEP == 0


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear_packed.default, type_promotion_kind=None)
def int8_weight_linear_packed_lowering(x, packed_weight, scale, bias, out_dtype, out_features, *, layout=None):
    """The prepack pass only packs decode-shaped problems, so the GEMV template is the one choice."""
    out_dtype = out_dtype or x.get_dtype()
    x = _I.ir.ExternKernel.require_contiguous(_I.realize_inputs(x))
    m, k = (int(s) for s in x.get_size())
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, out_features])
    inputs = [x, _I.realize_inputs(packed_weight), _I.realize_inputs(scale)]
    if bias is not None:
        inputs.append(_I.realize_inputs(bias))
    choices: list = []
    CppInt8GemvTemplate.add_choice(choices, layout, inputs, has_bias=bias is not None, packed=True, n=out_features)
    counters["inductor_quant"]["int8_lowered"] += 1
    counters["inductor_quant"]["int8_kernel_int8_gemv_packed"] += 1
    log.info("int8_weight_linear_packed M=%s N=%s K=%s x=%s: prepacked weight, kernel int8_gemv", m, out_features, k,
             x.get_dtype())
    out, _ = _I.autotune_select_algorithm("inductor_quant_int8_weight_linear_packed", choices, inputs, layout)
    return out
