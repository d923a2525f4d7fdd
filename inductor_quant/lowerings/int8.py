"""Lowering of ``inductor_quant::int8_weight_linear`` (stage 5 of the pipeline): offer the kernels, autotune, pick.

Decode (static M <= ``MAX_M``): autotuned among, aten fallback first,
  * ``aten``: the op's eager implementation (``_weight_int8pack_mm`` + bias);
  * ``int8_gemv``: the CPP template of ``templates/cpp/int8_gemv.cpp`` on the row-major weight, scale and bias
    fused (frozen weights of decode graphs are prepacked before this and take its packed variant).
  Identical problems (same M, N, K, dtypes, bias) are tuned once per process: the winner is remembered.
Prefill (M > ``MAX_M``, or M dynamic): ``dequant_mm`` (``ops.int8_dequant_mm``): the weight is widened to the
  activation dtype one chunk of rows at a time (exact for int8), each chunk multiplied by the dense GEMM and scaled
  while it is hot in cache. The float weight is never whole, never stored. aten's kernel is not offered there: it is
  a GEMV-style loop, ~4x slower than the dense GEMM at M >= 256 on this class of machine (benchmarks/).
"""

from __future__ import annotations

import logging

import torch
from torch._dynamo.utils import counters

from .._compat import inductor_internals
from ..ops import int8_dequant_mm, int8_weight_linear
from ..settings import forced_int8_kernel
from ..templates.cpp.int8_gemv import K_STEP, MAX_M, CppInt8GemvTemplate

log = logging.getLogger(__name__)
_I = inductor_internals()
L = _I.lowering


def _aten_int8_linear(x, qweight, scale, bias=None, *, out_dtype=None):
    return int8_weight_linear(x, qweight, scale, bias, out_dtype)


aten_choice = _I.ExternKernelChoice(
    _aten_int8_linear, name="inductor_quant_int8_linear_aten", has_out_variant=False
)
dequant_mm_choice = _I.ExternKernelChoice(
    int8_dequant_mm, name="inductor_quant_int8_dequant_mm", has_out_variant=False
)

# (M, N, K, input dtypes..., out dtype) -> name of the winning choice, for this process
_tuned: dict[tuple, str] = {}


def reset_tuning_cache() -> None:
    _tuned.clear()


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear.default, type_promotion_kind=None)
def int8_weight_linear_lowering(x, qweight, scale, bias=None, *, out_dtype=None, layout=None):
    out_dtype = out_dtype or x.get_dtype()
    m, n, k, layout, mat1, mat2 = _I.mm_args(
        x, qweight, layout=layout, out_dtype=out_dtype, mat2_transposed=True
    )
    if mat2.get_dtype() != torch.int8:
        raise TypeError(
            f"int8_weight_linear: qweight must be int8, got {mat2.get_dtype()} (x is {mat1.get_dtype()})"
        )
    forced = forced_int8_kernel()
    mat1 = _I.ir.ExternKernel.require_contiguous(mat1)
    mat2 = _I.ir.ExternKernel.require_contiguous(mat2)
    inputs = [mat1, mat2, _I.realize_inputs(scale)] + ([_I.realize_inputs(bias)] if bias is not None else [])
    key = (m, n, k, *(t.get_dtype() for t in inputs), out_dtype)
    if forced == "dequant_mm" or (forced is None and not _is_decode(mat1)):
        choices = {"dequant_mm": dequant_mm_choice.bind(inputs, layout, out_dtype=out_dtype)}
        return _select("inductor_quant_int8_weight_linear", choices, inputs, layout, forced, key)
    choices = {"aten": aten_choice.bind(inputs, layout, out_dtype=out_dtype)}
    if _gemv_applies(mat1, mat2):
        gemv: list = []
        CppInt8GemvTemplate.add_choice(
            gemv, layout, inputs, has_bias=bias is not None, packed=False, n=int(n)
        )
        choices["int8_gemv"] = gemv[0]
    return _select("inductor_quant_int8_weight_linear", choices, inputs, layout, forced, key)


