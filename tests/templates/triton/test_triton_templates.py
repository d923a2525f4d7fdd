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
