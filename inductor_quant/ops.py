"""Custom ops: the boundary between the frontend (subclasses, FX pass) and the compiler (lowerings).

Graphs that reach Inductor carry ``torch.ops.inductor_quant.*``; only graphs this package produced contain them,
so their globally registered lowerings cannot change what plain ``torch.compile`` does.
"""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_int8_linear_args(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Validate ``int8_weight_linear`` arguments; every message names the offending value."""
    if x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a 2-D tensor of {_FLOAT_DTYPES}, got shape {tuple(x.shape)} of {x.dtype}"
        )
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(
            f"qweight must be a 2-D int8 [N, K] tensor, got shape {tuple(qweight.shape)} of {qweight.dtype}"
        )
    n, k = qweight.shape
    if x.shape[1] != k:
        raise ValueError(f"x has K={x.shape[1]} input features but qweight [N, K] has K={k}")
    if scale.shape != (n,) or scale.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"scale must be a [{n}] float tensor, got shape {tuple(scale.shape)} of {scale.dtype}"
        )
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


# Rows of W widened per chunk by the prefill fallback (shapes the widening GEMM does not take): about 2 MiB of
# widened weight, which stays in cache for its GEMM and (unlike a whole widened weight) is served from the heap
# instead of fresh pages. Eager sweep: 0.86-1.03x dense bf16 F.linear at M = 256 / 512 for 4096x4096, 4096x11008,
# 11008x4096, against 0.3-0.56x unchunked; compiled, in benchmarks/bench_int8.py: 0.81-0.88x.
DEQUANT_CHUNK_BYTES = 2 << 20


def int8_dequant_mm(x, qweight, scale, bias=None, *, out_dtype=None):
    """The prefill kernel of ``int8_weight_linear``. On the CPU (K a multiple of 32): the native GEMM of
    ``kernels/widening_gemm.cpp``, which widens the weight inside (bf16: ~1x dense bf16 where the chunked path below
    measured 0.8-0.9x, benchmarks/bench_int8.py; fp32 / fp16 in fp32 FMAs: 2.4x / 7.7x dense fp32 / fp16 at
    M = 512, 4096 x 4096); otherwise dense GEMMs over exactly widened chunks of W."""
    from .kernels import int8_gemm

    out = int8_gemm(x, qweight, scale, bias, out_dtype or x.dtype)
    if out is not None:
        return out
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    rows = max(64, DEQUANT_CHUNK_BYTES // (k * x.element_size()) // 64 * 64)
    x = x.contiguous()
    scale = scale.float()
    bias = bias.float() if bias is not None else None
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        acc = torch.mm(x, qweight[n0:n1].to(x.dtype).t())
        # acc is the GEMM's output in x's dtype; one fused op applies scale (and bias) in fp32 into the slice
        if bias is None:
            torch.mul(acc, scale[n0:n1], out=out[:, n0:n1])
        else:
            torch.addcmul(bias[n0:n1], acc, scale[n0:n1], out=out[:, n0:n1])
    return out


# torch 2.15's CPU _weight_int8pack_mm is only right for K % 16 == 0: measured here, K = 8, 24, 40, 120 return
# wrong values (up to inf) and K = 33, 100 crash the process. Other K take the dequantize path.
ATEN_INT8_K_MULTIPLE = 16
# Eager int8_weight_linear with bf16 activations takes the prefill GEMM above this many rows (measured, 4096 x 4096:
# aten's kernel 1.43 / 1.76 ms at M = 8 / 12, the GEMM 1.56 / 1.35 ms).
EAGER_GEMM_MIN_M = 8


@torch.library.custom_op("inductor_quant::int8_weight_linear", mutates_args=())
def int8_weight_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(x @ qweight.T) * scale + bias`` with int8 weights.

    Args:
        x: ``[M, K]`` activations, fp32 / bf16 / fp16.
        qweight: ``[N, K]`` int8, row-major (one output channel per row).
        scale: ``[N]`` per-output-channel scale, any float dtype; applied in fp32.
        bias: optional ``[N]`` float bias, added in fp32 after the scale.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means ``x.dtype``.

    Eagerly this runs aten's int8 kernel ``_weight_int8pack_mm`` (it needs the scale in ``x.dtype``) when K is a
    multiple of ``ATEN_INT8_K_MULTIPLE``, else ``int8_dequant_mm``; fp32 / fp16 activations, and bf16 ones with
    more than ``EAGER_GEMM_MIN_M`` rows, take ``int8_dequant_mm``'s native GEMM (aten's kernel is GEMV-shaped and
    slow outside bf16: 4096 x 4096 in fp32 / fp16 took 6 ms at M = 1 and ~200 ms at M = 32 against 1.1 / 3.6 ms;
    in bf16 it is faster up to M ~ 10). Compiled, the lowering in ``inductor_quant/lowerings/int8.py`` picks a
    fused kernel.
    """
    check_int8_linear_args(x, qweight, scale, bias)
    if x.shape[1] % ATEN_INT8_K_MULTIPLE or x.dtype != torch.bfloat16 or x.shape[0] > EAGER_GEMM_MIN_M:
        return int8_dequant_mm(x, qweight, scale, bias, out_dtype=out_dtype)
    out = torch._weight_int8pack_mm(x.contiguous(), qweight.contiguous(), scale.to(x.dtype))
    if bias is not None:
        out = out.float().add_(bias.float())
    return out.to(out_dtype or x.dtype)


@int8_weight_linear.register_fake
def _(x, qweight, scale, bias=None, out_dtype=None):
    check_int8_linear_args(x, qweight, scale, bias)
    return x.new_empty((x.shape[0], qweight.shape[0]), dtype=out_dtype or x.dtype)


def _int8_linear_setup_context(ctx, inputs, output):
    x, qweight, scale, bias, _ = inputs
    ctx.save_for_backward(qweight, scale)
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _int8_linear_backward(ctx, grad):
    # Only x and bias get gradients: the quantized weight and its scale are frozen by construction.
    qweight, scale = ctx.saved_tensors
    grad_x = ((grad.float() * scale.float()) @ qweight.float()).to(ctx.x_dtype)
    grad_bias = grad.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return grad_x, None, None, grad_bias, None


int8_weight_linear.register_autograd(_int8_linear_backward, setup_context=_int8_linear_setup_context)


def check_int8_packed_args(
    x: torch.Tensor, packed_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, n: int
) -> None:
    """Validate ``int8_weight_linear_packed`` arguments (the weight flat, in the blocked decode layout)."""
    from .primitives import int8_blocked_numel

    if x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a 2-D tensor of {_FLOAT_DTYPES}, got shape {tuple(x.shape)} of {x.dtype}"
        )
    expected = int8_blocked_numel(n, x.shape[1])
    if packed_weight.dtype != torch.int8 or tuple(packed_weight.shape) != (expected,):
        raise ValueError(
            f"packed_weight must be a flat int8 [{expected}] tensor (N={n}, K={x.shape[1]} in the blocked layout), "
            f"got shape {tuple(packed_weight.shape)} of {packed_weight.dtype}"
        )
    if scale.shape != (n,) or scale.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"scale must be a [{n}] float tensor, got shape {tuple(scale.shape)} of {scale.dtype}"
        )
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


