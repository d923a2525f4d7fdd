"""``quantize_``: swap quantized weight subclasses into a model (stage 1 of the pipeline).

Each config type has one registered handler that turns a module into its quantized form.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from .configs import Int4WeightOnlyConfig, Int8DynamicActivationInt4WeightConfig, Int8WeightOnlyConfig
from .primitives import INT4_GROUP_SIZES, quantize_int4_groupwise, quantize_int8_per_channel
from .tensor import Int4WeightA8Tensor, Int4WeightTensor, Int8WeightTensor, QuantizedWeightTensor

log = logging.getLogger(__name__)

_HANDLERS: dict[type, Callable[[nn.Module, object], nn.Module]] = {}


def register_quantize_module_handler(config_type: type):
    """Register ``fn(module, config) -> module`` as the way ``config_type`` quantizes one module."""

    def decorator(fn):
        _HANDLERS[config_type] = fn
        return fn

    return decorator


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear whose ``[K, N]`` weight is the transpose of an
    ``nn.Linear``'s (``addmm(bias, x, weight)``)."""
    transformers = sys.modules.get("transformers")
    conv1d = getattr(getattr(transformers, "pytorch_utils", None), "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _weight_holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """id(weight parameter) -> every (fqn, module) holding it as ``.weight``: tied weights have several."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for fqn, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None:
            holders.setdefault(id(weight), []).append((fqn, module))
    return holders


def _share_quantized(fqn: str, module: nn.Module, tied: list[tuple[str, nn.Module]]) -> None:
    """``module``'s float weight was tied to other modules' (``tie_word_embeddings``: the lm_head and the token
    embedding): an ``nn.Embedding`` takes the quantized weight too (one tensor serves the lookup and the head, as in
    llama.cpp; the lookup dequantizes the rows it reads); any other holder keeps the float weight, untied."""
    for other_fqn, other in tied:
        if other is module:
            continue
        if isinstance(other, nn.Embedding):
            other.weight = module.weight
            log.info("quantize_: %r is tied to %r: both read the one quantized weight", other_fqn, fqn)
        else:
            log.warning(
                "quantize_: %r was tied to %r, which is quantized; %s cannot read a quantized weight, so it keeps "
                "its float weight (the tie is broken)",
                other_fqn,
                fqn,
                type(other).__name__,
            )


# The weight a token embedding shares with the lm_head (tie_word_embeddings) is int8 under the int4 configs: it is
# both the lookup table and the output head, where 4 bits cost the most (llama.cpp's 4-bit files keep that shared
# tensor at Q8_0 / Q6_K too). Measured on SmolLM2-135M-Instruct (tied, 49152 x 576; 121 tokens of prose, eager,
# ppl / bf16 ppl with the shared tensor int8 vs int4): int4 g32 1.045 vs 1.107 (87.4 vs 76.2 MiB of weights),
# int4 g128 (g64 where K = 576) 1.094 vs 1.291, W4A8 g32 1.039 vs 1.090.
TIED_EMBEDDING_CONFIG = Int8WeightOnlyConfig()


class LayerNotQuantized(Exception):
    """Raised by a handler for a layer its scheme cannot hold (``quantize_`` leaves it float, with a log line)."""


def quantize_(
    model: nn.Module,
    config: object,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Quantize, in place, the weights of every module of ``model`` that ``filter_fn(module, fqn)`` accepts.

    The default filter takes every ``nn.Linear`` (and GPT-2's ``Conv1D``). A layer the scheme cannot hold (an int4
    layer whose K is not a multiple of 32) stays float with one log line, so a whole model always quantizes; the
    last log line sums up what became what and the weight bytes before and after. Returns ``model`` for chaining.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(
            f"no quantization handler for config {config!r}; known: {[t.__name__ for t in _HANDLERS]}"
        )
    filter_fn = filter_fn or _is_linear
    holders = _weight_holders(model)
    before = weight_bytes(model)
    became: Counter[str] = Counter()
    for fqn, module in list(model.named_modules()):
        if filter_fn(module, fqn):
            tied = holders.get(id(module._parameters.get("weight")), [])
            layer_config = config
            if isinstance(config, Int4WeightOnlyConfig) and any(isinstance(m, nn.Embedding) for _, m in tied):
                layer_config = TIED_EMBEDDING_CONFIG
                log.info("quantize_: %r is tied to a token embedding: int8 (TIED_EMBEDDING_CONFIG)", fqn)
            try:
                _HANDLERS[type(layer_config)](module, layer_config)
            except LayerNotQuantized as e:
                log.info("quantize_: %r stays %s: %s", fqn, module.weight.dtype, e)
                became["kept float"] += 1
                continue
            except ValueError as e:
                raise ValueError(f"quantize_ {type(config).__name__} on {fqn or 'the model'!r}: {e}") from e
            _share_quantized(fqn, module, tied)
            became[_describe(module.weight)] += 1
    log.info(
        "quantize_ %s: %s; weights %.1f MiB -> %.1f MiB",
        type(config).__name__,
        ", ".join(f"{n} x {what}" for what, n in became.items()) or "no module matched",
        before / 2**20,
        weight_bytes(model) / 2**20,
    )
    return model


def _describe(weight) -> str:
    group = getattr(weight, "group_size", None)
    return type(weight).__name__ + (f"(g{group})" if group is not None else "")


@register_quantize_module_handler(Int8WeightOnlyConfig)
def _int8_weight_only(module: nn.Module, config: Int8WeightOnlyConfig) -> nn.Module:
    weight, transposed = _float_weight(module)
    qdata, scale = quantize_int8_per_channel(weight)
    qweight = Int8WeightTensor(qdata, scale.to(config.scale_dtype), dtype=weight.dtype, transposed=transposed)
    qweight = qweight.with_kernel_layout() if config.layout == "auto" else qweight.with_layout(config.layout)
    module.weight = nn.Parameter(qweight, requires_grad=False)
    return module


@register_quantize_module_handler(Int4WeightOnlyConfig)
@register_quantize_module_handler(Int8DynamicActivationInt4WeightConfig)
def _int4_weight(module: nn.Module, config: Int4WeightOnlyConfig) -> nn.Module:
    weight, transposed = _float_weight(module)
    group_size = int4_group_for(weight.shape[1], config.group_size)
    qdata, scale, zero_point = quantize_int4_groupwise(
        weight, group_size, config.scale_dtype, config.zero_point_dtype
    )
    cls = (
        Int4WeightA8Tensor if isinstance(config, Int8DynamicActivationInt4WeightConfig) else Int4WeightTensor
    )
    qweight = cls(qdata, scale, zero_point, dtype=weight.dtype, group_size=group_size, transposed=transposed)
    qweight = qweight.with_kernel_layout() if config.layout == "auto" else qweight.with_layout(config.layout)
    module.weight = nn.Parameter(qweight, requires_grad=False)
    return module


def int4_group_for(k: int, asked: int) -> int:
    """The group size an int4 layer with ``k`` input features gets: the one asked for if it divides ``k``, else the
    largest supported one below it that does (logged: SmolLM2's K = 576 takes g64 for the default g128); a ``k``
    no supported group divides (not a multiple of 32) is ``LayerNotQuantized``."""
    if k % asked == 0:
        return asked
    fits = [g for g in INT4_GROUP_SIZES if g < asked and k % g == 0]
    if not fits:
        raise LayerNotQuantized(f"K={k} is not a multiple of any int4 group size {INT4_GROUP_SIZES}")
    log.info(
        "quantize_: K=%d is not a multiple of group_size=%d: group_size=%d for this layer", k, asked, fits[-1]
    )
    return fits[-1]


def _float_weight(module: nn.Module):
    """The ``[N, K]`` float weight to quantize, and whether the module holds it transposed (``Conv1D``: the
    quantized weight is then stored as its ``.t()`` view, which ``addmm(bias, x, weight)`` runs as a linear)."""
    weight = module.weight
    if isinstance(weight, QuantizedWeightTensor):
        raise ValueError(f"{module} is already quantized ({type(weight).__name__})")
    if is_conv1d(module):
        return weight.t(), True
    return weight, False


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, counting a quantized weight by its inner tensors."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if isinstance(t, QuantizedWeightTensor):
            total += t.nbytes_quantized()
        else:
            total += t.numel() * t.element_size()
    return total


def _storages(tensors) -> dict[int, int]:
    """data pointer -> bytes of each distinct storage under ``tensors`` (a quantized weight by its inner tensors)."""
    found: dict[int, int] = {}
    stack = list(tensors)
    while stack:
        t = stack.pop()
        if isinstance(t, QuantizedWeightTensor):
            stack.extend(t._tensors())
        elif isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            if storage.nbytes():
                found[storage.data_ptr()] = storage.nbytes()
    return found


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages that hold ``model``'s weights, measured by data pointer: its parameters and
    buffers, and every constant of each compiled graph (loaded in this process) that holds one of them (a frozen
    graph of this model: its prepacked weights, any copies). Compare with ``weight_bytes(model)``."""
    from ._compat import loaded_graph_modules

    own = _storages([*model.parameters(), *model.buffers()])
    resident = dict(own)
    for module in loaded_graph_modules():
        held = _storages(v for v in vars(module).values() if isinstance(v, torch.Tensor))
        if own.keys() & held.keys():
            resident.update(held)
    return sum(resident.values())


__all__ = [
    "LayerNotQuantized",
    "quantize_",
    "register_quantize_module_handler",
    "resident_weight_bytes",
    "weight_bytes",
]
