"""The backend: entry-point registration, scoping (plain torch.compile untouched), version gate, cache keys."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import torch
from conftest import ScaledLinear, compile_and_run, int8_weight, verify
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant import _compat
from inductor_quant.passes import rewrite


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_backend_name_works_in_a_fresh_process_without_importing_the_package():
    proc = _run("""
        import sys, torch
        assert "inductor_quant" not in sys.modules
        m = torch.nn.Linear(64, 32).to(torch.bfloat16)
        with torch.no_grad():
            y = torch.compile(m, backend="quant_inductor")(torch.randn(2, 64, dtype=torch.bfloat16))
        assert "inductor_quant.backend" in sys.modules and y.shape == (2, 32)
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


_PLAIN_COMPILE = """
    import re, sys, torch, torch.nn.functional as F
    from torch._inductor.utils import fresh_cache, run_and_get_code

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.register_buffer("w", torch.randint(-127, 128, (64, 128), generator=g, dtype=torch.int8))
            self.register_buffer("s", torch.rand(64, generator=g, dtype=torch.bfloat16))
            self.lin = torch.nn.Linear(64, 32).to(torch.bfloat16)
            # an int4 dequantize chain and aten's int4 matmul: both are rewritten / taken over by quant_inductor
            self.register_buffer("q4", torch.randint(0, 256, (32, 64), generator=g, dtype=torch.uint8))
            self.register_buffer("s4", torch.rand(32, 4, generator=g, dtype=torch.bfloat16) / 10)
            self.register_buffer("z4", torch.randint(0, 16, (32, 4), generator=g, dtype=torch.uint8))
            q = torch.randint(0, 16, (32, 128), generator=g, dtype=torch.int32)
            self.register_buffer("wa", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            self.register_buffer("sz", torch.rand(4, 32, 2, generator=g, dtype=torch.bfloat16) / 10)

        def forward(self, x):
            y = self.lin(torch.relu(F.linear(x, self.w.to(x.dtype)) * self.s))
            nib = torch.stack([self.q4 & 0xF, self.q4 >> 4], dim=-1).view(32, -1, 32).to(x.dtype)
            w4 = ((nib - self.z4.unsqueeze(-1).to(x.dtype)) * self.s4.unsqueeze(-1)).view(32, -1)
            a = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, 128), self.wa, 32, self.sz)
            return y + F.linear(x, w4) + a.view(y.shape)

    def plain_code():
        torch._dynamo.reset()
        with fresh_cache(), torch.no_grad():
            _, code = run_and_get_code(torch.compile(M()), torch.randn(2, 3, 128, dtype=torch.bfloat16))
        # ids, temp paths and object addresses (with or without 0x) differ between any two compiles
        return re.sub(r"AOT ID: \\[.*\\]|/tmp/\\S+|0x[0-9a-f]+|\\b[0-9a-f]{12}\\b", "", "\\n".join(code))

    before = plain_code()
    if sys.argv[-1] == "use_package":
        import inductor_quant
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(M(), backend="quant_inductor")(torch.randn(2, 3, 128, dtype=torch.bfloat16))
    after = plain_code()
    print("SAME" if before == after else "DIFFERENT")
    print(after)
"""


def test_plain_torch_compile_generates_the_same_code_with_and_without_the_package():
    baseline = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PLAIN_COMPILE), "baseline"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    used = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PLAIN_COMPILE), "use_package"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert baseline.returncode == 0 and used.returncode == 0, (baseline.stderr[-2000:], used.stderr[-2000:])
    assert used.stdout.startswith("SAME"), used.stdout[:2000]
    # and the plain code of the process that used quant_inductor equals that of a process that never imported it
    assert baseline.stdout.split("\n", 1)[1] == used.stdout.split("\n", 1)[1]
    assert "inductor_quant" not in used.stdout.split("\n", 1)[1]


