"""``quantize_``: swap quantized weight subclasses into a model (stage 1 of the pipeline).

Each config type has one registered handler that turns a module into its quantized form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from .configs import Int4WeightOnlyConfig, Int8DynamicActivationInt4WeightConfig, Int8WeightOnlyConfig
from .primitives import quantize_int4_groupwise, quantize_int8_per_channel
from .tensor import Int4WeightA8Tensor, Int4WeightTensor, Int8WeightTensor, QuantizedWeightTensor

log = logging.getLogger(__name__)

_HANDLERS: dict[type, Callable[[nn.Module, object], nn.Module]] = {}


def register_quantize_module_handler(config_type: type):
    """Register ``fn(module, config) -> module`` as the way ``config_type`` quantizes one module."""

    def decorator(fn):
        _HANDLERS[config_type] = fn
        return fn

    return decorator


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear)


def quantize_(
    model: nn.Module,
    config: object,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Quantize, in place, the weights of every module of ``model`` that ``filter_fn(module, fqn)`` accepts.

    The default filter takes every ``nn.Linear``. Returns ``model`` for chaining.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(
            f"no quantization handler for config {config!r}; known: {[t.__name__ for t in _HANDLERS]}"
        )
    filter_fn = filter_fn or _is_linear
    count = 0
    for fqn, module in list(model.named_modules()):
        if filter_fn(module, fqn):
            try:
                handler(module, config)
            except ValueError as e:
                raise ValueError(f"quantize_ {type(config).__name__} on {fqn or 'the model'!r}: {e}") from e
            count += 1
    log.info("quantize_: %s applied to %d module(s)", type(config).__name__, count)
    return model


@register_quantize_module_handler(Int8WeightOnlyConfig)
def _int8_weight_only(module: nn.Module, config: Int8WeightOnlyConfig) -> nn.Module:
    weight = _float_weight(module)
    qdata, scale = quantize_int8_per_channel(weight)
    qweight = Int8WeightTensor(qdata, scale.to(config.scale_dtype), dtype=weight.dtype)
    module.weight = nn.Parameter(qweight, requires_grad=False)
    return module


@register_quantize_module_handler(Int4WeightOnlyConfig)
@register_quantize_module_handler(Int8DynamicActivationInt4WeightConfig)
def _int4_weight(module: nn.Module, config: Int4WeightOnlyConfig) -> nn.Module:
    weight = _float_weight(module)
    qdata, scale, zero_point = quantize_int4_groupwise(weight, config.group_size, config.scale_dtype)
    cls = (
        Int4WeightA8Tensor if isinstance(config, Int8DynamicActivationInt4WeightConfig) else Int4WeightTensor
    )
    qweight = cls(qdata, scale, zero_point, dtype=weight.dtype, group_size=config.group_size)
    module.weight = nn.Parameter(qweight, requires_grad=False)
    return module


def _float_weight(module: nn.Module):
    weight = module.weight
    if isinstance(weight, QuantizedWeightTensor):
        raise ValueError(f"{module} is already quantized ({type(weight).__name__})")
    return weight


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, counting a quantized weight by its inner tensors."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if isinstance(t, QuantizedWeightTensor):
            total += t.nbytes_quantized()
        else:
            total += t.numel() * t.element_size()
    return total


__all__ = ["quantize_", "register_quantize_module_handler", "weight_bytes"]
