"""inductor_quant: weight-quantized models made fast under ``torch.compile(model, backend="quant_inductor")``.

Public API: ``quantize_`` with ``Int8WeightOnlyConfig`` / ``Int4WeightOnlyConfig``, the weight subclasses
``Int8WeightTensor`` / ``Int4WeightTensor``, and safetensors save / load of quantized state dicts.
"""

from .api import quantize_, weight_bytes
from .configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
from .serialization import load_safetensors, save_safetensors
from .tensor import Int4WeightTensor, Int8WeightTensor

__all__ = [
    "Int4WeightOnlyConfig",
    "Int4WeightTensor",
    "Int8WeightOnlyConfig",
    "Int8WeightTensor",
    "load_safetensors",
    "quantize_",
    "save_safetensors",
    "weight_bytes",
]
__version__ = "0.1.0"
