"""Quantization configs: one frozen dataclass per scheme, validated at construction (stage 1 of the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .primitives import INT4_GROUP_SIZES

_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """Per-output-channel symmetric int8 weights; activations stay in their own float dtype.

    ``scale_dtype`` is the dtype the per-channel scales are stored in (fp32 keeps them exact; the fused kernels
    apply them in fp32 whatever the storage).
    """

    scale_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_SCALE_DTYPES}, got {self.scale_dtype}")


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """Asymmetric int4 weights in groups of ``group_size`` consecutive input features (a scale and an integer zero
    point per group, two values per byte); activations stay in their own float dtype.

    ``group_size`` is one of 32, 64, 128, 256 and must divide each quantized layer's K: there is no padding, and a
    layer whose K it does not divide is a ``ValueError`` naming K (skip such layers with ``quantize_``'s
    ``filter_fn``). ``scale_dtype`` is the dtype the per-group scales are stored in.
    """

    group_size: int = 128
    scale_dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_SCALE_DTYPES}, got {self.scale_dtype}")
