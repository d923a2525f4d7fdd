"""Quantized layers: ``BitLinear`` (1.58-bit ternary weights, int8 activations), ``QuantizedLinear``
(``quantized_matmul``: int8 / int4 weights per channel or per block, float or int8 activations), and LoRA on
``quantize_``d linears (``LoraLinear``, ``add_lora``, ``merge_and_unload``; ``use_with_peft`` for PEFT)."""

from ..configs import BitQuantConfig
from .bitlinear import BitLinear
from .lora import LoraLinear, add_lora, merge_and_unload
from .quantized_linear import QuantizedLinear, swap_quantized_linear


def use_with_peft(config):
    """``inductor_quant.nn.lora_peft.use_with_peft`` (imported on first use: ``peft`` is optional)."""
    from .lora_peft import use_with_peft

    return use_with_peft(config)


__all__ = [
    "BitLinear",
    "BitQuantConfig",
    "LoraLinear",
    "QuantizedLinear",
    "add_lora",
    "merge_and_unload",
    "swap_quantized_linear",
    "use_with_peft",
]