@torch.library.custom_op("inductor_quant::int8_weight_linear_packed", mutates_args=())
def int8_weight_linear_packed(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    out_features: int,
) -> torch.Tensor:
    """``int8_weight_linear`` with the weight in the blocked decode layout of ``primitives.pack_int8_blocked``:
    how an ``Int8WeightTensor`` holds its weight on the CPU (``layout="blocked"``), and what the prepack pass makes
    of other constant int8 weights of decode graphs.

    Eagerly: the native kernels of ``kernels/widening_gemm.cpp`` reading the blocked layout (a GEMV for a few bf16
    rows, else the GEMM); where they do not apply,
    the weight is unpacked (a transient copy) for ``int8_weight_linear``. Compiled: the GEMV template (decode) or
    that GEMM (prefill), ``lowerings/int8.py``.
    """
    from .kernels import int8_gemm, int8_gemv_blocked
    from .primitives import unpack_int8_blocked

    check_int8_packed_args(x, packed_weight, scale, bias, out_features)
    out = int8_gemv_blocked(x, packed_weight.contiguous(), scale, bias, out_dtype or x.dtype)
    if out is None:
        out = int8_gemm(x, packed_weight, scale, bias, out_dtype or x.dtype, blocked=True)
    if out is not None:
        return out
    qweight = unpack_int8_blocked(packed_weight, out_features, x.shape[1])
    return int8_weight_linear(x, qweight, scale, bias, out_dtype)


@int8_weight_linear_packed.register_fake
def _(x, packed_weight, scale, bias, out_dtype, out_features):
    check_int8_packed_args(x, packed_weight, scale, bias, out_features)
    return x.new_empty((x.shape[0], out_features), dtype=out_dtype or x.dtype)


def _int8_packed_setup_context(ctx, inputs, output):
    x, packed_weight, scale, bias, _, out_features = inputs
    ctx.save_for_backward(packed_weight, scale)
    ctx.shape = (out_features, x.shape[1])
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _int8_packed_backward(ctx, grad):
    from .primitives import unpack_int8_blocked

    packed_weight, scale = ctx.saved_tensors
    qweight = unpack_int8_blocked(packed_weight, *ctx.shape)
    grad_x = ((grad.float() * scale.float()) @ qweight.float()).to(ctx.x_dtype)
    grad_bias = grad.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return grad_x, None, None, grad_bias, None, None


