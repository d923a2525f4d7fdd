"""What every scheme's lowering shares: choosing among kernels (autotune, once per problem), the timing log, and
the shape tests that decide which kernels are offered."""

from __future__ import annotations

import logging

from torch._dynamo.utils import counters

from .._compat import inductor_internals
from ..templates.cpp.gemv import cpp_templates_apply

log = logging.getLogger(__name__)
_I = inductor_internals()

# (op name, M, N, K, input dtypes..., out dtype) -> name of the winning choice, for this process
_tuned: dict[tuple, str] = {}
# id(ChoiceCaller) -> the package's name for it ("int8_gemv", "triton_16x64x128_w4_s4"), for the timing log
_choice_names: dict[int, str] = {}


def reset_tuning_cache() -> None:
    _tuned.clear()


def select(
    name: str,
    choices: dict,
    inputs: list,
    layout,
    forced: str | None,
    key: tuple,
    *,
    scheme: str,
    env: str = "",
):
    """Autotune among ``choices`` (name -> ChoiceCaller); a problem seen before reuses its winner untimed.

    ``forced`` (from the ``env`` variable) restricts the choices to one; ``key`` is ``(M, N, K, dtypes...)``;
    ``scheme`` prefixes the counters (``int8_lowered``, ``int4_kernel_int4_gemv``, ...).
    """
    if forced is not None:
        # a choice's name, or "triton" for every Triton template config
        kept = {
            n: c
            for n, c in choices.items()
            if n == forced or (forced == "triton" and n.startswith("triton_"))
        }
        if not kept:
            raise ValueError(f"{env}={forced!r} is not offered for {name} {key}; offered: {list(choices)}")
        choices = kept
    remembered = _tuned.get((name, *key))
    if remembered in choices and len(choices) > 1:
        log.info("%s %s: reusing the tuned choice %s", name, key[:3], remembered)
        counters["inductor_quant"][f"{scheme}_tuning_reused"] += 1
        choices = {remembered: choices[remembered]}
    _install_timing_log()
    _choice_names.clear()
    _choice_names.update({id(c): n for n, c in choices.items()})
    out, winner = _I.autotune_select_algorithm(name, list(choices.values()), inputs, layout)
    chosen = next((n for n, c in choices.items() if c is winner), next(iter(choices)))
    _tuned[(name, *key)] = chosen
    counters["inductor_quant"][f"{scheme}_lowered"] += 1
    counters["inductor_quant"][f"{scheme}_kernel_{chosen}"] += 1
    log.info("%s M=%s N=%s K=%s x=%s: offered %s, chose %s", name, *key[:3], key[3], list(choices), chosen)
    return out


def note_cpu_gemm(scheme: str, x) -> None:
    """Log and count (``<scheme>_gemm_amx`` / ``_avx512``) what the widening GEMM of a CPU prefill multiplies
    activations ``x`` with; it decides per call from the CPU's features (``kernels.gemm_isa``), so a dynamic M is
    noted as the ISA of a large M, with the rows from which AMX applies."""
    from ..kernels import AMX_MIN_M, gemm_isa

    if x.get_device().type != "cpu":
        return
    m = x.get_size()[0]
    static = isinstance(m, int) or m.is_number
    isa = gemm_isa(x.get_dtype(), int(m) if static else AMX_MIN_M)
    counters["inductor_quant"][f"{scheme}_gemm_{isa}"] += 1
    rows = f"M={m}" if static else f"M={m} (AMX from M >= {AMX_MIN_M})"
    log.info("%s prefill GEMM, %s %s activations: multiplies on %s", scheme, rows, x.get_dtype(), isa)


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
                "autotune %s %s: %s",
                name,
                shapes,
                ", ".join(f"{_choice_names.get(id(c), c.name)} {t * 1e3:.1f} us" for c, t in ranked),
            )
        except Exception as e:  # noqa: BLE001 - logging must not break compilation
            log.debug("autotune %s: could not log timings (%s)", name, e)

    _I.add_feedback_saver(log_timings)
    _timing_log_installed = True


def kernel_inputs(*tensors) -> list:
    """Every tensor a kernel reads (activation, weights, scales, zero points, bias), realized dense row-major, and,
    where the CPP templates may be offered, from offset 0: they index their inputs as ``X[m * K + k]`` from the
    buffer's start, and Inductor hands a template the underlying buffer of a view (an ``h[:, -1:, :]`` slice, rows
    of a wider buffer), so such a view is copied here, once, in the graph (logged and counted), never read in place.
    Extern kernels get the view itself and Triton templates add its offset (Inductor's ``def_kernel``): no copy
    there. ``None`` entries (no bias) are dropped."""
    out = []
    for t in tensors:
        if t is None:
            continue
        node = _I.ir.ExternKernel.require_contiguous(_I.realize_inputs(t))
        offset = node.get_layout().offset
        if offset != 0 and cpp_templates_apply(node.get_device()):
            log.debug(
                "copied a view at storage offset %s (%s) into a buffer of its own", offset, node.get_name()
            )
            counters["inductor_quant"]["layout_copies"] += 1
            node = _I.ir.ExternKernel.require_contiguous(_I.ir.ExternKernel.copy_input(node))
        out.append(node)
    return out


def all_static(*sizes) -> bool:
    """Every size is a number (no symbol)."""
    return all(isinstance(s, int) or s.is_number for s in sizes)


def is_static_decode(mat1, max_m: int) -> bool:
    """M (rows of the activation) is a static number of at most ``max_m``."""
    m = mat1.get_size()[0]
    return all_static(m) and int(m) <= max_m


def gemv_applies(mat1, weight, max_m: int, k_step: int) -> bool:
    """A GEMV template needs a CPU device with the C++ backend, static shapes, M <= ``max_m`` and K a multiple
    of its ``k_step``."""
    if not cpp_templates_apply(mat1.get_device()):
        return False
    if not all_static(*mat1.get_size(), *weight.get_size()):
        return False
    m, k = (int(s) for s in mat1.get_size())
    return m <= max_m and k % k_step == 0
