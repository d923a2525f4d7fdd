"""``torch.ops.inductor_quant.quantized_matmul``: one op for the whole W8A16 ... W4A8 table.

    quantized_matmul(x, w, scaler, zero_point=None, block_size=-1, int4_weight=False,
                     quantize_activation=False, bias=None) -> Tensor

Weight layout (the op's contract):

* ``w``: int8 ``[N, K]``, row-major, one output channel per row (``nn.Linear``'s ``weight`` layout). With
  ``int4_weight=True`` the values are int4, ``[-8, 7]``, one per int8 (an int8 container, unpacked);
* ``scaler``: float ``[N]`` with ``block_size=-1`` (per channel), else ``[N, K / block_size]``: one scale per block
  of ``block_size`` consecutive values of a row;
* ``zero_point``: optional, float, the shape of ``scaler``; the weight is ``W = (w - zero_point) * scaler`` per
  channel / block (``W = w * scaler`` without it);
* ``quantize_activation=True``: ``x`` is quantized per token (row) to int8 by absmax (``scale = max|x| / 127``)
  and the product is an int8 x int8 GEMM with exact int32 sums (W8A8 / W4A8); else ``x`` stays float (A16);
* ``x``: ``[..., K]`` fp32 / bf16 / fp16; the result is ``[..., N]`` in ``x.dtype``; ``bias``: optional ``[N]``.

The op is ``CompositeImplicitAutograd``: eagerly and when traced by ``torch.compile`` it becomes the package's
kernel op for its cell, so ``backend="quant_inductor"`` lowers each cell to a quantized kernel:

======================  ==================================================================================
W8A16 per-channel       ``int8_weight_linear`` (decode: int8 GEMV template, prepacked; prefill: chunked dequant GEMM)
W8A16 blockwise         ``int8_blockwise_linear`` (chunked dequant GEMM, block scales applied while widening)
W4A16 (both)            compiled: ``int4_weight_linear`` on the weight packed to 4 bits (constant-folded at
                        compile time with freezing; int4 GEMV template at decode); eagerly the int8 kernels above
W8A8 / W4A8 (both)      activation quantization (one fused Inductor kernel), then ``int8_dynamic_linear``
                        (``torch._int_mm``: oneDNN's VNNI / AMX-int8 GEMM; blockwise: one per block, scaled in fp32)
======================  ==================================================================================

A zero point is handled exactly: for W4A16 (compiled) it moves into the int4 kernel's zero; elsewhere the kernel
runs on ``w`` and ``sum_k x[m, k] * zero_point * scaler`` (per block) is subtracted in fp32.

No shape or dtype check needs data; ``int4_weight=True`` is a promise that the values are in ``[-8, 7]``: eagerly it
is checked once per weight tensor (a ``ValueError`` otherwise); compiled code relies on it.
A8 is inference only: no gradient flows through the rounding of ``x``. A16 cells pass gradients to ``x``.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch._subclasses.fake_tensor import is_fake

from .ops import int4_weight_linear, int8_blockwise_linear, int8_dynamic_linear, int8_weight_linear
from .primitives import INT4_GROUP_SIZES, QMM_RANGES, pack_int4, qmm_groups, quantize_activation_int8

log = logging.getLogger(__name__)

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

torch.library.define(
    "inductor_quant::quantized_matmul",
    "(Tensor x, Tensor w, Tensor scaler, Tensor? zero_point=None, int block_size=-1, bool int4_weight=False, "
    "bool quantize_activation=False, Tensor? bias=None) -> Tensor",
)


def check_quantized_matmul_args(
    x: torch.Tensor,
    w: torch.Tensor,
    scaler: torch.Tensor,
    zero_point: torch.Tensor | None,
    block_size: int,
    bias: torch.Tensor | None,
) -> int:
    """Validate shapes and dtypes (never values); every message names the offending value. Returns the number of
    scale groups per output channel (1 per channel)."""
    if x.dim() < 1 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a [..., K] tensor of {_FLOAT_DTYPES}, got shape {tuple(x.shape)} of {x.dtype}"
        )
    if w.dim() != 2 or w.dtype != torch.int8:
        raise ValueError(f"w must be a 2-D int8 [N, K] tensor, got shape {tuple(w.shape)} of {w.dtype}")
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has K={x.shape[-1]} input features but w [N, K] has K={k}")
    groups = qmm_groups(k, block_size)
    expected = (n,) if block_size == -1 else (n, groups)
    what = "per-channel" if block_size == -1 else f"block_size={block_size}"
    if tuple(scaler.shape) != expected or scaler.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"scaler must be a float {list(expected)} tensor for {what} (N={n}, K={k}), "
            f"got shape {tuple(scaler.shape)} of {scaler.dtype}"
        )
    if zero_point is not None and (
        tuple(zero_point.shape) != expected or zero_point.dtype not in _FLOAT_DTYPES
    ):
        raise ValueError(
            f"zero_point must be a float {list(expected)} tensor like scaler, "
            f"got shape {tuple(zero_point.shape)} of {zero_point.dtype}"
        )
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be a float [{n}] tensor, got shape {tuple(bias.shape)} of {bias.dtype}")
    return groups


# id(weight) -> (weakref to it, its version when checked). Tensors compare elementwise, so they cannot be
# WeakKeyDictionary keys; a reused id is told apart by the dead (or different) referent.
_int4_checked: dict[int, tuple[weakref.ref, int]] = {}


def _check_int4_values(w: torch.Tensor) -> None:
    """Eagerly, once per weight tensor (and again after an in-place change): the values fit int4."""
    ref, version = _int4_checked.get(id(w), (None, None))
    if ref is not None and ref() is w and version == w._version:
        return
    lo, hi = (int(v) for v in torch.aminmax(w))
    qmin, qmax = QMM_RANGES[4]
    if lo < qmin or hi > qmax:
        raise ValueError(f"int4_weight=True needs w in [{qmin}, {qmax}], got values in [{lo}, {hi}]")
    key = id(w)
    _int4_checked[key] = (weakref.ref(w, lambda _: _int4_checked.pop(key, None)), w._version)


def int4_kernel_group(k: int, groups: int) -> int | None:
    """The group size the int4 kernel runs a W4A16 weight with: the largest supported size dividing the block
    (scales are repeated to it); ``None`` when none does (e.g. blocks of 16): that weight takes the int8 kernels."""
    block = k // groups
    return next((g for g in sorted(INT4_GROUP_SIZES, reverse=True) if block % g == 0), None)


def _zero_point_term(x_sums: torch.Tensor, scaler: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``sum_g x_sums[m, g] * zero_point[n, g] * scaler[n, g]`` in fp32: what ``(w - zero_point) * scaler`` takes away
    from the kernel's ``w * scaler`` product. ``x_sums`` holds each row's sum over each block of K."""
    n = scaler.shape[0]
    zs = (zero_point.float() * scaler.float()).reshape(n, -1)
    if zs.shape[1] == 1:
        return x_sums * zs[:, 0]
    return x_sums @ zs.t()  # [M, G] x [G, N]: G = K / block_size, a small product next to the kernel's


