"""inductor_quant: weight-quantized models made fast under ``torch.compile(model, backend="quant_inductor")``.

Public API: ``quantize_`` with ``Int8WeightOnlyConfig`` / ``Int4WeightOnlyConfig`` /
``Int8DynamicActivationInt4WeightConfig`` (W4A8), the weight subclasses ``Int8WeightTensor`` / ``Int4WeightTensor`` /
``Int4WeightA8Tensor``, safetensors save / load of quantized state dicts, and the
quantized layers of ``inductor_quant.nn`` (``BitLinear`` with ``BitQuantConfig``; ``QuantizedLinear`` and
``swap_quantized_linear``, over the ``torch.ops.inductor_quant.quantized_matmul`` op); ``generate``, a lean decode
loop for Hugging Face causal LMs.
"""

from . import (
    attention,  # noqa: F401  (registers torch.ops.inductor_quant.decode_attention)
    distributed,  # noqa: F401  (the aten ops DTensor sharding needs, on the weight subclasses)
    nn,
    quantized_matmul,  # noqa: F401  (registers torch.ops.inductor_quant.quantized_matmul)
)
from .api import quantize_, resident_weight_bytes, weight_bytes
from .configs import (
    BitQuantConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt4WeightConfig,
    Int8WeightOnlyConfig,
)
from .decoding import generate
from .serialization import load_safetensors, save_safetensors
from .tensor import Int4WeightA8Tensor, Int4WeightTensor, Int8WeightTensor

__all__ = [
    "BitQuantConfig",
    "Int4WeightA8Tensor",
    "Int4WeightOnlyConfig",
    "Int4WeightTensor",
    "Int8DynamicActivationInt4WeightConfig",
    "Int8WeightOnlyConfig",
    "Int8WeightTensor",
    "generate",
    "load_safetensors",
    "nn",
    "quantize_",
    "save_safetensors",
    "resident_weight_bytes",
    "weight_bytes",
]
__version__ = "0.1.0"
