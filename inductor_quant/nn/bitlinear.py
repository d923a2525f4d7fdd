"""``BitLinear``: a 1.58-bit linear layer (ternary weights, int8 activations) from training to deployment.

Three states, one module:

* training (``layer.train()``): the float ``weight`` is the parameter; each forward quantizes it to ternary (absmean
  scale) and the activations to int8 (absmax scale) and multiplies the dequantized values, with straight-through
  gradients to ``weight`` and to the input;
* evaluation (``layer.eval()``): switching to eval quantizes ``weight`` once into ``qweight`` (2-bit codes, four per
  byte, ``primitives.pack_ternary``) and ``qweight_scale``; the forward quantizes the activations to int8 and runs
  ``torch.ops.inductor_quant.ternary_mm`` on the packed weight (a VNNI GEMV kernel under
  ``torch.compile(backend="quant_inductor")``);
* deployed (``layer.deploy()``): as evaluation, but the float weight is dropped and ``qweight`` / ``qweight_scale``
  become the saved state. There is no way back to training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import BitQuantConfig
from ..ops import ternary_linear
from ..primitives import (
    fake_quantize_activation_int8,
    fake_quantize_ternary,
    pack_ternary,
    quantize_ternary,
    unpack_ternary,
)

INIT_METHODS = ("xavier_uniform", "kaiming_uniform")


class BitLinear(nn.Module):
    """A drop-in for ``nn.Linear(in_features, out_features, bias)`` with ternary weights and int8 activations.

    Args:
        in_features, out_features: sizes of each input / output sample (positive ints).
        bias: learn an additive float bias (kept in full precision in every state).
        init_method: ``"xavier_uniform"`` or ``"kaiming_uniform"`` for ``weight``; the bias starts at zero.
        quant_config: ``BitQuantConfig`` (default: per-token int8 activations, one absmean weight scale).

    Attributes:
        weight: the float ``[out_features, in_features]`` parameter; ``None`` once deployed.
        bias: the float ``[out_features]`` parameter, or ``None``.
        qweight: ``[out_features, ceil(in_features / 256) * 64]`` uint8, the packed ternary weight (eval / deployed;
            ``None`` in training). ``ternary_weight()`` unpacks it to int8 {-1, 0, +1}.
        qweight_scale: fp32 ``[1]`` (per-tensor) or ``[out_features]`` (per-channel) scales (eval / deployed).
        is_deployed: ``deploy()`` was called.

    A deployed checkpoint is loaded into a layer deployed first: ``BitLinear(...).deploy().load_state_dict(sd)``.
    The eval forward is inference only: it has no gradient.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_method: str = "xavier_uniform",
        quant_config: BitQuantConfig | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if init_method not in INIT_METHODS:
            raise ValueError(f"init_method must be one of {INIT_METHODS}, got {init_method!r}")
        if quant_config is None:
            quant_config = BitQuantConfig()
        if not isinstance(quant_config, BitQuantConfig):
            raise TypeError(f"quant_config must be a BitQuantConfig, got {type(quant_config).__name__}")
        self.in_features = in_features
        self.out_features = out_features
        self.init_method = init_method
        self.quant_config = quant_config
        self._deployed = False
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        # derived from `weight` while training / evaluating (not saved); the saved state once deployed
        self.register_buffer("qweight", None, persistent=False)
        self.register_buffer("qweight_scale", None, persistent=False)
        self.register_load_state_dict_post_hook(_requantize_after_load)
        self.reset_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_config: BitQuantConfig | None = None) -> BitLinear:
        """A BitLinear (in training mode) holding a copy of ``linear``'s weight and bias."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            quant_config=quant_config,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @property
    def use_bias(self) -> bool:
        return self.bias is not None

    @property
    def is_deployed(self) -> bool:
        return self._deployed

    def reset_parameters(self) -> None:
        if self._deployed:
            raise RuntimeError("reset_parameters: this BitLinear is deployed and has no float weight")
        if self.init_method == "xavier_uniform":
            nn.init.xavier_uniform_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if not self.training:
            self._quantize_weight()

    def train(self, mode: bool = True) -> BitLinear:
        if mode and self._deployed:
            raise RuntimeError(
                "this BitLinear is deployed: its float weight is gone and it cannot train again"
            )
        super().train(mode)
        if self._deployed:
            return self
        if mode:
            self.qweight = self.qweight_scale = None  # stale as soon as the weight trains
        else:
            self._quantize_weight()
        return self

    @torch.no_grad()
    def _quantize_weight(self) -> None:
        q, scale = quantize_ternary(self.weight, self.quant_config.weight_granularity, self.quant_config.eps)
        self.qweight = pack_ternary(q)
        self.qweight_scale = scale

    def deploy(self) -> BitLinear:
        """Quantize for good: drop the float weight, keep ``qweight`` / ``qweight_scale`` (now saved in the
        ``state_dict``), switch to eval. Irreversible; calling it again does nothing."""
        if self._deployed:
            return self
        self._quantize_weight()
        del self.weight
        self.register_parameter("weight", None)
        self._non_persistent_buffers_set.difference_update({"qweight", "qweight_scale"})
        self._deployed = True
        super().train(False)
        return self

    def ternary_weight(self) -> torch.Tensor:
        """The ``[out_features, in_features]`` ternary weight as int8 {-1, 0, +1} (eval / deployed)."""
        if self.qweight is None:
            raise RuntimeError("ternary_weight: the layer is in training mode; call eval() or deploy() first")
        return unpack_ternary(self.qweight, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"BitLinear({self.in_features} -> {self.out_features}) got an input with {x.shape[-1]} features "
                f"(shape {tuple(x.shape)})"
            )
        cfg = self.quant_config
        if self.training:
            w = fake_quantize_ternary(self.weight, cfg.weight_granularity, cfg.eps)
            xq = fake_quantize_activation_int8(x, cfg.activation_granularity, cfg.eps)
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return F.linear(xq, w.to(x.dtype), bias)
        return ternary_linear(
            x, self.qweight, self.qweight_scale.float(), self.bias, cfg.activation_granularity, cfg.eps
        )

    def extra_repr(self) -> str:
        cfg = self.quant_config
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}, "
            f"activations={cfg.activation_granularity}, weights={cfg.weight_granularity}, "
            f"deployed={self._deployed}"
        )


def _requantize_after_load(module: BitLinear, incompatible_keys) -> None:
    """A float weight loaded while evaluating replaces the one ``qweight`` was made from: quantize it again."""
    if not module.training and not module.is_deployed:
        module._quantize_weight()
