"""Tensor parallelism for quantized weights: the sharding table and the aten ops DTensor reaches (``sharding.py``),
and the collectives on quantized shards (``collectives.py``, where torch.distributed is available)."""

import torch

from .sharding import SHARD_RULES, slice_weight

if torch.distributed.is_available():
    from . import collectives  # noqa: F401

__all__ = ["SHARD_RULES", "slice_weight"]
