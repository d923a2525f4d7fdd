"""Shared test helpers: fresh compiles, generated code, per-dtype tolerances, tiny models."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor.utils import clear_caches, fresh_cache, run_and_get_code

import inductor_quant  # noqa: F401  (registers the ops and the subclass)
from inductor_quant.lowerings import common as lowering_common

# Tolerances for a kernel vs the fp32 reference (`primitives.int8_linear_reference`), per output dtype:
# fp32 differs only by summation order; bf16 / fp16 by one or two roundings of the output.
TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def verify(actual: torch.Tensor, expected: torch.Tensor, precision: torch.dtype | None = None) -> None:
    """Compare with the tolerance of ``precision`` (default: the output dtype); pass the activation dtype when a
    kernel computes in it and only then widens the output."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[precision or actual.dtype])


def pytest_configure(config):
    # (registered here rather than in pyproject.toml, whose hash keys the cached CI environment)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (Triton level E); skipped without one")


def _reset_compile_state() -> None:
    torch._dynamo.reset()
    counters.clear()
    lowering_common.reset_tuning_cache()
    clear_caches()


# Off for the whole run (and, through the environment, for the processes tests launch): a hit would return a compiled
# graph without running the package's passes, lowerings or autotuning, which is what the tests are about.
_GRAPH_CACHES_OFF = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}


@pytest.fixture(scope="session", autouse=True)
def _session_kernel_cache():
    """One Inductor cache directory for the whole run, removed at its end: identical generated C++ / Triton sources
    (the same model or layer in several tests) are compiled once. Compiled graphs are never cached (see above), so
    every test still traces, rewrites, lowers and tunes afresh."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in _GRAPH_CACHES_OFF.items():
            env.setenv(name, value)
        with (
            fresh_cache(),
            inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False),
            functorch_config.patch(enable_autograd_cache=False),
        ):
            yield


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    """Every test compiles from scratch: no Dynamo cache, no compiled graph from another test, no remembered tuning,
    no in-memory module of another test (the compiled kernels on disk are shared, see ``_session_kernel_cache``)."""
    _reset_compile_state()
    yield
    torch._dynamo.reset()


@pytest.fixture(params=["avx512", "amx"])
def cpu_isa(request, monkeypatch):
    """Run a test once per matrix ISA of the CPU kernels (``INDUCTOR_QUANT_CPU_ISA``): the AVX512 path is forced on
    an AMX machine too; the AMX run skips where the CPU has no AMX tiles."""
    from inductor_quant.kernels import amx_available
    from inductor_quant.settings import CPU_ISA_ENV

    if request.param == "amx" and not amx_available():
        pytest.skip("this CPU has no AMX tiles (or the kernel refused them)")
    monkeypatch.setenv(CPU_ISA_ENV, request.param)
    return request.param


@pytest.fixture
def avx512_kernels(monkeypatch):
    """For the CPP templates' snapshots: their AVX512 kernels on every CPU (on one with AMX tiles, bf16 decode would
    render the AMX kernels; those are tested per ISA in tests/lowerings/)."""
    from inductor_quant.settings import CPU_ISA_ENV

    monkeypatch.setenv(CPU_ISA_ENV, "avx512")


@pytest.fixture
def graph_caches():
    """For tests of the FX-graph cache itself: a cache directory of their own with the graph caches on."""
    with (
        fresh_cache(),
        inductor_config.patch(fx_graph_cache=True),
        functorch_config.patch(enable_autograd_cache=True),
    ):
        yield


def compile_and_run(model, *args, backend="quant_inductor", options=None, grad=False):
    """Compile ``model`` and run it once; returns (output, generated wrapper+kernel source)."""
    compiled = torch.compile(model, backend=backend, options=options)
    with torch.set_grad_enabled(grad):
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code)


_CONSTANT = re.compile(
    r"(_frozen_param\d+\w*|constant\d+) = rand_strided\(\(([\d, ]*)\),.*dtype=torch\.(\w+)\)"
)
_BYTES = {"int8": 1, "uint8": 1, "bfloat16": 2, "float16": 2, "float32": 4, "int64": 8}


def constant_bytes(code: str) -> dict[str, int]:
    """Bytes of the constants a compiled (frozen) graph holds, per dtype, read off its generated code."""
    total: dict[str, int] = {}
    for _, shape, dtype in _CONSTANT.findall(code):
        total[dtype] = total.get(dtype, 0) + _numel(shape) * _BYTES[dtype]
    return total


def constant_sizes(code: str) -> dict[str, int]:
    """Bytes of each constant a compiled (frozen) graph holds, by name, read off its generated code."""
    return {name: _numel(shape) * _BYTES[dtype] for name, shape, dtype in _CONSTANT.findall(code)}


def _numel(shape: str) -> int:
    numel = 1
    for s in filter(None, (p.strip() for p in shape.split(","))):
        numel *= int(s)
    return numel


def int8_weight(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float weight ~ N(0, 1/K) and its int8 per-channel quantization (qdata, fp32 scale)."""
    from inductor_quant.primitives import quantize_int8_per_channel

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    q, s = quantize_int8_per_channel(w)
    return w, q, s


def small_llama(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A 2-layer ``LlamaForCausalLM`` with seeded random weights (hidden 128, 4 query / 2 KV heads, vocab 512)."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


class ScaledLinear(nn.Module):
    """`F.linear(x, w.to(x.dtype)) * scale + bias`, the gpt-fast line, on given int8 data."""

    def __init__(self, q, s, b=None):
        super().__init__()
        self.register_buffer("w", q)
        self.register_buffer("s", s)
        self.b = None if b is None else nn.Buffer(b)

    def forward(self, x):
        y = F.linear(x, self.w.to(x.dtype)) * self.s
        return y if self.b is None else y + self.b