def test_unsupported_torch_warns_once_and_runs_stock_inductor(monkeypatch):
    monkeypatch.setattr(_compat, "_torch_minor", lambda: (2, 14))
    _compat.torch_supported.cache_clear()
    try:
        model = _gpt_fast_linear()
        x = torch.randn(2, 64, dtype=torch.bfloat16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, code = compile_and_run(model, x)
            compile_and_run(nn.Sequential(model, nn.ReLU()), x)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len([m for m in messages if "falls back to stock Inductor" in m]) == 1, messages
        assert "torch >=2.15,<2.16" in messages[0]
        # stock Inductor ran: nothing rewritten, no package kernel in the code
        assert counters["inductor_quant"]["int8_rewrite"] == 0 and "inductor_quant" not in code
        with torch.no_grad():
            verify(out, model(x))
    finally:
        _compat.torch_supported.cache_clear()


def test_cpp_wrapper_request_compiles_with_the_python_wrapper_and_says_so(caplog, monkeypatch):
    """cpp_wrapper=True would fail deep inside Inductor on the package's extern prefill kernels: the backend
    compiles with the Python wrapper instead, logs it once, and the answer is right."""
    from inductor_quant import backend

    monkeypatch.setattr(backend, "_warned_cpp_wrapper", False)
    model = iq.quantize_(
        nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 64)), iq.Int8WeightOnlyConfig()
    )
    x = torch.randn(40, 64)  # prefill-sized: the extern dequant_mm kernel
    with caplog.at_level("WARNING", logger="inductor_quant.backend"), torch.no_grad():
        out, code = compile_and_run(model, x, options={"cpp_wrapper": True})
        compile_and_run(model, x[:1], options={"cpp_wrapper": True})
    # the Python wrapper's call of the prefill GEMM on the (blocked) int8 weight
    assert "inductor_quant_int8_packed_gemm" in code and "def call(" in code
    warned = [r for r in caplog.records if "cpp_wrapper=True cannot call" in r.getMessage()]
    assert len(warned) == 1
    with torch.no_grad():
        verify(out, model(x))


def _gpt_fast_linear() -> ScaledLinear:
    _, q, s = int8_weight(48, 64)
    return ScaledLinear(q, s.to(torch.bfloat16))


def test_fx_graph_cache_hits_and_a_changed_package_misses(monkeypatch, graph_caches):
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    no_prepack = {"inductor_quant.prepack": False}
    compile_and_run(_gpt_fast_linear(), x, options=no_prepack)
    assert counters["inductor"]["fxgraph_cache_miss"] == 1
    torch._dynamo.reset()
    compile_and_run(_gpt_fast_linear(), x, options=no_prepack)
    assert counters["inductor"]["fxgraph_cache_hit"] == 1, dict(counters["inductor"])

    # the same sources hash the same; a changed source (simulated) must not be served the cached graph
    monkeypatch.setattr(rewrite, "package_source_hash", lambda root=None: b"changed sources")
    torch._dynamo.reset()
    compile_and_run(_gpt_fast_linear(), x, options=no_prepack)
    assert counters["inductor"]["fxgraph_cache_miss"] == 2 and counters["inductor"]["fxgraph_cache_hit"] == 1


def test_the_cpu_matrix_isa_is_part_of_the_cache_key(monkeypatch, graph_caches):
    """The GEMV templates render AMX or AVX512 kernels (settings.cpu_matrix_isa): a graph compiled for one is not
    served to the other."""
    import inductor_quant.kernels as kernels
    from inductor_quant.settings import CPU_ISA_ENV

    monkeypatch.setattr(kernels, "amx_available", lambda: True)  # as on a CPU with AMX tiles
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    for isa, misses, hits in (("avx512", 1, 0), ("avx512", 1, 1), ("amx", 2, 1)):
        monkeypatch.setenv(CPU_ISA_ENV, isa)
        torch._dynamo.reset()
        compile_and_run(_gpt_fast_linear(), x, options={"inductor_quant.prepack": False})
        assert counters["inductor"]["fxgraph_cache_miss"] == misses
        assert counters["inductor"]["fxgraph_cache_hit"] == hits


def test_prepacked_graphs_bypass_the_fx_graph_cache(graph_caches):
    """A cached frozen graph would carry a copy of every packed weight into the cache directory."""
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    for _ in range(2):
        torch._dynamo.reset()
        _, code = compile_and_run(_gpt_fast_linear(), x)
        assert "weight=packed" in code
    assert counters["inductor"]["fxgraph_cache_bypass"] == 2
    assert counters["inductor"]["fxgraph_cache_hit"] == 0


def test_a_frozen_graph_serves_only_the_model_whose_weights_it_holds():
    """Two models of one architecture, compiled one after the other without a reset: the second must not be served
    the first one's frozen graph (it was, before the backend guarded the frozen tensors' identity: Dynamo traces
    parameters as inputs and guards them only when it traces with freezing on itself)."""

    def model(seed):
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
        return iq.quantize_(mlp, iq.Int8WeightOnlyConfig())

    x = torch.randn(3, 64)
    first, second = model(0), model(1)
    with torch.no_grad():
        compiled_first = torch.compile(first, backend="quant_inductor")
        verify(compiled_first(x), first(x))
        verify(torch.compile(second, backend="quant_inductor")(x), second(x))
        assert counters["stats"]["unique_graphs"] == 2
        verify(compiled_first(x), first(x))  # its own graph again, not a third compile
    assert counters["stats"]["unique_graphs"] == 2


