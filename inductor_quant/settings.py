"""Package switches, read from the environment each time they are used (no global Inductor config is touched).

INDUCTOR_QUANT_INT8_KERNEL: offer only this int8 choice (``aten``, ``dequant_mm``, ``int8_gemv``; on GPUs one
    Triton config by name, or ``triton`` for all of them) instead of autotuning among all the choices.
    For tests, debugging and benchmarks.
INDUCTOR_QUANT_INT4_KERNEL: the same for int4 (``int4_gemv``, ``dequant_mm``, ``triton``).
INDUCTOR_QUANT_TERNARY_KERNEL: the same for ternary (``ternary_gemv``, ``unpack_int_mm``, ``triton``).
"""

from __future__ import annotations

import os

INT8_KERNEL_ENV = "INDUCTOR_QUANT_INT8_KERNEL"


def forced_int8_kernel() -> str | None:
    return os.environ.get(INT8_KERNEL_ENV) or None


INT4_KERNEL_ENV = "INDUCTOR_QUANT_INT4_KERNEL"


def forced_int4_kernel() -> str | None:
    return os.environ.get(INT4_KERNEL_ENV) or None


TERNARY_KERNEL_ENV = "INDUCTOR_QUANT_TERNARY_KERNEL"


def forced_ternary_kernel() -> str | None:
    return os.environ.get(TERNARY_KERNEL_ENV) or None
