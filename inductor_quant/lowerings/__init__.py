"""Lowerings of the package's ops (stage 5 of the pipeline); importing this module registers them."""

from . import attention, int4, int8, quantized_matmul, ternary  # noqa: F401
