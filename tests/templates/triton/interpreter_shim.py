"""Test-only: run Triton kernels, and Inductor's Triton path, on CPU tensors in Triton's interpreter.

``install()`` must run before anything imports triton, in a process of its own (the settings are process-global):
the interpreter mode itself, a driver that reports a CUDA target but runs on the CPU, a numpy stand-in for
``libdevice`` (the interpreter leaves it unpatched), and three bf16 fixes (the interpreter stores bf16 as raw
uint16: int -> bf16 casts and bf16 dots used the raw bits, fp32 -> bf16 truncated instead of rounding to nearest
even). ``inductor_config()`` is what Inductor needs to emit Triton for CPU tensors. See shared docs
TRITON_ON_CPU.md, levels A and B.
"""

from __future__ import annotations

import os
import types

import numpy as np


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _fix_bf16(interpreter, tl) -> None:
    builder = interpreter.InterpreterBuilder
    TensorHandle = interpreter.TensorHandle
    np_dtype = interpreter._get_np_dtype
    stock_cast, stock_fp_to_fp, stock_dot = builder.cast_impl, builder.create_fp_to_fp, builder.create_dot

    def as_f32(handle) -> np.ndarray:
        if handle.dtype.scalar == tl.bfloat16:
            return _bf16_bits_to_f32(handle.data)
        return handle.data.astype(np.float32)

    def cast_impl(self, src, dst_type):
        if tl.bfloat16 not in (src.dtype.scalar, dst_type.scalar):
            return stock_cast(self, src, dst_type)
        values = as_f32(src)
        if dst_type.scalar == tl.bfloat16:
            return TensorHandle(_f32_to_bf16_bits(values), tl.bfloat16)
        return TensorHandle(values.astype(np_dtype(dst_type)), dst_type.scalar)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if tl.bfloat16 in (src.dtype.scalar, dst_type.scalar):
            return cast_impl(self, src, dst_type)
        return stock_fp_to_fp(self, src, dst_type, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if tl.bfloat16 not in (a.dtype.scalar, b.dtype.scalar):
            return stock_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        out = np.matmul(as_f32(a), as_f32(b), dtype=np.float32).astype(d.data.dtype) + d.data
        return TensorHandle(out, d.dtype.scalar)

    builder.cast_impl = cast_impl
    builder.create_fp_to_fp = create_fp_to_fp
    builder.create_dot = create_dot


def _numpy_libdevice(interpreter, tl):
    """The libdevice functions Inductor's pointwise epilogues call (gelu, silu, tanh, ...), in numpy."""
    import math

    erf = np.vectorize(math.erf, otypes=[np.float64])

    def unary(fn):
        def apply(x, _semantic=None, _builder=None):
            data = x.handle.data
            out = fn(data.astype(np.float64)).astype(data.dtype)
            return tl.core.tensor(interpreter.TensorHandle(out, x.handle.dtype.scalar), x.type)

        return apply

    table = dict(
        exp=np.exp,
        exp2=np.exp2,
        log=np.log,
        log1p=np.log1p,
        expm1=np.expm1,
        tanh=np.tanh,
        erf=erf,
        sqrt=np.sqrt,
        rsqrt=lambda v: 1.0 / np.sqrt(v),
        sigmoid=lambda v: 1.0 / (1.0 + np.exp(-v)),
        abs=np.abs,
        floor=np.floor,
        ceil=np.ceil,
        sin=np.sin,
        cos=np.cos,
        nearbyint=np.rint,  # round half to even (torch.round)
        trunc=np.trunc,
    )
    return types.SimpleNamespace(**{name: unary(fn) for name, fn in table.items()})


def install() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton
    import triton.language as tl
    import triton.runtime.interpreter as interpreter
    from sm80_driver import sm80_driver

    # kernels run in the interpreter on CPU tensors, timed by Triton's do_bench
    triton.runtime.driver.set_active(
        sm80_driver(torch.device("cpu"), torch.cpu, lambda: triton.testing.do_bench)
    )
    _fix_bf16(interpreter, tl)

    from torch._inductor.runtime import triton_helpers

    triton_helpers.set_driver_to_cpu = lambda: None
    triton_helpers.libdevice = _numpy_libdevice(interpreter, tl)


def inductor_config() -> dict:
    """Inductor settings (for ``config.patch``) under which CPU tensors get Triton kernels in the interpreter."""
    return {
        "cpu_backend": "triton",
        "benchmark_template_fusion": False,  # fusion benchmarking does not run in interpreter mode
    }
