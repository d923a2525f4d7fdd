"""inductor_quant: weight-quantized models made fast under ``torch.compile(model, backend="quant_inductor")``.

Public API: ``quantize_``, ``Int8WeightOnlyConfig``, ``Int8WeightTensor``.
"""

from .api import quantize_, weight_bytes
from .configs import Int8WeightOnlyConfig
from .tensor import Int8WeightTensor

__all__ = ["Int8WeightOnlyConfig", "Int8WeightTensor", "quantize_", "weight_bytes"]
__version__ = "0.1.0"
