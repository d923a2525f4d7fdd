"""Package switches, read from the environment each time they are used (no global Inductor config is touched).

INDUCTOR_QUANT_INT8_KERNEL: offer only this int8 choice (``aten``, ``dequant_mm``, ``int8_gemv``; on GPUs one
    Triton config by name, or ``triton`` for all of them) instead of autotuning among all the choices.
    For tests, debugging and benchmarks.
INDUCTOR_QUANT_INT4_KERNEL: the same for int4 (``int4_gemv``, ``dequant_mm``, ``triton``).
INDUCTOR_QUANT_TERNARY_KERNEL: the same for ternary (``ternary_gemv``, ``unpack_int_mm``, ``triton``).
INDUCTOR_QUANT_CPU_ISA: the matrix instructions of the CPU kernels: ``amx`` (the default where the CPU has AMX
    tiles) or ``avx512`` (AVX512-BF16 / VNNI only; the default elsewhere). Asking for ``amx`` on a CPU without it
    logs a warning and takes ``avx512``. For tests of the path a machine would not take, and benchmarks.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("inductor_quant")

INT8_KERNEL_ENV = "INDUCTOR_QUANT_INT8_KERNEL"


def forced_int8_kernel() -> str | None:
    return os.environ.get(INT8_KERNEL_ENV) or None


INT4_KERNEL_ENV = "INDUCTOR_QUANT_INT4_KERNEL"


def forced_int4_kernel() -> str | None:
    return os.environ.get(INT4_KERNEL_ENV) or None


TERNARY_KERNEL_ENV = "INDUCTOR_QUANT_TERNARY_KERNEL"


def forced_ternary_kernel() -> str | None:
    return os.environ.get(TERNARY_KERNEL_ENV) or None


CPU_ISA_ENV = "INDUCTOR_QUANT_CPU_ISA"
CPU_ISAS = ("amx", "avx512")


def cpu_matrix_isa() -> str:
    """``amx`` or ``avx512``: what the CPU kernels multiply with (see INDUCTOR_QUANT_CPU_ISA)."""
    from .kernels import amx_available

    asked = os.environ.get(CPU_ISA_ENV) or None
    if asked is not None and asked not in CPU_ISAS:
        raise ValueError(f"{CPU_ISA_ENV}={asked!r}: expected one of {CPU_ISAS}")
    if asked == "avx512":
        return "avx512"
    if amx_available():
        return "amx"
    if asked == "amx":
        _warn_no_amx()
    return "avx512"


@functools.cache
def _warn_no_amx() -> None:
    log.warning(
        "%s=amx, but this CPU has no AMX tiles (or the kernel refused them): using avx512", CPU_ISA_ENV
    )
