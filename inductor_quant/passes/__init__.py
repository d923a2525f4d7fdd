"""FX passes (stage 3 of the pipeline)."""

from .attention import decode_attention_pass
from .rewrite import prepack_pass, rewrite_pass

__all__ = ["decode_attention_pass", "prepack_pass", "rewrite_pass"]
