"""``QuantizedLinear``: ``nn.Linear`` with a quantized weight, running ``torch.ops.inductor_quant.quantized_matmul``,
and ``swap_quantized_linear``, which puts it in place of a model's ``nn.Linear`` layers (the module-swap workflow).

The weight layout and the numerics are the op's (``inductor_quant/quantized_matmul.py``). Under
``torch.compile(model, backend="quant_inductor")`` each layer lowers to the quantized kernel of its cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ..primitives import QMM_RANGES, dequantize_weight, qmm_groups, quantize_weight
from ..quantized_matmul import check_quantized_matmul_args

log = logging.getLogger(__name__)


class QuantizedLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W = (weight - weight_zero_point) * weight_scaler`` per channel or per block.

    Args:
        in_features, out_features: sizes of each input / output sample (positive ints).
        bias: hold an ``[out_features]`` float bias.
        weight_bits: 8 (int8) or 4 (int4 values in ``[-8, 7]``, kept in an int8 container: the op's contract;
            compiled with freezing, the kernel reads them packed to 4 bits).
        block_size: -1 for one scale per output channel, else one scale per ``block_size`` values along K
            (must divide ``in_features``).
        quantize_activation: quantize ``x`` per token to int8 in the forward (W8A8 / W4A8); else A16.
        zero_point: hold a zero point per channel / block (asymmetric weights).
        dtype: dtype of the bias; scales and zero points are fp32.

    Buffers (all saved in the ``state_dict``): ``weight`` int8 ``[out, in]``; ``weight_scaler`` fp32 ``[out]`` or
    ``[out, in / block_size]``; ``weight_zero_point`` like ``weight_scaler`` or ``None``; ``bias`` or ``None``.
    A new layer holds zeros: fill it with ``load_quantized_weight`` or build it with ``from_linear``.
    It is an inference layer: nothing in it is trained.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_bits: int = 8,
        block_size: int = -1,
        quantize_activation: bool = False,
        zero_point: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if weight_bits not in QMM_RANGES:
            raise ValueError(f"weight_bits must be one of {tuple(QMM_RANGES)}, got {weight_bits!r}")
        groups = qmm_groups(in_features, block_size)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_bits = weight_bits
        self.block_size = block_size
        self.quantize_activation = bool(quantize_activation)
        scale_shape = (out_features,) if block_size == -1 else (out_features, groups)
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scaler", torch.ones(scale_shape, device=device))
        zp = torch.zeros(scale_shape, device=device) if zero_point else None
        self.register_buffer("weight_zero_point", zp)
        b = torch.zeros(out_features, dtype=dtype or torch.float32, device=device) if bias else None
        self.register_buffer("bias", b)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        weight_bits: int = 8,
        block_size: int = -1,
        quantize_activation: bool = False,
        zero_point: bool = False,
    ) -> QuantizedLinear:
        """A layer holding ``linear``'s weight quantized by ``primitives.quantize_weight`` and its bias."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            weight_bits=weight_bits,
            block_size=block_size,
            quantize_activation=quantize_activation,
            zero_point=zero_point,
            device=linear.weight.device,
            dtype=linear.bias.dtype if linear.bias is not None else None,
        )
        q, scale, zp = quantize_weight(linear.weight, weight_bits, block_size, zero_point)
        layer.load_quantized_weight(q, scale, zp, linear.bias.detach() if linear.bias is not None else None)
        return layer

    @torch.no_grad()
    def load_quantized_weight(
        self,
        weight: torch.Tensor,
        scaler: torch.Tensor,
        zero_point: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        """Load an already quantized weight in the op's layout (checked: shapes, dtypes, int4 range)."""
        probe = torch.empty(1, self.in_features, device="meta")
        check_quantized_matmul_args(probe, weight, scaler, zero_point, self.block_size, bias)
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight must be [{self.out_features}, {self.in_features}] for this layer, got {tuple(weight.shape)}"
            )
        if zero_point is None and self.weight_zero_point is not None:
            raise ValueError("this layer has a zero point (built with zero_point=True), got zero_point=None")
        if zero_point is not None and self.weight_zero_point is None:
            raise ValueError("this layer has no zero point (built with zero_point=False), got a zero_point")
        if (bias is not None) and self.bias is None:
            raise ValueError("this layer was built with bias=False, got a bias")
        qmin, qmax = QMM_RANGES[self.weight_bits]
        lo, hi = (int(v) for v in torch.aminmax(weight))
        if lo < qmin or hi > qmax:
            raise ValueError(
                f"weight_bits={self.weight_bits} needs weight in [{qmin}, {qmax}], got [{lo}, {hi}]"
            )
        self.weight.copy_(weight)
        self.weight_scaler.copy_(scaler)
        if zero_point is not None:
            self.weight_zero_point.copy_(zero_point)
        if bias is not None:
            self.bias.copy_(bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 ``[out, in]`` weight this layer multiplies by."""
        return dequantize_weight(self.weight, self.weight_scaler, self.weight_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.inductor_quant.quantized_matmul(
            x,
            self.weight,
            self.weight_scaler,
            self.weight_zero_point,
            self.block_size,
            self.weight_bits == 4,
            self.quantize_activation,
            self.bias,
        )

    def extra_repr(self) -> str:
        act = 8 if self.quantize_activation else 16
        scheme = "per_channel" if self.block_size == -1 else f"block_size={self.block_size}"
        zp = ", zero_point" if self.weight_zero_point is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"W{self.weight_bits}A{act}, {scheme}{zp}"
        )


def swap_quantized_linear(
    model: nn.Module,
    *,
    weight_bits: int = 8,
    block_size: int = -1,
    quantize_activation: bool = False,
    zero_point: bool = False,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` (for which ``filter_fn(module, name)`` is true) by a
    ``QuantizedLinear`` holding its quantized weight; returns ``model``.

    Left as they are, with a log line saying why: layers whose ``in_features`` a ``block_size`` does not divide,
    and the output projection of ``nn.MultiheadAttention`` (which reads the float weight directly).
    """
    settings = dict(
        weight_bits=weight_bits,
        block_size=block_size,
        quantize_activation=quantize_activation,
        zero_point=zero_point,
    )
    if weight_bits not in QMM_RANGES:
        raise ValueError(f"weight_bits must be one of {tuple(QMM_RANGES)}, got {weight_bits!r}")
    if block_size != -1 and (not isinstance(block_size, int) or block_size <= 0):
        raise ValueError(f"block_size must be -1 (per-channel) or a positive int, got {block_size!r}")
    swaps = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            log.info(
                "swap_quantized_linear: %s.out_proj left as is (MultiheadAttention reads it)", parent_name
            )
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear) or (filter_fn is not None and not filter_fn(child, name)):
                continue
            if block_size != -1 and child.in_features % block_size:
                log.info(
                    "swap_quantized_linear: %s left as is: block_size=%d does not divide in_features=%d",
                    name,
                    block_size,
                    child.in_features,
                )
                continue
            swaps.append((parent, child_name, child, name))
    for parent, child_name, child, name in swaps:
        setattr(parent, child_name, QuantizedLinear.from_linear(child, **settings))
        log.debug("swap_quantized_linear: %s -> QuantizedLinear", name)
    log.info("swap_quantized_linear: %d nn.Linear layers swapped", len(swaps))
    return model
