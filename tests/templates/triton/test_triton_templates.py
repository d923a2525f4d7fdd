"""The Triton templates, proven on CPU level by level (shared docs TRITON_ON_CPU.md), each level in a process of
its own because the Triton interpreter and the fake CUDA device are process-global:

  A  ``interp_kernels.py``: the templates' kernel math, standalone, in Triton's interpreter, vs torch references;
  B  ``interp_inductor.py``: torch.compile(backend="quant_inductor") end to end with Inductor emitting and running
     the templates in the interpreter (lowering, rendering, autotune, epilogue fusion, numerics);
  C  ``cuda_codegen_snapshots.py``: the Triton source Inductor emits for device="cuda" (snapshots);
  D  the same module compiles those kernels to cubin for sm_80 and sm_90 with Triton's ptxas.

E (GPU numerics and speed) needs a GPU: the tests at the bottom are marked and skip without one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
# Installs the process-global shim, then runs pytest on one module of this directory.
_RUNNER = (
    "import sys; sys.path.insert(0, {here!r}); import {shim}; {shim}.install(); import pytest; "
    "sys.exit(pytest.main([{module!r}, '-q', '-p', 'no:cacheprovider', '-W', 'ignore::DeprecationWarning']))"
)


def run_isolated(module: str, shim: str) -> str:
    """Run the tests of ``module`` in a fresh interpreter with ``shim`` installed; fail with its output."""
    code = _RUNNER.format(here=str(HERE), shim=shim, module=str(HERE / module))
    env = {**os.environ, "TRITON_INTERPRET": "1"} if shim == "interpreter_shim" else dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=HERE.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0 and " skipped" not in out, out[-3000:]
    return out


def test_level_a_kernel_math_in_interpreter():
    run_isolated("interp_kernels.py", "interpreter_shim")


def test_level_b_inductor_path_in_interpreter():
    run_isolated("interp_inductor.py", "interpreter_shim")


def test_levels_c_and_d_cuda_source_snapshots_and_cubin():
    run_isolated("cuda_codegen_snapshots.py", "cuda_codegen")


# --- Level E: needs a CUDA GPU (none is available to the project: these skip here) ---------------------------------

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (level E)")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("m", (1, 16, 512))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("scheme", ("int8", "int4"))
def test_gpu_numerics_and_triton_choice(scheme, dtype, m, monkeypatch):
    """On a GPU, the forced Triton templates (decode and prefill configs) match the fp32 reference, with the
    SiLU fused into the template kernel."""
    from conftest import compile_and_run, verify

    import inductor_quant as iq
    from inductor_quant import primitives as P

    monkeypatch.setenv(f"INDUCTOR_QUANT_{scheme.upper()}_KERNEL", "triton")
    config = iq.Int8WeightOnlyConfig() if scheme == "int8" else iq.Int4WeightOnlyConfig(group_size=128)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.SiLU()).to("cuda", dtype)
    iq.quantize_(model, config)
    x = torch.randn(m, 4096, device="cuda", dtype=dtype)
    out, code = compile_and_run(model, x)
    w, b = model[0].weight, model[0].bias
    if scheme == "int8":
        ref = P.int8_linear_reference(x, w.qdata, w.scale, b, torch.float32)
    else:
        ref = P.int4_linear_reference(x, w.qdata, w.scale, w.zero_point, 128, b, torch.float32)
    verify(out, torch.nn.functional.silu(ref).to(dtype))
    assert f"triton_tem_fused_{scheme}_weight_linear" in code


@pytest.mark.gpu
@requires_gpu
def test_gpu_autotune_ranks_all_choices(caplog):
    """Unforced on a GPU: aten, dequant_mm and the Triton configs are all timed (the ranking itself is the GPU's)."""
    import logging

    from conftest import compile_and_run

    import inductor_quant as iq

    model = iq.quantize_(torch.nn.Linear(4096, 4096).to("cuda", torch.bfloat16), iq.Int8WeightOnlyConfig())
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        compile_and_run(model, torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16))
    timings = next(line for line in caplog.text.splitlines() if "autotune inductor_quant_int8" in line)
    assert "aten" in timings and "dequant_mm" in timings and "triton_16x" in timings


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("m", (1, 512))
def test_gpu_bitlinear_triton_template(m, monkeypatch):
    """A deployed BitLinear on a GPU: the ternary template equals the eager layer (exact integer sums)."""
    from conftest import compile_and_run, verify

    from inductor_quant.nn import BitLinear

    monkeypatch.setenv("INDUCTOR_QUANT_TERNARY_KERNEL", "triton")
    torch.manual_seed(0)
    model = BitLinear(4096, 4096).to("cuda", torch.bfloat16).eval()
    model.deploy()
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
    out, code = compile_and_run(model, x)
    verify(out, expected)
    assert "triton_tem_fused" in code and "tl.int32" in code
