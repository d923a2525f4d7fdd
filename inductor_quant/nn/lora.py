"""LoRA on quantized linear layers: ``LoraLinear`` wraps an ``nn.Linear`` whose weight is an int8 / int4 subclass
(``quantize_``), trains low-rank adapters beside the frozen quantized base, and merges them into the quantized
weight and out again bit-exactly (``lora_merge.py``). ``add_lora`` / ``merge_and_unload`` apply it to a model;
``lora_peft.py`` gives the same merge to PEFT's own LoRA layers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..tensor import QuantizedWeightTensor
from .lora_merge import MergeRecord, check_finite_delta, merge_adapters, unmerge_lora_delta

log = logging.getLogger(__name__)


def check_lora_args(adapter_name: str, r: int, alpha: float, dropout: float, lora_bias: bool) -> None:
    """The checks shared by ``LoraLinear`` and the PEFT layer: each error names the bad value."""
    if lora_bias:
        raise ValueError(
            f"lora_bias=True is not supported on a quantized base layer (adapter {adapter_name!r}): its bias "
            "cannot be merged into the quantized weight"
        )
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"lora alpha must be finite, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout!r}")


class LoraLinear(nn.Module):
    """``y = base(x) + sum over active adapters a of (alpha_a / r_a) * B_a(A_a(dropout_a(x)))``.

    ``base`` is an ``nn.Linear`` with a quantized weight (``Int8WeightTensor`` or ``Int4WeightTensor``); it stays
    frozen and quantized, and gradients flow through it to ``x``. Each adapter is ``A: [r, in]`` (Kaiming-uniform)
    and ``B: [out, r]`` (zeros, so a new adapter leaves the output unchanged), kept in ``dtype`` (fp32 by default):
    the input is cast to it and the adapter's output back to the base output's dtype.

    ``merge`` folds adapters into the quantized weight (requantized on its own grid; see ``lora_merge.py`` for
    the error this costs), after which they cost nothing in the forward; ``unmerge`` restores the weight
    bit-exactly. Merged adapters are skipped in the forward; active adapters that are not merged still run.
    """

    def __init__(
        self,
        base: nn.Linear,
        adapter_name: str = "default",
        *,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        lora_bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) or not isinstance(base.weight, QuantizedWeightTensor):
            raise ValueError(
                f"LoraLinear needs an nn.Linear with a quantized weight (run quantize_ first), got {base!r}"
            )
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dtype = dtype
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._merges: list[
            tuple[str, MergeRecord]
        ] = []  # LIFO; not state: a checkpoint holds the merged weight
        self.add_adapter(adapter_name, r=r, alpha=alpha, dropout=dropout, lora_bias=lora_bias)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def add_adapter(
        self, name: str, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, lora_bias: bool = False
    ) -> None:
        """Add adapter ``name`` and make it active (alongside the adapters already active)."""
        check_lora_args(name, r, alpha, dropout, lora_bias)
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists; known: {list(self.lora_A)}")
        device = self.base_layer.weight.device
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=self.dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=device, dtype=self.dtype)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / r
        self.active_adapters.append(name)

    def set_adapter(self, names: str | Sequence[str]) -> None:
        """Make exactly ``names`` active."""
        names = [names] if isinstance(names, str) else list(names)
        self._check_known(names)
        self.active_adapters = names

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``; it must not be merged."""
        self._check_known([name])
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged; unmerge() before deleting it")
        for d in (self.lora_A, self.lora_B, self.lora_dropout):
            del d[name]
        del self.scaling[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            xa = self.lora_dropout[name](x.to(self.dtype))
            lora = self.lora_B[name](self.lora_A[name](xa)) * self.scaling[name]
            result = result + lora.to(result.dtype)
        return result

    def get_delta_weight(self, name: str) -> torch.Tensor:
        """``(alpha / r) * B @ A`` of adapter ``name``, fp32 ``[out, in]``."""
        self._check_known([name])
        return (self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()) * self.scaling[name]

    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold ``adapter_names`` (default: the active adapters) into the quantized base weight.

        An adapter whose delta is not finite is never merged: a ``ValueError`` names it. With ``safe_merge=True``
        every adapter is checked before any is merged (all or nothing); otherwise the ones before it stay merged.
        """
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        self._check_known(names)
        names = [n for n in names if n not in self.merged_adapters]
        adapters = [(n, self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n]) for n in names]
        for name, record in merge_adapters(self.base_layer.weight, adapters, safe_merge):
            self._merges.append((name, record))
            self.merged_adapters.append(name)
            log.debug("LoRA: merged adapter %r into the quantized base weight", name)

    def unmerge(self) -> None:
        """Take every merged adapter out of the base weight, last merged first; the weight is then bit-identical
        to what it was before the first merge."""
        if not self._merges:
            warnings.warn("LoraLinear.unmerge: no adapter is merged", stacklevel=2)
            return
        while self._merges:
            name, record = self._merges.pop()
            unmerge_lora_delta(self.base_layer.weight, record)
            self.merged_adapters.remove(name)

    def _check_known(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.lora_A]
        if unknown:
            raise ValueError(f"unknown LoRA adapter(s) {unknown}; known: {list(self.lora_A)}")

    def extra_repr(self) -> str:
        ranks = {n: a.out_features for n, a in self.lora_A.items()}
        return f"adapters(rank)={ranks}, active={self.active_adapters}, merged={self.merged_adapters}"


def _is_quantized_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and isinstance(module.weight, QuantizedWeightTensor)


def add_lora(
    model: nn.Module,
    adapter_name: str = "default",
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Give adapter ``adapter_name`` to every quantized ``nn.Linear`` of ``model`` that ``filter_fn(module, fqn)``
    accepts (default: all of them), wrapping each in a ``LoraLinear`` (or adding to the one already there).

    Everything but the adapters (new and existing) is frozen (``requires_grad=False``). Returns ``model``.
    """
    filter_fn = filter_fn or _is_quantized_linear
    adapters = {id(p) for m in model.modules() if isinstance(m, LoraLinear) for p in _adapter_parameters(m)}
    for p in model.parameters():
        if id(p) not in adapters:
            p.requires_grad_(False)
    count = 0
    for fqn, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            if filter_fn(module.base_layer, fqn):
                module.add_adapter(adapter_name, r=r, alpha=alpha, dropout=dropout)
                count += 1
        elif _is_quantized_linear(module, fqn) and filter_fn(module, fqn) and not _inside_lora(model, fqn):
            _set_submodule(
                model, fqn, LoraLinear(module, adapter_name, r=r, alpha=alpha, dropout=dropout, dtype=dtype)
            )
            count += 1
    if not count:
        raise ValueError(
            "add_lora found no quantized nn.Linear to adapt (did quantize_ run, and does filter_fn match?)"
        )
    log.info("add_lora: adapter %r (r=%d, alpha=%s) on %d layer(s)", adapter_name, r, alpha, count)
    return model


def merge_and_unload(
    model: nn.Module, safe_merge: bool = False, adapter_names: Sequence[str] | None = None
) -> nn.Module:
    """Merge the adapters of every ``LoraLinear`` in ``model`` and put its (quantized) base layer back in its place
    (``model`` itself may be a ``LoraLinear``: its base layer is returned). With ``safe_merge=True`` every layer's
    adapters are checked for non-finite values before any layer changes. Returns the model."""
    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, LoraLinear)]
    if safe_merge:
        for _, layer in layers:
            for name in layer.active_adapters if adapter_names is None else adapter_names:
                if name not in layer.merged_adapters:
                    layer._check_known([name])
                    check_finite_delta(
                        layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name], name
                    )
    for fqn, layer in layers:
        layer.merge(adapter_names=adapter_names)
        if not fqn:
            return layer.base_layer
        _set_submodule(model, fqn, layer.base_layer)
    return model


def _adapter_parameters(layer: LoraLinear):
    return [*layer.lora_A.parameters(), *layer.lora_B.parameters()]


def _inside_lora(model: nn.Module, fqn: str) -> bool:
    parts = fqn.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), LoraLinear) for i in range(1, len(parts)))


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    if not fqn:
        raise ValueError("add_lora adapts the layers of a model, not a bare nn.Linear: wrap it in LoraLinear")
    parent, _, name = fqn.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


__all__ = ["LoraLinear", "add_lora", "merge_and_unload"]
