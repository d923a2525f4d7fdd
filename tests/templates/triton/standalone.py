"""Test-only: a package Triton template rendered as a plain ``@triton.jit`` kernel, outside Inductor (level A).

The template's jinja source is rendered with stand-ins for Inductor's hooks: ``def_kernel`` writes a kernel header
whose arguments are the template inputs, the epilogue vectors and the output; ``size`` / ``stride`` are the given
tensors' numbers; ``store_output`` applies the package's shared epilogue (``templates/epilogue.py``) with
Triton expressions and stores. The kernel math under test is the template's own source, byte for byte.
"""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
from pathlib import Path

import jinja2
import torch
import triton

from inductor_quant.templates import epilogue as package_epilogue
from inductor_quant.templates.triton import common

_counter = itertools.count()


class TritonExpr:
    """``ops`` for ``epilogue.scale_bias``: Triton source expressions over fp32 tiles."""

    @staticmethod
    def mul(a: str, b: str) -> str:
        return f"({a} * {b})"

    @staticmethod
    def add(a: str, b: str) -> str:
        return f"({a} + {b})"


def render(
    template_file: str, inputs: dict, out: torch.Tensor, *, vectors: dict, epilogue, constants: dict
) -> str:
    """Python source of a module defining ``kernel`` for the given tensors (shapes and strides are baked in).
    ``vectors`` are the epilogue's inputs, name -> (tensor, "m" | "n"): a per-row or per-column vector (a single
    element is broadcast); ``epilogue(ops, acc, *vectors)`` is the package's epilogue for this template."""
    tensors = {**inputs, "Y": out}

    def def_kernel(*names):
        args = ", ".join([*names, *vectors, "Y"])
        lines = ["@triton.jit", f"def kernel({args}):"]
        lines += [f"    {name}: tl.constexpr = {value!r}" for name, value in constants.items()]
        lines.append("    INDEX_DTYPE: tl.constexpr = tl.int32")
        return "\n".join(lines)

    def store_output(indices, val, mask, val_shape=None):
        idx = dict(zip("mn", indices, strict=True))
        loads = []
        for name, (vector, axis) in vectors.items():
            index = f"0 * {idx[axis]}" if vector.numel() == 1 else idx[axis]
            limit = out.shape["mn".index(axis)]
            loads.append(f"tl.load({name} + {index}, mask={idx[axis]} < {limit}, other=0).to(tl.float32)")
        value = epilogue(TritonExpr, val, *loads)
        target = f"Y + {idx['m']} * {out.stride(0)} + {idx['n']} * {out.stride(1)}"
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


def load_kernel(source: str):
    """``@triton.jit`` needs the kernel's source file: write it out and import it."""
    path = Path(tempfile.mkdtemp(prefix="iq_triton_")) / f"standalone_{next(_counter)}.py"
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
    vectors: dict | None = None,
    epilogue=None,
    **constants,
):
    """Render, load and launch the template for ``inputs``; returns the output tensor. The default epilogue is
    ``epilogue.scale_bias`` over a per-column ``scale`` and ``bias`` (each optional)."""
    out = torch.empty(out_shape, dtype=out_dtype)
    if vectors is None:
        vectors = {name: (t, "n") for name, t in (("SCALE", scale), ("BIAS", bias)) if t is not None}

        def epilogue(ops, acc, *loaded):  # noqa: F811 - the default for (scale, bias) templates
            named = dict(zip([n for n in ("SCALE", "BIAS") if n in vectors], loaded, strict=True))
            return package_epilogue.scale_bias(ops, acc, named.get("SCALE"), named.get("BIAS"))

    constants = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=common.GROUP_M,
        ALLOW_TF32=False,
        **constants,
    )
    source = render(template_file, inputs, out, vectors=vectors, epilogue=epilogue, constants=constants)
    kernel = load_kernel(source)
    m, n = out_shape
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    kernel[grid](*inputs.values(), *(t for t, _ in vectors.values()), out)
    return out
