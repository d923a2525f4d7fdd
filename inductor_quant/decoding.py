"""A lean decode loop for Hugging Face causal LMs: the package's alternative to ``model.generate()`` where that
loop's own per-token work shows (on SmolLM2-135M, ~2 ms of a ~10 ms step goes to ``generate()``'s logits
processors, stopping criteria and bookkeeping).

``generate(model, input_ids, max_new_tokens)`` keeps a static KV cache on the model and runs two compiled steps: the
prompt (its length dynamic, so a new prompt length reuses the graph) and one token. Each step runs the model and
picks the next token inside the compiled graph (greedy, or top-k sampling), so the logits never leave it. Cache
lengths are rounded up to ``CACHE_BUCKET`` positions: a new ``max_new_tokens`` reuses the compiled graphs.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Static cache lengths are multiples of this: generations up to this many positions share one cache (and so one
# pair of compiled graphs, which specialise on the cache's shape). The decode attention kernel reads only the filled
# positions, so a larger bucket costs little per step.
CACHE_BUCKET = 256


@dataclass
class _Runner:
    """What ``generate`` keeps per model: its compiled step per backend and a static cache per (batch, length
    bucket, dtype, device)."""

    steps: dict = field(default_factory=dict)
    caches: dict = field(default_factory=dict)


_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _next_token(model, cache, ids, cache_position, top_k: int | None, temperature: float):
    logits = model(
        input_ids=ids, past_key_values=cache, cache_position=cache_position, use_cache=True, logits_to_keep=1
    ).logits[:, -1]
    if top_k is None:
        return logits.argmax(dim=-1)
    values, indices = (logits.float() / temperature).topk(top_k, dim=-1)
    choice = torch.multinomial(values.softmax(dim=-1), num_samples=1)
    return indices.gather(-1, choice)[:, 0]


def _compiled_step(backend: str | Callable):
    """``_next_token`` compiled for one model, without Dynamo's guards on the model's module tree.

    Those guards (type, attribute and dict checks on every submodule: ~4000 on a 30-layer model) cost ~1 ms of a
    ~8 ms SmolLM2 step. The step is compiled from its own copy of the code object, so Dynamo's cache for it is this
    model's alone (Dynamo caches per code object): the skipped guards could only ever have told this model from
    itself. The cost of skipping them: a module of the model replaced after the first call is not seen (its weights
    are frozen into the graphs anyway; ``torch._dynamo.reset()`` and a new model recompile)."""
    code = _next_token.__code__.replace()  # a new code object: a cache of its own
    step = types.FunctionType(code, _next_token.__globals__, "_next_token", _next_token.__defaults__)
    return torch.compile(
        step, backend=backend, options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    )


def static_cache(config, batch: int, length: int, dtype: torch.dtype, device):
    """A transformers ``StaticCache`` of ``length`` positions for ``config``'s model, its tensors made up front (a
    cache that initializes itself inside the first compiled graph makes a second prompt graph)."""
    import transformers

    cache = transformers.StaticCache(config=config, max_cache_len=length)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    cache.early_initialization(batch, kv_heads, head_dim, dtype, torch.device(device))
    return cache


def _cache(model, runner: _Runner, batch: int, length: int, dtype: torch.dtype, device: torch.device):
    bucket = -(-length // CACHE_BUCKET) * CACHE_BUCKET
    key = (batch, bucket, dtype, device)
    if key not in runner.caches:
        runner.caches[key] = static_cache(model.config, batch, bucket, dtype, device)
    cache = runner.caches[key]
    cache.reset()
    return cache


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    top_k: int | None = None,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    backend: str | Callable = "quant_inductor",
) -> torch.Tensor:
    """``input_ids`` ([batch, prompt], no padding) followed by up to ``max_new_tokens`` generated tokens.

    Greedy unless ``top_k`` is given (then sampled from the ``top_k`` most likely tokens at ``temperature``, with
    torch's global generator). Stops early once every sequence has produced ``eos_token_id``. The first call compiles
    ``model`` with ``backend`` (the graphs are kept with the model, for later calls); quantize it first.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.is_floating_point():
        raise ValueError(
            f"input_ids must be integer [batch, prompt] token ids, got shape {tuple(input_ids.shape)} of "
            f"{input_ids.dtype}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be in [1, {model.config.vocab_size}], got {top_k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    runner = _RUNNERS.setdefault(model, _Runner())
    if backend not in runner.steps:
        runner.steps[backend] = _compiled_step(backend)
    step = runner.steps[backend]
    batch, prompt = input_ids.shape
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    cache = _cache(model, runner, batch, prompt + max_new_tokens, dtype, input_ids.device)

    ids = input_ids.clone()
    torch._dynamo.maybe_mark_dynamic(ids, 1)  # one prompt graph for every prompt length
    positions = torch.arange(prompt, device=input_ids.device)
    token = step(model, cache, ids, positions, top_k, temperature)
    tokens = [token]
    done = token == eos_token_id if eos_token_id is not None else None
    for position in range(prompt, prompt + max_new_tokens - 1):
        if done is not None and bool(done.all()):
            break
        cache_position = torch.tensor([position], device=input_ids.device)
        token = step(model, cache, token[:, None], cache_position, top_k, temperature)
        if done is not None:
            token = token.masked_fill(done, eos_token_id)  # a finished sequence keeps emitting its end token
            done |= token == eos_token_id
        tokens.append(token)
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
