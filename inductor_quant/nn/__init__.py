"""Quantized layers: ``BitLinear`` (1.58-bit ternary weights, int8 activations)."""

from ..configs import BitQuantConfig
from .bitlinear import BitLinear

__all__ = ["BitLinear", "BitQuantConfig"]
