"""CPP template for decode-shaped int4 groupwise weight-only matmuls: loads ``int4_gemv.cpp``.

Two weight layouts (strides only): the blocked layout the prepack pass makes from frozen weights
(``primitives.pack_int4_blocked``) and the plain ``[N, K / 2]`` storage of a weight that is a graph input. The
scale, zero-point and bias epilogue is fused in the kernel.
"""

from __future__ import annotations

import torch

from ...settings import cpu_matrix_isa
from .gemv import MAX_M, CppGemvTemplate

__all__ = ["K_STEP", "MAX_M", "CppInt4GemvTemplate", "CppInt4RowMajorA8Template"]

# The kernel walks K in steps of this many values (64 bytes per weight row); K must be a multiple, or, for a
# prepacked weight, is zero-padded to one (the padding is read against zero activations).
K_STEP = 128


def amx_min_m(group_size: int) -> int:
    """bf16 activations of at least this many rows multiply on AMX tiles where the CPU has them
    (settings.cpu_matrix_isa): each group's tile sums are scaled at its end, so small groups cost more. 4096 x 4096
    x 64 layers on a 2-core Xeon with AMX, weight bytes / read bandwidth, AMX / AVX512 kernel: g32 M = 2 0.43 /
    0.79, M = 4 0.40 / 0.48, M = 8 0.38 / 0.31; g128 M = 2 0.59 / 0.69, M = 4 0.56 / 0.45, M = 8 0.48 / 0.24."""
    return 8 if group_size <= 32 else 4


# element kinds of the scale / zero-point inputs (IqKind in int4_gemv.cpp); IQ_OFFSET: Z is an fp32 offset c with
# W = q * s + c instead of a zero point
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.uint8: 3}
IQ_OFFSET = 4


class CppInt4GemvTemplate(CppGemvTemplate):
    """``Y = X @ ((q - Z) * S).T (+ B)`` per group for small M: X ``[M, K]`` float, W the nibbles (``[N, K / 2]``
    or, if ``packed``, blocked), S / Z ``[N, K / group_size]``, B ``[N]``. With ``zero_is_offset`` Z is an fp32
    offset: ``W = q * S + Z``."""

    source = "int4_gemv.cpp"
    weight_inputs = ("W", "S", "Z")
    kernel_name = "inductor_quant_int4_gemv"

    def __init__(
        self,
        input_nodes,
        layout,
        *,
        has_bias: bool,
        packed: bool,
        n: int,
        group_size: int,
        zero_is_offset: bool,
    ):
        super().__init__(self.kernel_name, input_nodes, layout, has_bias=has_bias, packed=packed, n=n)
        self.group_size = group_size
        self.zero_is_offset = zero_is_offset

    def options(self, X):
        named = dict(zip(self.weight_inputs, self.input_nodes[1:], strict=False))
        S, Z = named["S"], named["Z"]
        k = int(X.get_size()[1])
        # the weight's K: the groups of S times the group size (a packed weight's K is padded to K_STEP)
        kp = int(S.get_size()[1]) * self.group_size
        # see the layout note at the top of int4_gemv.cpp
        return dict(
            GS=self.group_size,
            KP=kp,
            row_stride=K_STEP // 2 if self.packed else k // 2,
            step_stride=4 * K_STEP // 2 if self.packed else K_STEP // 2,
            s_kind=_KINDS[S.get_dtype()],
            z_kind=IQ_OFFSET if self.zero_is_offset else _KINDS[Z.get_dtype()],
            x_scaled="XS" in named,
            amx=X.get_dtype() == torch.bfloat16
            and int(X.get_size()[0]) >= amx_min_m(self.group_size)
            and cpu_matrix_isa() == "amx",
        )


class CppInt4RowMajorA8Template(CppInt4GemvTemplate):
    """W4A8 on the plain ``[N, K / 2]`` nibbles of a weight that is a graph input: ``Y = (X @ ((q - Z) * S).T) *
    XS[:, None] (+ B)`` for int8 X ``[M, K]`` with per-row fp32 scales XS ``[M]``; the integer sums per group are
    exact (AVX512-VNNI on the nibbles as unsigned bytes). Frozen weights take ``int4_a8_gemv`` instead."""

    weight_inputs = ("XS", "W", "S", "Z")
    kernel_name = "inductor_quant_int4_gemv_a8"

    def __init__(self, input_nodes, layout, *, has_bias: bool, n: int, group_size: int):
        super().__init__(
            input_nodes,
            layout,
            has_bias=has_bias,
            packed=False,
            n=n,
            group_size=group_size,
            zero_is_offset=False,
        )
