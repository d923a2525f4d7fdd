"""The README's and the docs' code runs as written, and their relative links resolve.

Which fenced blocks of README.md and docs/*.md run is decided by the block's info string (the words after the
opening ```):

* ``python``, exactly: the block runs, each in a fresh interpreter (``sys.executable -c``) whose working
  directory is a temporary directory, with a timeout. So a block must be self-contained: it defines the model
  and the inputs it uses (small: well under a minute on 2 CPU cores) and writes files only into its working
  directory.
* ``python notest``: a fragment, not run (the hand-written forms the rewrite pass matches name tensors they do
  not define).
* ``python gpu``: needs a CUDA device; runs only where one is present.
* ``python torchrun``: launched by torchrun, not run here (tests/distributed/test_sharding.py runs the
  tensor-parallel example on 2 processes).
* ``python checked``: run by a test of its topic that also checks what it computed (``docs_blocks`` finds it), so
  not run twice.
* ``bash`` and untagged blocks are not run: the commands of ./run and of the benchmarks, and program output.

Any other word after ``python`` fails the test, so a misspelt tag cannot silently skip a block. A block that
imports an optional package which is not installed (transformers, peft) is skipped. Test ids are
``file:index``, the index counting every fenced block of the file from 0.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "benchmarks" / "README.md"]  # checked for links; its code is not run
TIMEOUT_S = 300  # blocks take well under 60 s; this only stops a hung one
OPTIONAL = {"transformers", "peft"}
NOT_RUN = {
    "notest": "a fragment: it names tensors it does not define",
    "torchrun": "launched by torchrun: tests/distributed/test_sharding.py runs it on 2 processes",
    "checked": "run by its topic's test, which also checks its results (tests/nn/)",
}

# a fenced block at the start of a line: its info string and its body
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block of a markdown file, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(path.read_text())]


def docs_blocks(name: str, info: str) -> list[str]:
    """The bodies of the blocks of ``docs/<name>`` whose info string is ``info`` (for the tests that run them)."""
    return [code for tag, code in _blocks(ROOT / "docs" / name) if tag == info]


def _python_blocks() -> list:
    params = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for index, (info, code) in enumerate(_blocks(path)):
            language, _, tag = info.partition(" ")
            if language != "python":
                continue
            tag = tag.strip()
            marks = []
            if tag == "gpu":
                no_gpu = not torch.cuda.is_available()
                marks = [pytest.mark.gpu, pytest.mark.skipif(no_gpu, reason="needs a CUDA GPU")]
            elif tag in NOT_RUN:
                marks = [pytest.mark.skip(reason=NOT_RUN[tag])]
            params.append(pytest.param(tag, code, id=f"{name}:{index}", marks=marks))
    return params


def _imported_packages(code: str) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            packages.add(node.module.partition(".")[0])
    return packages


@pytest.mark.parametrize(("tag", "code"), _python_blocks())
def test_code_block_runs(tag, code, tmp_path):
    assert tag in ("", "gpu"), f"unknown tag {tag!r} after ```python: use {', '.join(['gpu', *NOT_RUN])}"
    optional = _imported_packages(code) & OPTIONAL
    missing = sorted(p for p in optional if importlib.util.find_spec(p) is None)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _anchors(path: Path) -> set[str]:
    """GitHub's ids of a markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)
    }


@pytest.mark.parametrize("path", LINKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    """Every relative link names a file that exists, and a heading of it when it has an #anchor."""
    prose = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"
