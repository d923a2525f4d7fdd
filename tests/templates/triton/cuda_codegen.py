"""Test-only (levels C and D of shared docs TRITON_ON_CPU.md): the exact Triton source Inductor emits for
``device="cuda"``, and its compilation to cubin for sm_80 / sm_90, on a machine with no GPU.

``install()`` makes this process look like it has one sm_80 GPU (A100-like record) for as long as nothing is run
on it: ``torch.cuda`` queries are answered from a fake record, Triton gets a driver that only reports a target,
autotuning gets fixed timings in which every Triton template beats every extern kernel. It is process-global:
use it in a process of its own (``test_triton_templates.py`` starts one). Never imported by the package.

    install()
    code = cuda_code(lambda x, w, s: torch.ops.inductor_quant.int8_weight_linear(x, w, s),
                     fake_cuda((5, 96), torch.bfloat16), fake_cuda((40, 96), torch.int8), fake_cuda((40,), torch.bfloat16))
    kernels = triton_kernels(code)           # {kernel name: Triton source} for each async_compile.triton(...)
    cubins = compile_kernels(code, cc=90)    # [(kernel name, triton CompiledKernel)], .asm["cubin"] is the ELF

Nothing is ever launched: the wrapper is generated, never loaded; kernels are compiled, never loaded on a device.
"""

from __future__ import annotations

import re
import types
from unittest import mock

import torch

# What torch.cuda.get_device_properties(0) says on an A100 (sm_80), for the fields Inductor and Triton read.
SM80 = types.SimpleNamespace(
    name="fake NVIDIA A100 (sm_80, codegen only)",
    major=8,
    minor=0,
    multi_processor_count=108,  # >= 68: a "big GPU", so Triton GEMM templates are offered
    warp_size=32,
    max_threads_per_block=1024,
    max_threads_per_multi_processor=2048,
    regs_per_multiprocessor=65536,
    shared_memory_per_block=49152,
    shared_memory_per_block_optin=166912,  # what Triton's and Inductor's shared-memory checks compare against
    shared_memory_per_multiprocessor=167936,
    L2_cache_size=40 << 20,
    total_memory=40 << 30,
    is_integrated=False,
)

_installed = False
_fake_mode = None


def install() -> None:
    """Install the fake single-GPU environment (idempotent; before or after ``import torch``)."""
    global _installed, _fake_mode
    if _installed:
        return
    import triton
    from torch._dynamo.device_interface import CudaInterface
    from torch._inductor import select_algorithm
    from torch._inductor.fx_passes import joint_graph
    from torch._inductor.runtime import triton_helpers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils import _triton

    # torch.cuda: one device, described by SM80. Inductor and Triton read is_available(), device_count(),
    # current_device() and the device record; codegen runs inside `torch.cuda.device(0)` (device exchanges);
    # AOTAutograd saves the CUDA RNG state around tracing (its restore is deferred to a CUDA init that never comes).
    fake_cuda_api = dict(
        is_available=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: 0,
        get_device_properties=lambda device=None: SM80,
        _exchange_device=lambda device: 0,
        _maybe_exchange_device=lambda device: 0,
        get_rng_state=lambda device="cuda": torch.zeros(16, dtype=torch.uint8),
    )
    for name, fn in fake_cuda_api.items():
        setattr(torch.cuda, name, fn)
    # Dynamo's CudaInterface bound the same functions at import time (staticmethod(torch.cuda.x)): rebind them.
    for name in ("current_device", "device_count", "get_device_properties"):
        setattr(CudaInterface, name, staticmethod(fake_cuda_api[name]))
    CudaInterface.exchange_device = staticmethod(fake_cuda_api["_exchange_device"])
    CudaInterface.maybe_exchange_device = staticmethod(fake_cuda_api["_maybe_exchange_device"])

    from sm80_driver import sm80_driver

    def no_benchmarker():
        raise RuntimeError("codegen-only driver: nothing can be benchmarked without a GPU")

    # launches nothing: Triton's own CUDA driver is inactive without a GPU and needs libcuda
    triton.runtime.driver.set_active(sm80_driver(torch.device("cuda", 0), torch.cuda, no_benchmarker))
    # Every generated kernel module and CachingAutotuner._precompile_config call this: it would swap in Triton's
    # CUDA driver, which needs libcuda.
    triton_helpers.set_driver_to_gpu = lambda: None
    # Cached answers ("no triton-capable GPU", the backend hash) may predate this install.
    for cached in (_triton.has_triton, _triton.triton_backend, _triton.triton_hash_with_backend):
        cached.cache_clear()

    # The pattern tables of the joint-graph passes (attention, pad_mm, ...) are traced on the input device with
    # `torch.tensor(..., device=...)` constants, which are made for real (below FakeTensorMode): trace them for
    # the CPU instead. They match attention and padded-mm graphs, not the quantized linears tested here.
    stock_lazy_init = joint_graph.lazy_init
    joint_graph.lazy_init = lambda input_device=None: stock_lazy_init(torch.device("cpu"))

    # Autotuning: fixed timings in which every Triton template (1.0) beats every extern kernel (2.0); ties go to
    # the first choice offered, so the outcome is deterministic (the first Triton config, not the one a GPU would
    # pick). And no precompile: a choice that failed to compile there would be dropped silently (torch already
    # skips it on Python 3.11.0-3.11.8); compile_kernels() compiles what was chosen, and raises.
    def fixed_timings(self, choices, *args, **kwargs):
        return {c: 1.0 if isinstance(c, select_algorithm.TritonTemplateCaller) else 2.0 for c in choices}

    select_algorithm.AlgorithmSelectorCache.benchmark = fixed_timings
    select_algorithm.AlgorithmSelectorCache.make_precompile_fn = lambda self, *args, **kwargs: lambda: {}

    _fake_mode = FakeTensorMode()
    _installed = True


