"""Quantization configs: one frozen dataclass per scheme, validated at construction (stage 1 of the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
