"""Quantization configs: one frozen dataclass per scheme, validated at construction (stage 1 of the pipeline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .primitives import (
    ACTIVATION_GRANULARITIES,
    INT4_GROUP_SIZES,
    INT4_ZERO_POINT_DTYPES,
    TERNARY_WEIGHT_GRANULARITIES,
    WEIGHT_LAYOUTS,
)

_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# integer, or fractional in 16 bits (INT4_ZERO_POINT_DTYPES also has fp32, which the numerics take but the CUDA
# template reads as integers: quantized_matmul's cells hold integer-valued fp32 zero points)
_ZERO_POINT_DTYPES = tuple(d for d in INT4_ZERO_POINT_DTYPES if d != torch.float32)


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """Per-output-channel symmetric int8 weights; activations stay in their own float dtype.

    ``scale_dtype`` is the dtype the per-channel scales are stored in (fp32 keeps them exact; the fused kernels
    apply them in fp32 whatever the storage).

    ``layout``: how the int8 values are held. ``"auto"`` (default): a CPU weight whose K is a multiple of 32 in the
    blocked layout its CPU kernels read (so a compiled model reads the module's own copy and holds each weight once),
    any other in ``"plain"`` ``[N, K]`` row-major; ``"plain"`` / ``"blocked"`` force one.
    """

    scale_dtype: torch.dtype = torch.float32
    layout: str = "auto"

    def __post_init__(self) -> None:
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_SCALE_DTYPES}, got {self.scale_dtype}")
        _check_layout(self.layout)


def _check_layout(layout: str) -> None:
    if layout not in ("auto", *WEIGHT_LAYOUTS):
        raise ValueError(f"layout must be one of {('auto', *WEIGHT_LAYOUTS)}, got {layout!r}")


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """Asymmetric int4 weights in groups of ``group_size`` consecutive input features (a scale and an integer zero
    point per group, two values per byte); activations stay in their own float dtype.

    ``group_size`` is one of 32, 64, 128, 256. A layer whose K it does not divide takes the largest smaller one
    that does (``api.int4_group_for``, logged); a K that is not a multiple of 32 stays float (logged). There is no
    padding. ``scale_dtype`` is the dtype the per-group scales are stored in.

    ``zero_point_dtype``: ``torch.uint8`` (default), an integer zero point in [0, 15] per group, whose range then
    always contains 0; or a float dtype (``torch.float16``: 8 more bits per group), a fractional zero point, each
    group on its own [min, max] range (the form of llama.cpp's Q4_1 / Q4_K: at g32 with fp16 scales and zero
    points, 5 bits per weight, the size of Q4_1). The decode kernels read either at the same speed.

    ``layout``: as ``Int8WeightOnlyConfig``'s; ``"auto"`` holds a CPU weight whose K is a multiple of 128 in the
    blocked layout of the int4 CPU kernels (other K: plain, and compiled decode graphs read a packed copy, padded).
    """

    group_size: int = 128
    scale_dtype: torch.dtype = torch.bfloat16
    zero_point_dtype: torch.dtype = torch.uint8
    layout: str = "auto"

    def __post_init__(self) -> None:
        _check_layout(self.layout)
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_SCALE_DTYPES}, got {self.scale_dtype}")
        if self.zero_point_dtype not in _ZERO_POINT_DTYPES:
            raise ValueError(
                f"zero_point_dtype must be one of {_ZERO_POINT_DTYPES}, got {self.zero_point_dtype}"
            )


@dataclass(frozen=True)
class Int8DynamicActivationInt4WeightConfig(Int4WeightOnlyConfig):
    """W4A8: the int4 groupwise weights of ``Int4WeightOnlyConfig`` (same fields, same quantization), and a linear
    that quantizes its activations to int8 per token (absmax / 127, round to nearest) for an integer dot product,
    as llama.cpp does for its 4-bit formats. Faster decode on CPUs with AVX512-VNNI, at an accuracy cost on top of
    the weights' (README, int4 section). Inference only: a forward that needs gradients raises. Integer zero
    points only (its kernels' exact integer group sums assume them). Its weights are held plain: the decode kernel
    reads a lane layout made at compile time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.zero_point_dtype != torch.uint8:
            raise ValueError(
                f"W4A8 takes integer (torch.uint8) zero points only, got {self.zero_point_dtype}"
            )
        if self.layout == "blocked":
            raise ValueError("W4A8 weights are held plain (layout 'auto' or 'plain'), got layout='blocked'")


@dataclass(frozen=True)
class BitQuantConfig:
    """How ``nn.BitLinear`` quantizes: ternary {-1, 0, +1} weights with an absmean scale and int8 activations with
    an absmax scale (BitNet b1.58).

    ``activation_dtype``: only ``"int8"``. ``activation_granularity``: one activation scale per row of the input
    (``"per_token"``) or one for the whole input (``"per_tensor"``). ``weight_granularity``: one weight scale for
    the layer (``"per_tensor"``, as in BitNet) or one per output feature (``"per_channel"``). ``eps``: the smallest
    absmean / absmax a scale is computed from (an all-zero input or weight does not divide by zero).
    """

    activation_dtype: str = "int8"
    activation_granularity: str = "per_token"
    weight_granularity: str = "per_tensor"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.activation_dtype != "int8":
            raise ValueError(f"activation_dtype must be 'int8', got {self.activation_dtype!r}")
        if self.activation_granularity not in ACTIVATION_GRANULARITIES:
            raise ValueError(
                f"activation_granularity must be one of {ACTIVATION_GRANULARITIES}, "
                f"got {self.activation_granularity!r}"
            )
        if self.weight_granularity not in TERNARY_WEIGHT_GRANULARITIES:
            raise ValueError(
                f"weight_granularity must be one of {TERNARY_WEIGHT_GRANULARITIES}, got {self.weight_granularity!r}"
            )
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {self.eps!r}")