int8_weight_linear_packed.register_autograd(_int8_packed_backward, setup_context=_int8_packed_setup_context)


# --- int4 groupwise ----------------------------------------------------------------------------------------


def check_int4_linear_args(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> None:
    """Validate ``int4_weight_linear`` arguments; every message names the offending value."""
    if x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a 2-D tensor of {_FLOAT_DTYPES}, got shape {tuple(x.shape)} of {x.dtype}"
        )
    _check_int4_weight(x.shape[1], qdata, scale, zero_point, group_size, bias)


def _check_int4_weight(x_k: int, qdata, scale, zero_point, group_size: int, bias) -> None:
    from .primitives import INT4_ZERO_POINT_DTYPES, check_int4_group

    if qdata.dtype != torch.uint8 or qdata.dim() != 2:
        raise ValueError(
            f"qdata must be a 2-D uint8 [N, K / 2] tensor, got shape {tuple(qdata.shape)} of {qdata.dtype}"
        )
    n, k = qdata.shape[0], 2 * qdata.shape[1]
    if x_k != k:
        raise ValueError(f"x has K={x_k} input features but qdata [N, K / 2] has K={k}")
    check_int4_group(k, group_size)
    groups = (n, k // group_size)
    if scale.shape != groups or scale.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"scale must be a {list(groups)} float tensor (group_size={group_size}), "
            f"got shape {tuple(scale.shape)} of {scale.dtype}"
        )
    if zero_point.shape != groups or zero_point.dtype not in INT4_ZERO_POINT_DTYPES:
        raise ValueError(
            f"zero_point must be a {list(groups)} tensor of {INT4_ZERO_POINT_DTYPES}, "
            f"got shape {tuple(zero_point.shape)} of {zero_point.dtype}"
        )
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


