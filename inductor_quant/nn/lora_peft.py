"""PEFT interoperability: PEFT's own LoRA ``Linear`` layer, with merge / unmerge that work on this package's
quantized weights (``lora_merge.py``: requantized on the weight's grid, unmerged bit-exactly).

One line of set-up, on the ``LoraConfig`` before ``get_peft_model``::

    config = inductor_quant.nn.use_with_peft(LoraConfig(r=8, target_modules=["up", "down"]))

Everything else (training, ``merge_adapter``, ``unmerge_adapter``, ``merge_and_unload``, saving adapters) is PEFT's.
Layers whose weight is a plain float tensor behave exactly as PEFT's ``lora.Linear``. Requires ``peft``.
"""

from __future__ import annotations

import warnings
from typing import Any

from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..tensor import QuantizedWeightTensor
from .lora import check_lora_args
from .lora_merge import MergeRecord, merge_adapters, unmerge_lora_delta


class PeftQuantizedLoraLinear(PeftLoraLinear):
    """PEFT's ``lora.Linear`` whose ``merge`` / ``unmerge`` requantize into an ``Int8WeightTensor`` /
    ``Int4WeightTensor`` base weight instead of adding a float delta to it (which such a weight cannot hold).

    On a quantized base, ``lora_bias``, ``fan_in_fan_out`` and LoRA variants (DoRA and the like) are rejected with a
    ``ValueError``: none of them can be merged into the quantized weight.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        self._merges: list[tuple[str, MergeRecord]] = []
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    @property
    def _quantized(self) -> bool:
        return isinstance(self.get_base_layer().weight, QuantizedWeightTensor)

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any
    ) -> None:
        if self._quantized:
            check_lora_args(adapter_name, r, lora_alpha, config.lora_dropout, config.lora_bias)
            if config.fan_in_fan_out:
                raise ValueError(
                    f"fan_in_fan_out=True does not apply to a quantized nn.Linear (adapter {adapter_name!r})"
                )
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any):
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if variant is not None and self._quantized:
            raise ValueError(
                f"LoRA variant {getattr(variant, '__name__', variant)} cannot be merged into a quantized weight; "
                "use plain LoRA on quantized layers"
            )
        return variant

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        if not self._quantized:
            return super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.lora_A]
        adapters = [(n, self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n]) for n in names]
        for name, record in merge_adapters(self.get_base_layer().weight, adapters, safe_merge):
            self._merges.append((name, record))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self._quantized:
            return super().unmerge()
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self._merges:
            name, record = self._merges.pop()
            unmerge_lora_delta(self.get_base_layer().weight, record)
            self.merged_adapters.remove(name)


def use_with_peft(config: LoraConfig) -> LoraConfig:
    """Make ``get_peft_model(model, config)`` build ``PeftQuantizedLoraLinear`` for the ``nn.Linear`` layers it
    targets (through PEFT's custom-module hook), so adapters on quantized layers can be merged. Returns ``config``."""
    config._register_custom_module({nn.Linear: PeftQuantizedLoraLinear})
    return config


__all__ = ["PeftQuantizedLoraLinear", "use_with_peft"]
