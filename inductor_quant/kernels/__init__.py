"""Native helper kernels for the eager ops, compiled on first use with Inductor's own C++ toolchain.

``widening_gemm.cpp`` is the prefill GEMM of ``int8_weight_linear``, ``int4_weight_linear`` and
``int8_blockwise_linear`` (the weight widened inside it, a slice at a time);
``int4_dequant.cpp`` widens rows of an int4 weight (the prefill fallback where that GEMM does not apply);
``int4_lanes.cpp`` repacks int4 nibbles into the W4A8 lane layout at compile time (the prepack pass). They are
compiled by ``torch._inductor.codecache.CppCodeCache`` (same compiler, flags and on-disk cache as Inductor's CPU kernels);
where that is not possible (no compiler, a non-CPU tensor) the same numbers come from torch ops, more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_OUT_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


_HERE = Path(__file__).parent
_INCLUDE = re.compile(r'^#include "(\w+\.h)"$', re.MULTILINE)


def inline_includes(source: str) -> str:
    """``source`` with each ``#include "name.h"`` line replaced by that header of this folder (the native kernels
    and the CPP templates are compiled from strings, with no include path of the package's)."""
    return _INCLUDE.sub(lambda m: (_HERE / m.group(1)).read_text(), source)


def _build(file_name: str, what: str, signatures: dict, **load_options):
    """The compiled library of ``file_name`` (next to this module), its entry points typed by ``signatures``
    (name -> (argtypes, restype)); None, with a warning naming ``what``, where it cannot be built: the callers then
    use their torch fallbacks."""
    from torch._inductor.codecache import CppCodeCache

    source = inline_includes((_HERE / file_name).read_text())
    try:
        lib = CppCodeCache.load(source, **load_options)
    except Exception as e:  # noqa: BLE001 - any build failure means: use the torch fallback
        log.warning("%s could not be built (%s); using torch ops instead", what, e)
        return None
    for name, (argtypes, restype) in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = restype
    return lib


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def _int4_dequant_fn():
    signature = {"inductor_quant_int4_dequant": ([_PTR] * 4 + [_I64] * 4, None)}
    lib = _build("int4_dequant.cpp", "int4 dequantize kernel", signature, needs_vec_isa=True)
    return lib.inductor_quant_int4_dequant if lib is not None else None


