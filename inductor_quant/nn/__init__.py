"""Quantized layers: ``BitLinear`` (1.58-bit ternary weights, int8 activations) and ``QuantizedLinear``
(``quantized_matmul``: int8 / int4 weights per channel or per block, float or int8 activations)."""

from ..configs import BitQuantConfig
from .bitlinear import BitLinear
from .quantized_linear import QuantizedLinear, swap_quantized_linear

__all__ = ["BitLinear", "BitQuantConfig", "QuantizedLinear", "swap_quantized_linear"]
