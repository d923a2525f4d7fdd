"""Tensor parallelism for quantized weights: the sharding table and the ops DTensor reaches (``sharding.py``)."""

from .sharding import SHARD_RULES, slice_weight

__all__ = ["SHARD_RULES", "slice_weight"]
