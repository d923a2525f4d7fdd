"""CPP template for decode-shaped int8 weight-only matmuls: loads ``int8_gemv.cpp``.

One kernel, two weight layouts (strides only): the blocked layout the prepack pass makes from frozen weights, and
the plain ``[N, K]`` rows of a weight that is a graph input, so frozen and unfrozen graphs both get it. Scale and
bias are fused in the kernel.
"""

from __future__ import annotations

import torch

from ...settings import cpu_matrix_isa
from .gemv import MAX_M, CppGemvTemplate

__all__ = ["K_STEP", "MAX_M", "CppInt8GemvTemplate"]

# The kernel walks K in steps of this many values (one 32-byte run per weight row); K must be a multiple.
K_STEP = 32
# bf16 activations of at least this many rows multiply on AMX tiles where the CPU has them (settings.cpu_matrix_isa).
# 4096 x 4096 x 64 layers on a 2-core Xeon with AMX, weight bytes / read bandwidth, AMX / AVX512 kernel: M = 1
# 0.79 / 0.85, M = 2 0.78 / 0.73, M = 3 0.78 / 0.53, M = 4 0.76 / 0.51, M = 16 0.70 / 0.17.
AMX_MIN_M = 2


class CppInt8GemvTemplate(CppGemvTemplate):
    """``Y = (X @ W.T) * S (+ B)`` for small M, with X ``[M, K]`` float, W ``[N, K]`` int8 (or, if ``packed``,
    the blocked layout of ``primitives.pack_int8_blocked``), S / B ``[N]``."""

    source = "int8_gemv.cpp"
    weight_inputs = ("W", "S")

    def __init__(self, input_nodes, layout, *, has_bias: bool, packed: bool, n: int):
        super().__init__(
            "inductor_quant_int8_gemv", input_nodes, layout, has_bias=has_bias, packed=packed, n=n
        )

    def options(self, X):
        k = int(X.get_size()[1])
        # see the layout note at the top of int8_gemv.cpp
        return dict(
            row_stride=K_STEP if self.packed else k,
            step_stride=4 * K_STEP if self.packed else K_STEP,
            amx=X.get_dtype() == torch.bfloat16
            and int(X.get_size()[0]) >= AMX_MIN_M
            and cpu_matrix_isa() == "amx",
        )