def test_a_frozen_weight_is_guarded_by_one_identity_check():
    """Dynamo guards the metadata of every parameter it traces (three tensor checks per quantized weight: the
    subclass and its inner tensors); a frozen graph holds the values, so its weights are guarded by identity alone.
    The input keeps its tensor check."""
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    torch.manual_seed(0)
    mlp = iq.quantize_(
        nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)), iq.Int8WeightOnlyConfig()
    )
    handler = Keep()
    guards_log = logging.getLogger("torch._dynamo.guards.__guards")
    torch._logging.set_logs(guards=True)
    guards_log.addHandler(handler)
    try:
        with torch.no_grad():
            torch.compile(mlp, backend="quant_inductor")(torch.randn(3, 64))
    finally:
        guards_log.removeHandler(handler)
        torch._logging.set_logs()
    guards = "\n".join(records)
    checked = re.findall(r"TENSOR_MATCH: check_tensor\((\S+?),", guards)
    identities = re.findall(r"ID_MATCH: ___check_obj_id\((\S+?_parameters\['\w+'\])", guards)
    assert checked == ["L['args'][0]"], checked
    assert len(identities) == 4, identities  # two weights, two biases


def test_a_deleted_compiled_model_frees_its_frozen_weights_on_reset():
    """Inductor keeps the module of every compiled graph for the life of the process, with a frozen graph's
    constants on it; this backend drops them with the compiled graph (stock freezing keeps them)."""
    import gc
    import weakref

    from torch._inductor.codecache import PyCodeCache

    torch.manual_seed(0)
    model = iq.quantize_(nn.Linear(256, 128, bias=False), iq.Int8WeightOnlyConfig())
    before = len(PyCodeCache.modules)
    with torch.no_grad():
        _, code = compile_and_run(model, torch.randn(2, 256))
    assert "weight=packed" in code
    constants = [
        weakref.ref(value)
        for module in PyCodeCache.modules[before:]
        for value in vars(module).values()
        if isinstance(value, torch.Tensor)
    ]
    assert constants and all(c() is not None for c in constants)  # the packed weight, held by the graph
    del model
    torch._dynamo.reset()
    gc.collect()
    assert all(c() is None for c in constants)


def test_source_hash_covers_every_package_file(tmp_path):
    root = tmp_path / "inductor_quant"
    shutil.copytree(os.path.dirname(iq.__file__), root, ignore=shutil.ignore_patterns("__pycache__"))
    base = rewrite.package_source_hash(root)
    for rel in (
        "templates/cpp/int8_gemv.cpp",
        "templates/triton/int4_mm.py.jinja",
        "lowerings/int8.py",
        "tensor.py",
    ):
        path = root / rel
        original = path.read_text()
        path.write_text(original + "\n// changed\n")
        assert rewrite.package_source_hash(root) != base, rel
        path.write_text(original)
    assert rewrite.package_source_hash(root) == base


def test_torch_logs_shows_rewrites_kernels_and_timings():
    proc = _run(
        """
        import torch, torch.nn.functional as F
        import inductor_quant as iq
        m = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
        blocked = iq.quantize_(torch.nn.Linear(128, 64).to(torch.bfloat16), iq.Int8WeightOnlyConfig())
        iq.quantize_(m, iq.Int8WeightOnlyConfig(layout="plain"))  # plain weights: autotuned, and prepacked
        x = torch.randn(4, 128, dtype=torch.bfloat16)
        torch.compile(m, backend="quant_inductor")(x)          # grad on: no freezing, autotuned
        with torch.no_grad():
            torch.compile(m, backend="quant_inductor")(x)      # frozen: prepacked
            torch.compile(blocked, backend="quant_inductor")(x)  # held blocked: the packed kernel, nothing packed
        torch._dynamo.reset()  # else the new input shape makes Dynamo recompile the same frame with dynamic M
        m4 = torch.nn.Linear(256, 64).to(torch.bfloat16)
        iq.quantize_(m4, iq.Int4WeightOnlyConfig(group_size=64, layout="plain"))
        x4 = torch.randn(2, 256, dtype=torch.bfloat16)
        torch.compile(m4, backend="quant_inductor")(x4)
        with torch.no_grad():
            torch.compile(m4, backend="quant_inductor")(x4)
        """,
        env={"TORCH_LOGS": "+inductor_quant", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert re.search(r"offered \['aten', 'int8_gemv'\], chose \w+", log), log[-3000:]
    assert re.search(r"autotune inductor_quant_int8_weight_linear .*: .* us", log), log[-3000:]
    assert "-> blocked decode layout" in log
    assert re.search(r"int8_weight_linear_packed M=4 N=64 K=128 .*offered \['int8_gemv_packed'\]", log)
    assert re.search(
        r"int4_weight_linear M=2 N=64 K=256 .*offered \['dequant_mm', 'int4_gemv'\], chose \w+", log
    )
    assert re.search(r"prepacked .*int4 weight .* \[64, 256\] g64 \(M=2\) -> blocked decode layout", log), (
        log[-3000:]
    )
    # Inductor's own stderr report of autotune choices is off: the log above says it.
    assert "Autotune Choices Stats" not in log
