"""FX passes (stage 3 of the pipeline)."""

from .rewrite import rewrite_pass

__all__ = ["rewrite_pass"]
