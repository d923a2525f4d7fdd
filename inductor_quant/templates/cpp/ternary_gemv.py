"""CPP template for decode-shaped ternary matmuls with int8 activations: loads ``ternary_gemv.cpp``.

It reads the 2-bit packed weight of ``primitives.pack_ternary`` directly (a quarter of int8's bytes) and sums with
AVX512-VNNI ``vpdpbusd``; the activation scale, weight scale and bias are fused in the kernel. Any K: a K that is not
a whole number of 256-value blocks is zero-padded in the kernel's copy of the (small) activations.
"""

from __future__ import annotations

from ...primitives import ternary_packed_k
from .gemv import MAX_M, CppGemvTemplate

__all__ = ["MAX_M", "CppTernaryGemvTemplate"]


class CppTernaryGemvTemplate(CppGemvTemplate):
    """``Y = (X @ T.T) * XS[:, None] * WS (+ B)`` for small M: X ``[M, K]`` int8, XS ``[M]`` fp32, W the packed
    ``[N, KP]`` uint8 ternary weight, WS ``[N]`` or ``[1]`` fp32, B ``[N]``."""

    source = "ternary_gemv.cpp"
    weight_inputs = ("XS", "W", "WS")

    def __init__(self, input_nodes, layout, *, has_bias: bool, n: int):
        super().__init__(
            "inductor_quant_ternary_gemv", input_nodes, layout, has_bias=has_bias, packed=True, n=n
        )

    def options(self, X):
        weight_scale = self.input_nodes[3]
        return dict(
            packed_k=ternary_packed_k(int(X.get_size()[1])),
            per_tensor_scale=int(weight_scale.get_size()[0]) == 1 and self.n != 1,
        )
