"""CPP template for W4A8 decode on prepacked weights (int4 groupwise weights, int8 activations): loads
``int4_a8_gemv.cpp``.

The weight, its scales and its zero points come in the lane-per-output layout of ``primitives.pack_int4_lanes``
(made by the prepack pass from frozen constants); the activations are int8 rows with one fp32 scale each, quantized
by an Inductor kernel in front. Weights that are graph inputs take ``int4_gemv``'s int8 path instead.
"""

from __future__ import annotations

from .gemv import CppGemvTemplate
from .int4_gemv import _KINDS

__all__ = ["CppInt4A8GemvTemplate"]


class CppInt4A8GemvTemplate(CppGemvTemplate):
    """``Y = (X @ ((q - Z) * S).T) * XS[:, None] (+ B)`` for small M: X int8 ``[M, K]``, XS fp32 ``[M]``, W / S / Z
    packed by ``primitives.pack_int4_lanes``, B ``[N]``."""

    source = "int4_a8_gemv.cpp"
    weight_inputs = ("XS", "W", "S", "Z")

    def __init__(self, input_nodes, layout, *, has_bias: bool, n: int, group_size: int):
        super().__init__(
            "inductor_quant_int4_a8_gemv", input_nodes, layout, has_bias=has_bias, packed=True, n=n
        )
        self.group_size = group_size

    def options(self, X):
        _, _, _, S, Z = self.input_nodes[:5]
        return dict(GS=self.group_size, s_kind=_KINDS[S.get_dtype()], z_kind=_KINDS[Z.get_dtype()])
