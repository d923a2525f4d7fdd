"""Test-only: a package Triton template rendered as a plain ``@triton.jit`` kernel, outside Inductor (level A).

The template's jinja source is rendered with stand-ins for Inductor's hooks: ``def_kernel`` writes a kernel header
whose arguments are the template inputs, the epilogue vectors and the output; ``size`` / ``stride`` are the given
tensors' numbers; ``store_output`` applies the package's shared epilogue (``templates/epilogue.py``) with
Triton expressions and stores. The kernel math under test is the template's own source, byte for byte.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import itertools
import shutil
import tempfile
from pathlib import Path

import jinja2
import torch
import triton

from inductor_quant.templates import epilogue as package_epilogue
from inductor_quant.templates.triton import common

_counter = itertools.count()


def render(template_file: str, inputs: dict, out: torch.Tensor, *, scale, bias, constants: dict) -> str:
    """Python source of a module defining ``kernel`` for the given tensors (shapes and strides are baked in); the
    epilogue is the package's ``scale_bias`` over the per-column ``scale`` and ``bias`` given (each optional; a
    single-element scale is broadcast)."""
    vectors = {name: t for name, t in (("SCALE", scale), ("BIAS", bias)) if t is not None}
    tensors = {**inputs, "Y": out}

    def def_kernel(*names):
        args = ", ".join([*names, *vectors, "Y"])
        lines = ["@triton.jit", f"def kernel({args}):"]
        lines += [f"    {name}: tl.constexpr = {value!r}" for name, value in constants.items()]
        lines.append("    INDEX_DTYPE: tl.constexpr = tl.int32")
        return "\n".join(lines)

    def store_output(indices, val, mask, val_shape=None):
        idx_m, idx_n = indices
        n = out.shape[1]
        loads = {
            name: f"tl.load({name} + {'0 * ' if t.numel() == 1 else ''}{idx_n}, mask={idx_n} < {n}, other=0)"
            ".to(tl.float32)"
            for name, t in vectors.items()
        }
        value = package_epilogue.scale_bias(
            package_epilogue.SourceExpr, val, loads.get("SCALE"), loads.get("BIAS")
        )
        target = f"Y + {idx_m} * {out.stride(0)} + {idx_n} * {out.stride(1)}"
        return f"tl.store({target}, ({value}).to(Y.dtype.element_ty), mask={mask})"

    source = (Path(common.__file__).parent / template_file).read_text()
    body = (
        jinja2.Environment(undefined=jinja2.StrictUndefined)
        .from_string(source)
        .render(
            def_kernel=def_kernel,
            size=lambda name, dim: tensors[name].shape[dim],
            stride=lambda name, dim: tensors[name].stride(dim),
            store_output=store_output,
            **constants,
        )
    )
    return "import triton\nimport triton.language as tl\n\n" + body + "\n"


@functools.cache
def _kernel_dir() -> Path:
    """One temporary directory for the process's kernel files, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="iq_triton_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def load_kernel(source: str):
    """``@triton.jit`` needs the kernel's source file: write it out and import it."""
    path = _kernel_dir() / f"standalone_{next(_counter)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel


def run(
    template_file,
    inputs: dict,
    out_shape,
    out_dtype,
    config: common.BlockConfig,
    *,
    scale=None,
    bias=None,
    **constants,
):
    """Render, load and launch the template for ``inputs`` (then ``scale``, ``bias``); returns the output."""
    out = torch.empty(out_shape, dtype=out_dtype)
    constants = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=common.GROUP_M,
        ALLOW_TF32=False,
        **constants,
    )
    kernel = load_kernel(render(template_file, inputs, out, scale=scale, bias=bias, constants=constants))
    m, n = out_shape
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    kernel[grid](*inputs.values(), *(t for t in (scale, bias) if t is not None), out)
    return out
