"""The package as a user installs it: a wheel, in a fresh virtualenv outside the source tree (no editable install).

The wheel must hold every file the package reads at run time (the C++ and jinja templates, the native kernels),
and, installed alone, quantize and compile each scheme, render the Triton templates and run the console script.
The fresh environment sees torch and the other dependencies through a path entry to this environment's
site-packages (a plain directory on ``sys.path``: its ``.pth`` files, the editable install's among them, are not
processed), after its own site-packages, so ``import inductor_quant`` can only find the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "inductor_quant"

SMOKE = r"""
import pathlib, sys
import torch
from torch import nn
import inductor_quant as iq
from inductor_quant.nn import BitLinear
from inductor_quant.primitives import sqnr

here = pathlib.Path(iq.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in here.parents, f"imported {here}, not the wheel's copy"
configs = {
    "int8": iq.Int8WeightOnlyConfig(),
    "int4": iq.Int4WeightOnlyConfig(group_size=32),
    "w4a8": iq.Int8DynamicActivationInt4WeightConfig(group_size=32),
}
x = torch.randn(2, 128, dtype=torch.bfloat16)
for name, config in [*configs.items(), ("bitlinear", None)]:
    torch.manual_seed(0)
    layer = nn.Linear(128, 64, dtype=torch.bfloat16)
    layer = BitLinear.from_linear(layer).deploy() if config is None else iq.quantize_(layer, config)
    with torch.no_grad():
        expected = layer(x)
        torch._dynamo.reset()
        actual = torch.compile(layer, backend="quant_inductor")(x)
    assert sqnr(expected.float(), actual.float()) > 30, name
    print("compiled", name)

# level A: every Triton template renders from the installed files
import jinja2
from inductor_quant.templates.triton.common import load_source
for path in (here.parent / "templates" / "triton").glob("*.jinja"):
    jinja2.Environment().parse(load_source(path.name))
    print("rendered", path.name)
"""


def _runtime_files() -> set[str]:
    """Every non-Python file of the source package (the package reads them at run time), relative to the root."""
    return {
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (a build in the checkout would leave ``build/`` there, and a stale
    ``build/`` could hand the wheel files that package data no longer lists)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("inductor_quant-*.whl")
    return path


def test_wheel_holds_every_file_the_package_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _runtime_files() - names
    assert not missing, f"package data leaves out {sorted(missing)}"
    assert "inductor_quant/demo/__main__.py" in names


@pytest.mark.slow
def test_wheel_installed_alone_quantizes_compiles_and_runs_its_script(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the wheel into the fresh environment with its own pip (this environment's pip would uninstall this
    # environment's copy of the package first, even with --prefix)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
        text=True,
    )
    # the dependencies (torch, jinja2, ...) through a plain path entry, after the fresh site-packages
    Path(fresh_site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor_cache")
    work = tmp_path / "elsewhere"  # outside the source tree: the checkout cannot shadow the installed package
    work.mkdir()
    smoke = subprocess.run(
        [python, "-c", SMOKE], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-5000:]
    for name in ("int8", "int4", "w4a8", "bitlinear"):
        assert f"compiled {name}" in smoke.stdout
    assert smoke.stdout.count("rendered ") == len(list((PACKAGE / "templates" / "triton").glob("*.jinja")))
    # the console script pip wrote
    script = subprocess.run(
        [env_dir / "bin" / "inductor-quant-demo", "--help"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert script.returncode == 0 and "usage" in script.stdout.lower(), script.stdout + script.stderr