def int4_dequantize_rows(
    qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """``(q - zero_point) * scale`` per group for uint8 ``[rows, K / 2]`` nibbles: ``[rows, K]`` of ``dtype``,
    computed in fp32 and rounded once."""
    rows, k = qdata.shape[0], 2 * qdata.shape[1]
    fn = _int4_dequant_fn() if qdata.device.type == "cpu" else None
    if fn is None:
        from ..primitives import dequantize_int4

        return dequantize_int4(qdata, scale, zero_point, group_size, dtype)
    q = qdata.contiguous()
    s = scale.to(torch.float32).contiguous()
    z = zero_point.to(torch.float32).contiguous()
    out = torch.empty(rows, k, dtype=dtype)
    fn(q.data_ptr(), s.data_ptr(), z.data_ptr(), out.data_ptr(), rows, k, group_size, _OUT_KIND[dtype])
    return out


@functools.cache
def _int4_lanes_fn():
    signature = {"inductor_quant_pack_int4_lanes": ([_PTR] * 2 + [_I64] * 2, None)}
    lib = _build("int4_lanes.cpp", "int4 lane packing kernel", signature)
    return lib.inductor_quant_pack_int4_lanes if lib is not None else None


def pack_int4_lanes(qdata: torch.Tensor) -> torch.Tensor:
    """``primitives.pack_int4_lanes``, natively (a 4096 x 4096 weight in a few ms instead of tens)."""
    from ..primitives import INT4_LANE_ROWS
    from ..primitives import pack_int4_lanes as reference

    n, half_k = qdata.shape
    fn = _int4_lanes_fn() if qdata.device.type == "cpu" and half_k % 4 == 0 else None
    if fn is None:
        return reference(qdata)
    padded = torch.nn.functional.pad(qdata, (0, 0, 0, -n % INT4_LANE_ROWS)).contiguous()
    out = torch.empty(padded.numel(), dtype=torch.uint8)
    fn(padded.data_ptr(), out.data_ptr(), padded.shape[0] // INT4_LANE_ROWS, half_k // 4)
    return out


@functools.cache
def _widening_gemm_lib():
    # every entry point: (compute, x, <weight args>, bias, y, M, N, K, out_kind, num_threads) -> 1 if it computed y
    signatures = {
        "inductor_quant_int8_gemm": ([_I64] + [_PTR] * 2 + [_I64] + [_PTR] * 3 + [_I64] * 5, _I64),
        "inductor_quant_int8_gemv_blocked": ([_I64] + [_PTR] * 5 + [_I64] * 5, _I64),
        "inductor_quant_int4_gemm": (
            [_I64] + [_PTR] * 2 + [_I64] + [_PTR] * 2 + [_I64] + [_PTR] * 2 + [_I64] * 5,
            _I64,
        ),
        "inductor_quant_int8_block_gemm": ([_I64] + [_PTR] * 3 + [_I64] + [_PTR] * 2 + [_I64] * 5, _I64),
    }
    return _build("widening_gemm.cpp", "widening GEMM kernels", signatures, needs_vec_isa=True)


# how the native GEMM computes for each activation dtype (widening_gemm.cpp's Compute); bf16 on AMX tiles is 3
_COMPUTE = {torch.bfloat16: 0, torch.float32: 1, torch.float16: 2}
_BF16_AMX = 3
# rows of bf16 activations from which the GEMM runs on AMX tiles where the CPU has them (below: AVX512-BF16)
AMX_MIN_M = 8


@functools.cache
def amx_available() -> bool:
    """This CPU has AMX tiles with bf16, and the kernel let this process use them (``torch.cpu._init_amx``)."""
    from .. import _compat

    return _compat.amx_ready()


def gemm_isa(dtype: torch.dtype, m: int) -> str:
    """What the widening GEMM multiplies ``m`` rows of ``dtype`` activations with: ``amx`` (bf16, at least
    ``AMX_MIN_M`` rows, a CPU with AMX tiles, allowed by ``settings.cpu_matrix_isa``), else ``avx512``."""
    from ..settings import cpu_matrix_isa

    if dtype == torch.bfloat16 and m >= AMX_MIN_M and cpu_matrix_isa() == "amx":
        return "amx"
    return "avx512"


def _compute(x: torch.Tensor) -> int:
    return _BF16_AMX if gemm_isa(x.dtype, x.shape[0]) == "amx" else _COMPUTE[x.dtype]


def _widening_gemm(entry: str, x: torch.Tensor, n: int, weight_args, bias, out_dtype) -> torch.Tensor | None:
    """Run ``widening_gemm.cpp``'s ``entry`` on ``x [M, K]``; None where it does not apply (not a CPU tensor, K not
    a non-zero multiple of 32, no AVX512-BF16 in this build, a shape the entry declines)."""
    if x.device.type != "cpu" or x.shape[1] % 32 != 0 or x.shape[1] == 0 or out_dtype not in _OUT_KIND:
        return None
    lib = _widening_gemm_lib()
    if lib is None:
        return None
    m, k = x.shape
    # fp16 activations are widened to fp32 (exact) and multiplied in fp32, the weight rounded to fp16 as eagerly
    xk = x.float().contiguous() if x.dtype == torch.float16 else x.contiguous()
    b = bias.to(torch.float32).contiguous() if bias is not None else None
    out = torch.empty(m, n, dtype=out_dtype)
    done = getattr(lib, entry)(
        _compute(x),
        xk.data_ptr(),
        *weight_args,
        b.data_ptr() if b is not None else None,
        out.data_ptr(),
        m,
        n,
        k,
        _OUT_KIND[out_dtype],
        torch.get_num_threads(),
    )
    return out if done else None


def int8_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    blocked: bool = False,
) -> torch.Tensor | None:
    """``(x @ qweight.T) * scale (+ bias)`` for ``x [M, K]`` (bf16: bf16 dot products; fp32 / fp16: fp32 FMAs) and
    int8 ``qweight [N, K]`` (``blocked``: flat, in ``primitives.pack_int8_blocked``'s layout) on the CPU, by the
    native kernel of ``widening_gemm.cpp``; ``None`` where it does not apply (see ``_widening_gemm``): the caller
    computes it another way."""
    q = qweight.contiguous()
    s = scale.to(torch.float32).contiguous()
    args = (q.data_ptr(), int(blocked), s.data_ptr())
    return _widening_gemm("inductor_quant_int8_gemm", x, s.shape[0], args, bias, out_dtype)


# rows of bf16 activations up to which the eager blocked-layout GEMV is taken (above: int8_gemm)
INT8_GEMV_MAX_M = 8


def int8_gemv_blocked(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """``(x @ W.T) * scale (+ bias)`` for bf16 ``x [M, K]`` with M <= ``INT8_GEMV_MAX_M`` and ``W`` in the blocked
    layout (``packed``), the eager decode kernel of ``widening_gemm.cpp``; ``None`` where it does not apply."""
    if x.dtype != torch.bfloat16 or x.shape[0] > INT8_GEMV_MAX_M:
        return None
    q = packed.contiguous()
    s = scale.to(torch.float32).contiguous()
    return _widening_gemm(
        "inductor_quant_int8_gemv_blocked", x, s.shape[0], (q.data_ptr(), s.data_ptr()), bias, out_dtype
    )


def int4_gemm(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    blocked: bool = False,
) -> torch.Tensor | None:
    """``x @ W.T (+ bias)`` for ``x [M, K]`` and the int4 groupwise weight (``qdata`` uint8 ``[N, K / 2]``, or,
    ``blocked``, flat in ``primitives.pack_int4_blocked``'s layout), ``W`` rounded to ``x.dtype`` as
    ``int4_dequantize_rows`` does, by the native kernel of ``widening_gemm.cpp``; ``None`` where it does not apply
    (as ``int8_gemm``, and groups that are not a multiple of 32)."""
    q = qdata.contiguous()
    s = scale.to(torch.float32).contiguous()
    z = zero_point.to(torch.float32).contiguous()
    args = (q.data_ptr(), int(blocked), s.data_ptr(), z.data_ptr(), group_size)
    return _widening_gemm("inductor_quant_int4_gemm", x, s.shape[0], args, bias, out_dtype)


def int8_block_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """``x @ W.T (+ bias)`` for ``x [M, K]`` and the blockwise int8 weight ``W[n, k] = q[n, k] * scale[n, g]``
    (``scale [N, G]``, blocks of ``K / G``), ``W`` rounded to ``x.dtype`` as ``int8_blockwise_dequant_mm`` does, by
    the native kernel of ``widening_gemm.cpp``; ``None`` where it does not apply (as ``int8_gemm``, and blocks that
    are not a multiple of 32)."""
    n, k = qweight.shape
    q = qweight.contiguous()
    s = scale.reshape(n, -1).to(torch.float32).contiguous()
    args = (q.data_ptr(), s.data_ptr(), k // s.shape[1])
    return _widening_gemm("inductor_quant_int8_block_gemm", x, n, args, bias, out_dtype)