def _select(name: str, choices: dict, inputs: list, layout, forced: str | None, key: tuple):
    """Autotune among ``choices`` (name -> ChoiceCaller); a problem seen before reuses its winner untimed."""
    if forced is not None:
        if forced not in choices:
            raise ValueError(
                f"INDUCTOR_QUANT_INT8_KERNEL={forced!r} is not offered for {name} {key}; "
                f"offered: {list(choices)}"
            )
        choices = {forced: choices[forced]}
    remembered = _tuned.get(key)
    if remembered in choices and len(choices) > 1:
        log.info("%s %s: reusing the tuned choice %s", name, key[:3], remembered)
        counters["inductor_quant"]["int8_tuning_reused"] += 1
        choices = {remembered: choices[remembered]}
    _install_timing_log()
    out, winner = _I.autotune_select_algorithm(name, list(choices.values()), inputs, layout)
    chosen = next((n for n, c in choices.items() if c is winner), next(iter(choices)))
    _tuned[key] = chosen
    counters["inductor_quant"]["int8_lowered"] += 1
    counters["inductor_quant"][f"int8_kernel_{chosen}"] += 1
    log.info("%s M=%s N=%s K=%s x=%s: offered %s, chose %s", name, *key[:3], key[3], list(choices), chosen)
    return out


_timing_log_installed = False


def _install_timing_log() -> None:
    """Log the autotune timings of this package's choices (other autotunes are not looked at)."""
    global _timing_log_installed
    if _timing_log_installed:
        return

    def log_timings(timings, name, input_nodes, *_rest, **_kw) -> None:
        # Called for every autotune in the process: look only at ours, and never raise into Inductor.
        if not (
            isinstance(name, str) and name.startswith("inductor_quant") and log.isEnabledFor(logging.DEBUG)
        ):
            return
        try:
            shapes = [list(n.get_size()) for n in input_nodes]
            ranked = sorted(timings.items(), key=lambda kv: kv[1])
            log.debug(
                "autotune %s %s: %s", name, shapes, ", ".join(f"{c.name} {t * 1e3:.1f} us" for c, t in ranked)
            )
        except Exception as e:  # noqa: BLE001 - logging must not break compilation
            log.debug("autotune %s: could not log timings (%s)", name, e)

    _I.add_feedback_saver(log_timings)
    _timing_log_installed = True


def _is_decode(mat1) -> bool:
    m = mat1.get_size()[0]
    return (isinstance(m, int) or m.is_number) and int(m) <= MAX_M


def _gemv_applies(mat1, mat2) -> bool:
    """The GEMV template needs a CPU device, static shapes, M <= MAX_M and K a multiple of its K step."""
    if mat1.get_device() is None or mat1.get_device().type != "cpu":
        return False
    sizes = (*mat1.get_size(), *mat2.get_size())
    if not all(isinstance(s, int) or s.is_number for s in sizes):
        return False
    m, k = (int(s) for s in mat1.get_size())
    return m <= MAX_M and k % K_STEP == 0


@L.register_lowering(torch.ops.inductor_quant.int8_weight_linear_packed.default, type_promotion_kind=None)
def int8_weight_linear_packed_lowering(
    x, packed_weight, scale, bias, out_dtype, out_features, *, layout=None
):
    """The prepack pass only packs decode-shaped problems, so the GEMV template is the one choice."""
    out_dtype = out_dtype or x.get_dtype()
    x = _I.ir.ExternKernel.require_contiguous(_I.realize_inputs(x))
    m, k = (int(s) for s in x.get_size())
    layout = _I.ir.FixedLayout(x.get_device(), out_dtype, [m, out_features])
    inputs = [x, _I.realize_inputs(packed_weight), _I.realize_inputs(scale)]
    if bias is not None:
        inputs.append(_I.realize_inputs(bias))
    gemv: list = []
    CppInt8GemvTemplate.add_choice(
        gemv, layout, inputs, has_bias=bias is not None, packed=True, n=out_features
    )
    return _select(
        "inductor_quant_int8_weight_linear_packed",
        {"int8_gemv_packed": gemv[0]},
        inputs,
        layout,
        None,
        key=(m, out_features, k, *(t.get_dtype() for t in inputs), out_dtype),
    )
