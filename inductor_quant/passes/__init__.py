"""FX passes (stage 3 of the pipeline)."""

from .rewrite import prepack_pass, rewrite_pass

__all__ = ["prepack_pass", "rewrite_pass"]
