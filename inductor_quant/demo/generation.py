"""Generation with one model variant, as the main job and the llama.cpp benchmark run it: a model copy (float, or
quantized with one config), its forward compiled the way Hugging Face documents it, a static cache, and what the
tables measure about it."""

from __future__ import annotations

import copy

import torch
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.decoding import static_cache


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class Variant:
    """One model copy (float, or quantized with one config), its compiled forward and its static cache."""

    def __init__(self, name: str, float_model, dtype: torch.dtype, max_cache_len: int, config=None):
        """``name`` "bf16" runs ``float_model`` itself eagerly, "inductor" a copy under stock Inductor; any other
        name a copy quantized with ``config`` under quant_inductor."""
        self.name = name
        before = rss_mib()
        self.model = float_model if name == "bf16" else copy.deepcopy(float_model)
        counters["inductor_quant"].clear()
        if config is not None:
            iq.quantize_(self.model, config)
        if name != "bf16":
            backend = "inductor" if name == "inductor" else "quant_inductor"
            self.model.forward = torch.compile(self.model.forward, backend=backend)
        self.cache = static_cache(self.model.config, 1, max_cache_len, dtype, "cpu")
        self.rss_before = before
        self.label = f"eager {str(dtype).removeprefix('torch.')}" if name == "bf16" else name

    def generate(self, ids, new_tokens: int):
        """Greedy generation of exactly ``new_tokens`` tokens, with the step logits (every call alike, so the timed
        calls reuse the graphs the first one compiled)."""
        self.cache.reset()
        return self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            cache=self.cache,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def weight_mib(self) -> float:
        """The weights' resident MiB, measured: the model's storages and those of its compiled graphs."""
        return iq.resident_weight_bytes(self.model) / 2**20