def _a16(x, w, scaler, zero_point, groups, int4_weight, bias, traced) -> tuple[torch.Tensor, str]:
    n, k = w.shape
    g = int4_kernel_group(k, groups) if int4_weight and traced else None
    if g is not None:
        # 4 bits per weight in the compiled graph: with freezing, the packing is folded into a constant
        reps = k // groups // g
        scale = scaler.reshape(n, groups).repeat_interleave(reps, dim=1)
        zero = torch.full_like(scale, 8, dtype=torch.float32)
        if zero_point is not None:
            zero = zero + zero_point.float().reshape(n, groups).repeat_interleave(reps, dim=1)
        packed = pack_int4((w + 8).view(torch.uint8))
        return int4_weight_linear(x, packed, scale, zero, g, bias, x.dtype), f"int4_weight_linear(group={g})"
    out_dtype = x.dtype if zero_point is None else torch.float32
    inner_bias = bias if zero_point is None else None
    if groups == 1:
        out, kernel = int8_weight_linear(x, w, scaler, inner_bias, out_dtype), "int8_weight_linear"
    else:
        out, kernel = int8_blockwise_linear(x, w, scaler, inner_bias, out_dtype), "int8_blockwise_linear"
    if zero_point is None:
        return out, kernel
    x_sums = x.float().reshape(x.shape[0], groups, -1).sum(-1)
    out = out - _zero_point_term(x_sums, scaler, zero_point)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype), kernel


def _a8(x, w, scaler, zero_point, groups, bias) -> tuple[torch.Tensor, str]:
    xq, x_scale = quantize_activation_int8(x)
    scale = scaler.float() if groups == 1 else scaler.float().reshape(w.shape[0], groups)
    if zero_point is None:
        return int8_dynamic_linear(xq, x_scale, w, scale, bias, x.dtype), "int8_dynamic_linear"
    out = int8_dynamic_linear(xq, x_scale, w, scale, None, torch.float32)
    x_sums = xq.reshape(xq.shape[0], groups, -1).sum(-1, dtype=torch.int32).float() * x_scale[:, None]
    out = out - _zero_point_term(x_sums, scaler, zero_point)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype), "int8_dynamic_linear"


@torch.library.impl("inductor_quant::quantized_matmul", "CompositeImplicitAutograd")
def quantized_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    scaler: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    block_size: int = -1,
    int4_weight: bool = False,
    quantize_activation: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with a quantized weight ``W``; the contract is in this module's docstring."""
    groups = check_quantized_matmul_args(x, w, scaler, zero_point, block_size, bias)
    traced = is_fake(x) or is_fake(w)
    if int4_weight and not traced:
        _check_int4_values(w)
    n, k = w.shape
    x2 = x.reshape(-1, k)
    if quantize_activation:
        out, kernel = _a8(x2, w, scaler, zero_point, groups, bias)
    else:
        out, kernel = _a16(x2, w, scaler, zero_point, groups, int4_weight, bias, traced)
    if traced:  # torch.compile traces an op a few times (Dynamo, AOTAutograd): a debug line each time
        log.debug(
            "quantized_matmul W%dA%d %s N=%d K=%d zero_point=%s: traced to %s",
            4 if int4_weight else 8,
            8 if quantize_activation else 16,
            "per-channel" if block_size == -1 else f"block_size={block_size}",
            n,
            k,
            zero_point is not None,
            kernel,
        )
    return out.reshape(*x.shape[:-1], n)