def widened_chunks_mm(x, n, widen_rows, bias=None, out_dtype=None):
    """``x @ W.T (+ bias)`` for a quantized ``[n, K]`` weight that ``widen_rows(n0, n1)`` turns into float rows of
    ``x.dtype``: ~``DEQUANT_CHUNK_BYTES`` of rows at a time, each chunk multiplied by the dense GEMM while it is hot
    in cache. The whole float weight is never built."""
    m, k = x.shape
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    rows = max(64, DEQUANT_CHUNK_BYTES // (k * x.element_size()) // 64 * 64)
    x = x.contiguous()
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        w = widen_rows(n0, n1)
        if bias is None:
            out[:, n0:n1] = x @ w.t()
        else:
            out[:, n0:n1] = torch.addmm(bias[n0:n1].to(x.dtype), x, w.t())
    return out


def int4_dequant_mm(x, qdata, scale, zero_point, group_size, bias=None, *, out_dtype=None):
    """The prefill kernel of ``int4_weight_linear``. On the CPU (K a multiple of 32): the native GEMM of
    ``kernels/widening_gemm.cpp``, which widens the weight inside; otherwise dense GEMMs over chunks of W widened to
    ``x.dtype`` (by the native kernel of ``kernels/int4_dequant.cpp``), each used while it is hot in cache. Both
    round the weight to ``x.dtype`` exactly as ``int4_dequantize_rows`` does."""
    from .kernels import int4_dequantize_rows, int4_gemm

    out = int4_gemm(x, qdata, scale, zero_point, group_size, bias, out_dtype or x.dtype)
    if out is not None:
        return out

    def widen_rows(n0, n1):
        return int4_dequantize_rows(qdata[n0:n1], scale[n0:n1], zero_point[n0:n1], group_size, x.dtype)

    return widened_chunks_mm(x, qdata.shape[0], widen_rows, bias, out_dtype)


@torch.library.custom_op("inductor_quant::int4_weight_linear", mutates_args=())
def int4_weight_linear(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with the int4 groupwise weight ``W[n, k] = (q[n, k] - zero_point[n, g]) * scale[n, g]``,
    ``g = k // group_size``.

    Args:
        x: ``[M, K]`` activations, fp32 / bf16 / fp16.
        qdata: uint8 ``[N, K / 2]``: ``k = 2j`` in the low nibble of byte j, ``k = 2j + 1`` in the high nibble.
        scale: ``[N, K / group_size]`` float scales.
        zero_point: ``[N, K / group_size]`` zero points: uint8 in [0, 15], or float (fractional).
        group_size: 32, 64, 128 or 256, dividing K.
        bias: optional ``[N]`` float bias.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means ``x.dtype``.

    Eagerly this is ``int4_dequant_mm`` (chunks of W widened to ``x.dtype``, never the whole float weight);
    compiled, the lowering in ``inductor_quant/lowerings/int4.py`` picks a fused kernel.
    """
    check_int4_linear_args(x, qdata, scale, zero_point, group_size, bias)
    return int4_dequant_mm(x, qdata, scale, zero_point, group_size, bias, out_dtype=out_dtype)


@int4_weight_linear.register_fake
def _(x, qdata, scale, zero_point, group_size, bias=None, out_dtype=None):
    check_int4_linear_args(x, qdata, scale, zero_point, group_size, bias)
    return x.new_empty((x.shape[0], qdata.shape[0]), dtype=out_dtype or x.dtype)


def _int4_linear_setup_context(ctx, inputs, output):
    x, qdata, scale, zero_point, group_size, bias, _ = inputs
    ctx.save_for_backward(qdata, scale, zero_point)
    ctx.group_size = group_size
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _int4_linear_backward(ctx, grad):
    # Only x and bias get gradients: the quantized weight is frozen by construction.
    from .primitives import dequantize_int4

    qdata, scale, zero_point = ctx.saved_tensors
    w = dequantize_int4(qdata, scale, zero_point, ctx.group_size)
    grad_x = (grad.float() @ w).to(ctx.x_dtype)
    grad_bias = grad.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return grad_x, None, None, None, None, grad_bias, None


int4_weight_linear.register_autograd(_int4_linear_backward, setup_context=_int4_linear_setup_context)


@torch.library.custom_op("inductor_quant::int4_weight_linear_packed", mutates_args=())
def int4_weight_linear_packed(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    out_features: int,
    zero_is_offset: bool = False,
) -> torch.Tensor:
    """``int4_weight_linear`` with the nibbles in the blocked decode layout of ``primitives.pack_int4_blocked``.

    ``zero`` is the zero point (``W = (q - zero) * scale``), or, with ``zero_is_offset``, an fp32 offset
    (``W = q * scale + zero``: the form aten's ``_weight_int4pack_mm_for_cpu`` scales and zeros convert to exactly).
    How an ``Int4WeightTensor`` held blocked runs (``layout="blocked"``), and what the prepack pass makes of other
    constant int4 weights of decode graphs (K zero-padded to a multiple of 128). Eagerly: the native GEMM of
    ``kernels/widening_gemm.cpp`` on the blocked layout where K is not padded; otherwise the weight is unpacked and
    widened (the reference, not a fast path). Compiled: the GEMV template (decode) or that GEMM (prefill).
    """
    from .kernels import int4_gemm
    from .primitives import unpack_int4, unpack_int4_blocked

    k, groups = x.shape[1], x.shape[1] // group_size
    if not zero_is_offset and scale.shape[1] == groups:
        out = int4_gemm(x, packed_weight, scale, zero, group_size, bias, out_dtype or x.dtype, blocked=True)
        if out is not None:
            return out
    # the packed K may be zero-padded past x's K (the prepack pass pads it to the kernel's step): drop the padding
    qdata = unpack_int4_blocked(packed_weight, out_features, scale.shape[1] * group_size)[:, : k // 2]
    scale, zero = scale[:, :groups], zero[:, :groups]
    if not zero_is_offset:
        return int4_weight_linear(x, qdata, scale, zero, group_size, bias, out_dtype)
    n, k = out_features, x.shape[1]
    q = unpack_int4(qdata).float().view(n, -1, group_size)
    w = (q * scale.float()[..., None] + zero.float()[..., None]).view(n, k)
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or x.dtype)


@int4_weight_linear_packed.register_fake
def _(x, packed_weight, scale, zero, group_size, bias, out_dtype, out_features, zero_is_offset=False):
    return x.new_empty((x.shape[0], out_features), dtype=out_dtype or x.dtype)


def _int4_packed_setup_context(ctx, inputs, output):
    x, packed_weight, scale, zero, group_size, bias, _, out_features, zero_is_offset = inputs
    ctx.save_for_backward(packed_weight, scale, zero)
    ctx.args = (group_size, out_features, zero_is_offset, x.shape[1])
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _int4_packed_backward(ctx, grad):
    from .primitives import unpack_int4, unpack_int4_blocked

    packed_weight, scale, zero = ctx.saved_tensors
    group_size, n, zero_is_offset, k = ctx.args
    groups = k // group_size
    qdata = unpack_int4_blocked(packed_weight, n, scale.shape[1] * group_size)[:, : k // 2]
    q = unpack_int4(qdata).float().view(n, groups, group_size)
    s, z = scale[:, :groups].float()[..., None], zero[:, :groups].float()[..., None]
    w = (q * s + z if zero_is_offset else (q - z) * s).view(n, k)
    grad_x = (grad.float() @ w).to(ctx.x_dtype)
    grad_bias = grad.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return grad_x, None, None, None, None, grad_bias, None, None, None


int4_weight_linear_packed.register_autograd(_int4_packed_backward, setup_context=_int4_packed_setup_context)


@torch.library.custom_op("inductor_quant::aten_int4pack_mm_checked", mutates_args=())
def aten_int4pack_mm_checked(
    x: torch.Tensor, packed_weight: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor
) -> torch.Tensor:
    """aten's ``_weight_int4pack_mm_for_cpu`` on contiguous operands.

    torch 2.15's kernel reads a non-contiguous ``scales_and_zeros`` as if it were contiguous (silently wrong
    results); the rewrite pass routes such calls here. No lowering: Inductor calls this eager implementation.
    """
    return torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.contiguous(), packed_weight.contiguous(), group_size, scales_and_zeros.contiguous()
    )


@aten_int4pack_mm_checked.register_fake
def _(x, packed_weight, group_size, scales_and_zeros):
    return x.new_empty((x.shape[0], packed_weight.shape[0]))


# --- int4 groupwise weights x int8 activations (W4A8, an explicit option) -----------------------------------------


def check_int4_a8_mm_args(x, x_scale, qdata, scale, zero_point, group_size, bias) -> None:
    """Validate ``int4_a8_mm`` arguments; every message names the offending value."""
    if x.dim() != 2 or x.dtype != torch.int8:
        raise ValueError(f"x must be a 2-D int8 [M, K] tensor, got shape {tuple(x.shape)} of {x.dtype}")
    m = x.shape[0]
    if x_scale.shape != (m,) or x_scale.dtype != torch.float32:
        raise ValueError(
            f"x_scale must be a [{m}] float32 tensor, got shape {tuple(x_scale.shape)} of {x_scale.dtype}"
        )
    _check_int4_weight(x.shape[1], qdata, scale, zero_point, group_size, bias)


def int4_a8_dequant_mm(x, x_scale, qdata, scale, zero_point, group_size, bias=None, *, out_dtype=None):
    """The eager / prefill kernel of ``int4_a8_mm``: the integer activations (exact in any float dtype) times chunks
    of W widened to the output dtype (bf16 / fp16: as W4A16's prefill does; otherwise fp32) by the dense GEMM, then
    the activation scale and bias in fp32."""
    dtype = out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.float32
    acc = int4_dequant_mm(x.to(dtype), qdata, scale, zero_point, group_size, out_dtype=torch.float32)
    out = acc.mul_(x_scale[:, None])
    if bias is not None:
        out = out.add_(bias.float())
    return out.to(out_dtype or torch.float32)


@torch.library.custom_op("inductor_quant::int4_a8_mm", mutates_args=())
def int4_a8_mm(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(x @ W.T) * x_scale[:, None] (+ bias)`` with int8 activations and the int4 groupwise weight
    ``W[n, k] = (q[n, k] - zero_point[n, g]) * scale[n, g]`` of ``int4_weight_linear``.

    Args:
        x: ``[M, K]`` int8 activations (``primitives.quantize_activation_int8``, per token).
        x_scale: ``[M]`` fp32 activation scales.
        qdata, scale, zero_point, group_size: the int4 weight, as for ``int4_weight_linear``.
        bias: optional ``[N]`` float bias.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means float32.

    Per group the sum ``sum_k x[m, k] * (q[n, k] - zero_point[n, g])`` is an exact integer; it is scaled by
    ``scale[n, g]`` and summed over groups in fp32, then multiplied by ``x_scale[m]`` (bias added in fp32).
    Eagerly (``int4_a8_dequant_mm``) W is widened a chunk of rows at a time to the output dtype (bf16 / fp16; fp32
    otherwise) for a dense GEMM with the (exact) integer activations. Compiled (``lowerings/int4.py``), decode shapes
    on CPU take AVX512-VNNI kernels with exact integer sums per group: ``int4_a8_gemv`` on frozen weights (prepacked),
    ``int4_gemv``'s int8 path on weights that are graph inputs.
    """
    check_int4_a8_mm_args(x, x_scale, qdata, scale, zero_point, group_size, bias)
    return int4_a8_dequant_mm(x, x_scale, qdata, scale, zero_point, group_size, bias, out_dtype=out_dtype)


@int4_a8_mm.register_fake
def _(x, x_scale, qdata, scale, zero_point, group_size, bias=None, out_dtype=None):
    check_int4_a8_mm_args(x, x_scale, qdata, scale, zero_point, group_size, bias)
    return x.new_empty((x.shape[0], qdata.shape[0]), dtype=out_dtype or torch.float32)


@torch.library.custom_op("inductor_quant::int4_a8_mm_packed", mutates_args=())
def int4_a8_mm_packed(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    packed_weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    out_features: int,
) -> torch.Tensor:
    """``int4_a8_mm`` with the nibbles, scales and zero points in the lane layout of
    ``primitives.pack_int4_lanes`` / ``pack_group_lanes``. Made only by the prepack pass; its lowering is the
    ``int4_a8_gemv`` template. This eager implementation (unpack, then ``int4_a8_mm``) is the reference."""
    from .primitives import unpack_group_lanes, unpack_int4_lanes

    k = x.shape[1]
    groups = k // group_size
    qdata = unpack_int4_lanes(packed_weight, out_features, k)
    s, z = (unpack_group_lanes(t, out_features, groups) for t in (scale, zero_point))
    return int4_a8_mm(x, x_scale, qdata, s, z, group_size, bias, out_dtype)


@int4_a8_mm_packed.register_fake
def _(x, x_scale, packed_weight, scale, zero_point, group_size, bias, out_dtype, out_features):
    return x.new_empty((x.shape[0], out_features), dtype=out_dtype or torch.float32)


def int4_a8_linear(x, qdata, scale, zero_point, group_size, bias=None):
    """The W4A8 forward on ``[M, K]`` float activations: per-token absmax int8 quantization of ``x`` (plain torch
    ops, which Inductor fuses into one kernel in front of the matmul), then ``int4_a8_mm``; the result in
    ``x``'s dtype. Inference only: the rounding of the activations has no gradient."""
    from .primitives import quantize_activation_int8

    if torch.is_grad_enabled() and x.requires_grad:
        raise NotImplementedError(
            "int4 weights with int8 activations (Int8DynamicActivationInt4WeightConfig) are inference-only: "
            "run under torch.no_grad(), or use Int4WeightOnlyConfig to train through the layer"
        )
    xq, x_scale = quantize_activation_int8(x, "per_token")
    return torch.ops.inductor_quant.int4_a8_mm(
        xq, x_scale, qdata, scale, zero_point, group_size, bias, x.dtype
    )


# --- ternary weights x int8 activations (BitLinear) ---------------------------------------------------------------


def check_ternary_mm_args(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    """Validate ``ternary_mm`` arguments; every message names the offending value."""
    from .primitives import ternary_packed_k

    if x.dim() != 2 or x.dtype != torch.int8:
        raise ValueError(f"x must be a 2-D int8 [M, K] tensor, got shape {tuple(x.shape)} of {x.dtype}")
    m, k = x.shape
    if x_scale.shape != (m,) or x_scale.dtype != torch.float32:
        raise ValueError(
            f"x_scale must be a [{m}] float32 tensor, got shape {tuple(x_scale.shape)} of {x_scale.dtype}"
        )
    if qweight.dim() != 2 or qweight.dtype != torch.uint8 or qweight.shape[1] != ternary_packed_k(k):
        raise ValueError(
            f"qweight must be the packed ternary [N, {ternary_packed_k(k)}] uint8 weight for K={k}, "
            f"got shape {tuple(qweight.shape)} of {qweight.dtype}"
        )
    n = qweight.shape[0]
    if weight_scale.shape not in ((1,), (n,)) or weight_scale.dtype != torch.float32:
        raise ValueError(
            f"weight_scale must be a [1] or [{n}] float32 tensor, "
            f"got shape {tuple(weight_scale.shape)} of {weight_scale.dtype}"
        )
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


# Rows of the ternary weight unpacked to int8 per chunk of ternary_mm's eager / prefill kernel (~2 MiB).
TERNARY_CHUNK_BYTES = 2 << 20


@torch.library.custom_op("inductor_quant::ternary_mm", mutates_args=())
def ternary_mm(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(x @ T.T) * x_scale[:, None] * weight_scale (+ bias)`` with int8 activations and ternary weights.

    Args:
        x: ``[M, K]`` int8 activations (``primitives.quantize_activation_int8``).
        x_scale: ``[M]`` fp32 activation scales (one per row; a per-tensor scale is repeated).
        qweight: ``[N, ceil(K / 256) * 64]`` uint8: the ternary weight ``T`` in {-1, 0, +1} packed four values per
            byte by ``primitives.pack_ternary`` (2-bit codes ``T + 1``; the layout is described there).
        weight_scale: ``[1]`` (per tensor) or ``[N]`` (per output channel) fp32 scales.
        bias: optional ``[N]`` float bias.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means float32.

    The integer sums are exact (int32); the scales and bias are applied in fp32, in the order written above.
    Eagerly the weight is unpacked ~2 MiB of rows at a time and multiplied by ``torch._int_mm``; compiled, the
    lowering in ``inductor_quant/lowerings/ternary.py`` picks between that and the ``ternary_gemv`` CPP template.
    """
    from .primitives import unpack_ternary

    check_ternary_mm_args(x, x_scale, qweight, weight_scale, bias)
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or torch.float32, device=x.device)
    rows = max(64, TERNARY_CHUNK_BYTES // k // 64 * 64)
    x = x.contiguous()
    scale_mn = x_scale[:, None]
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        acc = torch._int_mm(x, unpack_ternary(qweight[n0:n1], k).t()).float()
        ws = weight_scale if weight_scale.numel() == 1 else weight_scale[n0:n1]
        y = acc * scale_mn * ws
        if bias is not None:
            y = y + bias[n0:n1].float()
        out[:, n0:n1] = y
    return out


@ternary_mm.register_fake
def _(x, x_scale, qweight, weight_scale, bias=None, out_dtype=None):
    check_ternary_mm_args(x, x_scale, qweight, weight_scale, bias)
    return x.new_empty((x.shape[0], qweight.shape[0]), dtype=out_dtype or torch.float32)


def ternary_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation_granularity: str = "per_token",
    eps: float = 1e-5,
) -> torch.Tensor:
    """BitLinear's inference forward on ``[..., K]`` float activations: absmax int8 quantization of ``x`` (plain
    torch ops, which Inductor fuses into one kernel), then ``ternary_mm``; the result in ``x``'s dtype."""
    from .primitives import quantize_activation_int8

    lead = x.shape[:-1]
    xq, x_scale = quantize_activation_int8(x.reshape(-1, x.shape[-1]), activation_granularity, eps)
    out = torch.ops.inductor_quant.ternary_mm(xq, x_scale, qweight, weight_scale, bias, x.dtype)
    return out.reshape(*lead, qweight.shape[0])


# --- quantized_matmul kernels: int8 weights with block scales; int8 activations x int8 weights --------------------


def _check_block_scale(k: int, n: int, scale: torch.Tensor, dtypes: tuple) -> int:
    """``scale`` must be ``[N]`` or ``[N, G]`` with G dividing K; returns G."""
    groups = 1 if scale.dim() == 1 else scale.shape[-1]
    if scale.dim() not in (1, 2) or scale.shape[0] != n or k % groups or scale.dtype not in dtypes:
        raise ValueError(
            f"scale must be a [{n}] or [{n}, G] tensor of {dtypes} with G dividing K={k}, "
            f"got shape {tuple(scale.shape)} of {scale.dtype}"
        )
    return groups


def check_int8_blockwise_linear_args(x, qweight, scale, bias) -> None:
    """Validate ``int8_blockwise_linear`` arguments; every message names the offending value."""
    if x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a 2-D tensor of {_FLOAT_DTYPES}, got shape {tuple(x.shape)} of {x.dtype}"
        )
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.shape[1] != x.shape[1]:
        raise ValueError(
            f"qweight must be a 2-D int8 [N, K={x.shape[1]}] tensor, "
            f"got shape {tuple(qweight.shape)} of {qweight.dtype}"
        )
    n = qweight.shape[0]
    _check_block_scale(x.shape[1], n, scale, _FLOAT_DTYPES)
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


def int8_blockwise_dequant_mm(x, qweight, scale, bias=None, *, out_dtype=None):
    """The kernel of ``int8_blockwise_linear``: W dequantized (``q * scale`` per block, in fp32, rounded once to
    ``x.dtype``) inside the native widening GEMM (on the CPU, blocks a multiple of 32), else ~2 MiB
    of rows at a time, each chunk multiplied by the dense GEMM while it is hot in cache."""
    from .kernels import int8_block_gemm

    out = int8_block_gemm(x, qweight, scale, bias, out_dtype or x.dtype)
    if out is not None:
        return out
    n, k = qweight.shape
    scale = scale.float().reshape(n, -1, 1)

    def widen_rows(n0, n1):
        blocks = qweight[n0:n1].reshape(n1 - n0, scale.shape[1], -1)
        return (blocks * scale[n0:n1]).reshape(n1 - n0, k).to(x.dtype)

    return widened_chunks_mm(x, n, widen_rows, bias, out_dtype)


@torch.library.custom_op("inductor_quant::int8_blockwise_linear", mutates_args=())
def int8_blockwise_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W[n, k] = qweight[n, k] * scale[n, k // (K / G)]``: int8 weights, one scale per
    block of ``K / G`` values along K.

    Args:
        x: ``[M, K]`` activations, fp32 / bf16 / fp16.
        qweight: ``[N, K]`` int8, row-major.
        scale: ``[N, G]`` float scales (``[N]`` is one block per row); G divides K.
        bias: optional ``[N]`` float bias.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means ``x.dtype``.

    Eagerly and compiled this is ``int8_blockwise_dequant_mm`` (chunks of W widened, never the whole float weight).
    """
    check_int8_blockwise_linear_args(x, qweight, scale, bias)
    return int8_blockwise_dequant_mm(x, qweight, scale, bias, out_dtype=out_dtype)


@int8_blockwise_linear.register_fake
def _(x, qweight, scale, bias=None, out_dtype=None):
    check_int8_blockwise_linear_args(x, qweight, scale, bias)
    return x.new_empty((x.shape[0], qweight.shape[0]), dtype=out_dtype or x.dtype)


def _int8_blockwise_backward(ctx, grad):
    from .primitives import dequantize_weight

    qweight, scale = ctx.saved_tensors
    grad_x = (grad.float() @ dequantize_weight(qweight, scale)).to(ctx.x_dtype)
    grad_bias = grad.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return grad_x, None, None, grad_bias, None


# same inputs as int8_weight_linear, so the same context; only the weight's dequantization differs
int8_blockwise_linear.register_autograd(_int8_blockwise_backward, setup_context=_int8_linear_setup_context)


def check_int8_dynamic_linear_args(x, x_scale, qweight, scale, bias) -> None:
    """Validate ``int8_dynamic_linear`` arguments; every message names the offending value."""
    if x.dim() != 2 or x.dtype != torch.int8:
        raise ValueError(f"x must be a 2-D int8 [M, K] tensor, got shape {tuple(x.shape)} of {x.dtype}")
    m, k = x.shape
    if x_scale.shape != (m,) or x_scale.dtype != torch.float32:
        raise ValueError(
            f"x_scale must be a [{m}] float32 tensor, got shape {tuple(x_scale.shape)} of {x_scale.dtype}"
        )
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.shape[1] != k:
        raise ValueError(
            f"qweight must be a 2-D int8 [N, K={k}] tensor, got shape {tuple(qweight.shape)} of {qweight.dtype}"
        )
    n = qweight.shape[0]
    _check_block_scale(k, n, scale, (torch.float32,))
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a [{n}] float tensor, got shape {tuple(bias.shape)} of {bias.dtype}")


# Output columns per chunk of the blockwise int8 x int8 kernel: the fp32 accumulator of a chunk stays in cache
# while the blocks' int32 products are added into it (sweep at M = 512, 4096 x 4096, 128-blocks: 256-1024 equal).
INT8_DYNAMIC_CHUNK_COLUMNS = 512


def int8_dynamic_int_mm(x, x_scale, qweight, scale, bias=None, *, out_dtype=None):
    """The kernel of ``int8_dynamic_linear``: exact int32 sums by ``torch._int_mm`` (oneDNN's VNNI / AMX-int8 GEMM on
    CPU), then the scales in fp32. Per-channel scales take one GEMM; blockwise scales one GEMM per block and chunk
    of output columns, each block's sums scaled and added in fp32."""
    m, k = x.shape
    n = qweight.shape[0]
    scale = scale.reshape(n, -1)
    groups = scale.shape[1]
    x = x.contiguous()
    x_scale = x_scale[:, None]
    if groups == 1:
        out = torch._int_mm(x, qweight.t()) * x_scale * scale[:, 0]
        if bias is not None:
            out = out + bias.float()
        return out.to(out_dtype or torch.float32)
    out = torch.empty((m, n), dtype=out_dtype or torch.float32, device=x.device)
    blocks = x.reshape(m, groups, -1).transpose(0, 1).contiguous()  # [G, M, K / G]
    for n0 in range(0, n, INT8_DYNAMIC_CHUNK_COLUMNS):
        n1 = min(n, n0 + INT8_DYNAMIC_CHUNK_COLUMNS)
        w = qweight[n0:n1].reshape(n1 - n0, groups, -1).transpose(0, 1).contiguous()  # [G, cols, K / G]
        acc = torch.zeros((m, n1 - n0), dtype=torch.float32, device=x.device)
        for g in range(groups):
            acc.addcmul_(torch._int_mm(blocks[g], w[g].t()), scale[n0:n1, g])
        acc.mul_(x_scale)
        if bias is not None:
            acc.add_(bias[n0:n1].float())
        out[:, n0:n1] = acc
    return out


@torch.library.custom_op("inductor_quant::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(x @ qweight.T) * x_scale[:, None] * scale (+ bias)``: int8 activations times int8 weights, exact int32
    sums, scales and bias in fp32.

    Args:
        x: ``[M, K]`` int8 activations (``primitives.quantize_activation_int8``: per-token absmax).
        x_scale: ``[M]`` fp32 activation scales.
        qweight: ``[N, K]`` int8 weights, row-major.
        scale: fp32 weight scales, ``[N]`` (per channel) or ``[N, G]`` (one per block of ``K / G`` values; the int32
            sum of each block is scaled separately).
        bias: optional ``[N]`` float bias.
        out_dtype: dtype of the ``[M, N]`` result; ``None`` means float32.
    """
    check_int8_dynamic_linear_args(x, x_scale, qweight, scale, bias)
    return int8_dynamic_int_mm(x, x_scale, qweight, scale, bias, out_dtype=out_dtype)


@int8_dynamic_linear.register_fake
def _(x, x_scale, qweight, scale, bias=None, out_dtype=None):
    check_int8_dynamic_linear_args(x, x_scale, qweight, scale, bias)
    return x.new_empty((x.shape[0], qweight.shape[0]), dtype=out_dtype or torch.float32)