def fake_cuda(shape, dtype: torch.dtype, stride=None) -> torch.Tensor:
    """A fake ``cuda:0`` tensor (no storage) of the harness's FakeTensorMode."""
    install()
    with _fake_mode:
        if stride is None:
            return torch.empty(shape, dtype=dtype, device="cuda")
        return torch.empty_strided(shape, stride, dtype=dtype, device="cuda")


def _as_fake_cuda(t: torch.Tensor) -> torch.Tensor:
    if getattr(t, "fake_mode", None) is _fake_mode and t.is_cuda:
        return t
    # a real (CPU) tensor: a fake one of the same shape, strides and dtype
    return fake_cuda(tuple(t.shape), t.dtype, tuple(t.stride()))


def cuda_code(fn, *example_inputs: torch.Tensor, options: dict | None = None) -> list[str]:
    """The code Inductor generates for ``fn(*example_inputs)`` on ``cuda:0``: the wrapper module(s), with each
    Triton kernel inline in an ``async_compile.triton(...)`` call. Inputs are tensors (fake cuda, or real tensors
    whose shape, strides and dtype are used); put non-tensor arguments in ``fn``'s closure. ``options`` are
    Inductor config patches. Runs in a fresh Inductor/Triton cache so that nothing is served from an earlier compile.
    """
    install()
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.graph import GraphLowering
    from torch._inductor.utils import fresh_cache
    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = [_as_fake_cuda(t) for t in example_inputs]
    codes: list[str] = []

    # Replaces GraphLowering.compile_to_module, as torch._inductor.utils.get_code does: generate, never load.
    def codegen_only(graph):
        wrapper, kernels = graph.codegen()
        codes.append(wrapper.value)
        if kernels:
            codes.append(kernels.value)
        return types.SimpleNamespace(call=lambda args: None)

    patches = {"benchmark_fusion": False, "benchmark_template_fusion": False, **(options or {})}
    with (
        fresh_cache(),
        config.patch(patches),
        mock.patch.object(GraphLowering, "compile_to_module", codegen_only),
    ):
        with _fake_mode:
            graph = make_fx(fn)(*inputs)
        compile_fx(graph, inputs)
    return codes


_TRITON_KERNEL = re.compile(r"async_compile\.triton\('(\w+)', '''\n(.*?)''', device_str='cuda'\)", re.DOTALL)


def triton_kernels(code: str | list[str]) -> dict[str, str]:
    """Each Triton kernel of generated code: {kernel name: its module source}."""
    text = "\n".join(code) if isinstance(code, list) else code
    return dict(_TRITON_KERNEL.findall(text))


def compile_kernels(code: str | list[str], cc: int) -> list[tuple[str, object]]:
    """Compile every Triton kernel of generated code, each of its configs, to cubin for compute capability ``cc``
    (80, 90, ...) with the ptxas Triton ships; no GPU needed. Returns [(kernel name, triton CompiledKernel)]: its
    ``asm["cubin"]`` is the ELF, ``asm["ptx"]`` the PTX, ``metadata.target`` the GPUTarget compiled for."""
    install()
    from torch._inductor import config
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.utils import fresh_cache

    compiled = []
    # The static launcher would wrap the binary in its launch object; plain results keep triton's CompiledKernel.
    with fresh_cache(), config.patch(use_static_triton_launcher=False):
        for name, source in triton_kernels(code).items():
            # the module's CachingAutotuner, as Inductor loads it
            autotuner = getattr(PyCodeCache.load(source), name)
            for cfg in autotuner.configs:
                result = autotuner._precompile_config(cfg, cc_override=cc)
                compiled.append((name, result.kernel))
    return compiled
