"""Pure-torch quantize / dequantize: the numerics reference every kernel in the package is tested against."""

from __future__ import annotations

import torch

INT8_QMAX = 127  # symmetric range [-127, 127]: -128 is unused so that q(-w) == -q(w)
SCALE_EPS = 1e-12  # an all-zero output channel gets this scale instead of 0 (no division by zero)


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization of a ``[N, K]`` float weight.

    Returns ``qdata`` (int8, ``[N, K]``) and ``scale`` (float32, ``[N]``) with ``weight ≈ qdata * scale[:, None]``.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"expected a 2-D floating point weight, got shape {tuple(weight.shape)} of {weight.dtype}"
        )
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / INT8_QMAX).clamp_min(SCALE_EPS)
    qdata = torch.round(w / scale[:, None]).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return qdata, scale


def dequantize_int8(
    qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``qdata * scale[:, None]``, computed in fp32 and cast to ``dtype``."""
    return (qdata.float() * scale.float()[:, None]).to(dtype)


# Decode layout of an int8 [N, K] weight: blocks of ROWS rows, each stored K_STEP columns at a time, so one block
# is one contiguous stream: packed[b, s, r, j] = w[b * ROWS + r, s * K_STEP + j]. N is zero-padded to ROWS.
PACK_ROWS = 4  # rows per block: the GEMV kernel keeps 4 rows x (up to) 4 activation rows of accumulators
PACK_K_STEP = 32  # one 32-byte run per row per step
# How an int8 / int4 weight subclass holds qdata: "plain" (row-major), or "blocked" (flat: this layout for int8,
# pack_int4_blocked's for int4)
WEIGHT_LAYOUTS = ("plain", "blocked")


def pack_int8_blocked(qdata: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` int8 -> flat ``[ceil(N / 4) * 4 * K]`` int8 in the blocked decode layout (K % 32 == 0)."""
    n, k = qdata.shape
    if k % PACK_K_STEP:
        raise ValueError(f"pack_int8_blocked needs K divisible by {PACK_K_STEP}, got K={k}")
    n_pad = -n % PACK_ROWS
    w = torch.nn.functional.pad(qdata, (0, 0, 0, n_pad)) if n_pad else qdata.contiguous()
    # move 32-byte runs as 4 int64 words: the same permutation, 8x fewer elements to copy
    words = w.view(torch.int64).reshape(-1, PACK_ROWS, k // PACK_K_STEP, PACK_K_STEP // 8)
    return words.permute(0, 2, 1, 3).contiguous().view(torch.int8).reshape(-1)


def int8_blocked_numel(n: int, k: int) -> int:
    """Bytes of an ``[N, K]`` int8 weight in the blocked decode layout (N padded to ``PACK_ROWS``)."""
    return -(-n // PACK_ROWS) * PACK_ROWS * k


def _blocked_rows(packed: torch.Tensor, row_bytes: int, run: int, rows: torch.Tensor | slice):
    """The blocked layout (blocks of ``PACK_ROWS`` rows, ``run`` bytes per row per step) as ``[N / 4, steps, 4,
    run]``, and the block / row-in-block indices of ``rows``."""
    if isinstance(rows, slice):
        rows = torch.arange(packed.numel() // row_bytes, device=packed.device)[rows]
    blocks = packed.view(-1, row_bytes // run, PACK_ROWS, run)
    return blocks, rows // PACK_ROWS, rows % PACK_ROWS


def read_blocked_rows(
    packed: torch.Tensor, row_bytes: int, run: int, rows: torch.Tensor | slice
) -> torch.Tensor:
    """Rows ``rows`` (indices or a slice) of a weight in a blocked layout (``pack_int8_blocked``: ``run`` =
    ``PACK_K_STEP``; ``pack_int4_blocked``: ``INT4_PACK_RUN``), ``row_bytes`` bytes each, as ``[R, row_bytes]``."""
    blocks, block, row = _blocked_rows(packed, row_bytes, run, rows)
    return blocks[block, :, row, :].reshape(len(block), row_bytes)


def write_blocked_rows(packed: torch.Tensor, row_bytes: int, run: int, rows: slice, q: torch.Tensor) -> None:
    """Set rows ``rows`` of a weight in a blocked layout to ``q [R, row_bytes]``, in place."""
    blocks, block, row = _blocked_rows(packed, row_bytes, run, rows)
    blocks[block, :, row, :] = q.reshape(len(block), row_bytes // run, run).to(packed.dtype)


def unpack_int8_blocked(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_int8_blocked``: the ``[N, K]`` int8 weight."""
    words = packed.view(torch.int64).reshape(-1, k // PACK_K_STEP, PACK_ROWS, PACK_K_STEP // 8)
    return words.permute(0, 2, 1, 3).contiguous().view(torch.int8).reshape(-1, k)[:n].contiguous()


def int8_linear_reference(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Reference for ``int8_weight_linear``: fp32 accumulate, scale, bias, then one cast to the output dtype."""
    acc = x.float() @ qdata.float().t()
    out = acc * scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or x.dtype)


def sqnr(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    ref = reference.detach().float()
    noise = (ref - actual.detach().float()).pow(2).mean()
    return float(10 * torch.log10(ref.pow(2).mean() / noise.clamp_min(1e-30)))


# --- int4 groupwise ---------------------------------------------------------------------------------------
# Asymmetric 4-bit weights: each group of GROUP consecutive K values of a row has a scale s and an integer zero
# point zp in [0, 15], and w ≈ (q - zp) * s with q in [0, 15]. Two q per byte, in K order: byte j of a row holds
# k = 2j in its low nibble and k = 2j + 1 in its high nibble (the device-neutral storage layout).
INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_QMAX = 15
# The zero point is an integer in [0, 15] (uint8: the group's range must contain 0, as the grid w = (q - zp) * s
# does) or a float (fractional: the grid may sit anywhere, the group's own [min, max]; the form of llama.cpp's Q4_1
# / Q4_K, which it reproduces). Every kernel computes W = q * s - zp * s in fp32, whatever zp's dtype.
INT4_ZERO_POINT_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def check_int4_group(k: int, group_size: int) -> None:
    """``ValueError`` naming the value unless ``group_size`` is supported and divides ``K``."""
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if k % group_size:
        raise ValueError(
            f"int4 groupwise quantization needs K divisible by group_size={group_size}, got K={k} "
            f"(no padding is done: choose a group size that divides K, or leave this layer unquantized)"
        )


# Range shrink factors tried per group: the one with the least squared error wins. Clipping the few extreme values
# buys resolution for the rest: on N(0, 1) weights SQNR goes 19.9 -> 20.4 dB at g128 (22.1 at g32, 19.9 at g256);
# more factors (up to 17, down to 0.6) add < 0.05 dB.
INT4_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)


def quantize_int4_groupwise(
    weight: torch.Tensor,
    group_size: int = 128,
    scale_dtype: torch.dtype = torch.bfloat16,
    zero_point_dtype: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 quantization of a ``[N, K]`` float weight in groups of ``group_size`` along K.

    With integer zero points (``zero_point_dtype`` uint8) each group's range is ``[min(w, 0), max(w, 0)]``; with
    float ones, ``[min(w), max(w)]``. The range is shrunk by the factor of ``INT4_CLIP_RATIOS`` (towards 0, or
    towards its middle for float zero points) that minimises the group's squared error. Returns ``qdata`` (uint8
    ``[N, K / 2]``, two values per byte), ``scale`` (``scale_dtype``, ``[N, K / g]``) and ``zero_point``
    (``zero_point_dtype``, ``[N, K / g]``; uint8 in [0, 15]) with ``weight ≈ (q - zero_point) * scale`` per group.
    Values are rounded against the stored scale and zero point.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"expected a 2-D floating point weight, got shape {tuple(weight.shape)} of {weight.dtype}"
        )
    n, k = weight.shape
    check_int4_group(k, group_size)
    if zero_point_dtype not in INT4_ZERO_POINT_DTYPES:
        raise ValueError(f"zero_point_dtype must be one of {INT4_ZERO_POINT_DTYPES}, got {zero_point_dtype}")
    rows = max(1, (16 << 20) // (4 * k))  # bound the fp32 temporaries to ~16 MiB per candidate
    parts = [
        quantize_int4_rows(weight[i : i + rows], group_size, scale_dtype, zero_point_dtype)
        for i in range(0, n, rows)
    ]
    qdata, scale, zero_point = (torch.cat(p) for p in zip(*parts, strict=True))
    return qdata, scale, zero_point


def quantize_int4_rows(
    weight: torch.Tensor,
    group_size: int,
    scale_dtype: torch.dtype,
    zero_point_dtype: torch.dtype = torch.uint8,
):
    """``quantize_int4_groupwise`` without the checks and the memory bound: one pass over ``weight``."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    integer = zero_point_dtype == torch.uint8
    lo0, hi0 = w.amin(dim=-1), w.amax(dim=-1)
    if integer:  # the range always contains 0, so the zero point is in [0, 15]
        lo0, hi0 = lo0.clamp_max(0), hi0.clamp_min(0)
    mid = torch.zeros_like(lo0) if integer else (lo0 + hi0) / 2
    best = None
    for ratio in INT4_CLIP_RATIOS:
        lo, hi = mid + (lo0 - mid) * ratio, mid + (hi0 - mid) * ratio
        scale = ((hi - lo) / INT4_QMAX).clamp_min(SCALE_EPS).to(scale_dtype)
        s = scale.float()[..., None]
        if integer:
            zero_point = torch.round(-lo / scale.float()).clamp_(0, INT4_QMAX)[..., None]
            q = (torch.round(w / s) + zero_point).clamp_(0, INT4_QMAX)
        else:  # fractional, rounded to its stored dtype before the values are rounded against it
            zero_point = (-lo / scale.float()).to(zero_point_dtype).float()[..., None]
            q = torch.round(w / s + zero_point).clamp_(0, INT4_QMAX)
        err = ((q - zero_point) * s - w).pow_(2).sum(dim=-1)
        if best is None:
            best = [err, scale, zero_point, q]
            continue
        better = err < best[0]
        best[0] = torch.where(better, err, best[0])
        best[1] = torch.where(better, scale, best[1])
        best[2] = torch.where(better[..., None], zero_point, best[2])
        best[3] = torch.where(better[..., None], q, best[3])
    _, scale, zero_point, q = best
    return pack_int4(q.reshape(n, k)), scale, zero_point[..., 0].to(zero_point_dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` values in [0, 15] -> uint8 ``[N, K / 2]``: ``k = 2j`` low nibble, ``k = 2j + 1`` high nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(qdata: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K / 2]`` -> uint8 ``[N, K]`` values in [0, 15] (inverse of ``pack_int4``)."""
    return torch.stack([qdata & 0xF, qdata >> 4], dim=-1).reshape(qdata.shape[0], -1)


def dequantize_int4(
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` per group, computed in fp32 and cast to ``dtype``: the float ``[N, K]`` weight."""
    q = unpack_int4(qdata)
    n, k = q.shape
    groups = q.reshape(n, k // group_size, group_size).float()
    w = (groups - zero_point.float()[..., None]) * scale.float()[..., None]
    return w.reshape(n, k).to(dtype)


def int4_linear_reference(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    weight_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reference for ``int4_weight_linear``: the dequantized weight (rounded to ``weight_dtype``, fp32 by default),
    fp32 GEMM, bias, one cast. ``weight_dtype=x.dtype`` is the reference for kernels that widen the weight to the
    activation dtype before a dense GEMM (the prefill path)."""
    w = dequantize_int4(qdata, scale, zero_point, group_size, weight_dtype).float()
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or x.dtype)


def int4_a8_linear_reference(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for the W4A8 linear (``ops.int4_a8_linear``) on ``[M, K]`` float activations: per-token int8
    quantization of ``x`` (``quantize_activation_int8``), fp32 GEMM of those integers with the exact dequantized
    weight, times the activation scale, bias, one cast to ``x.dtype``."""
    xq, x_scale = quantize_activation_int8(x, "per_token")
    out = int4_linear_reference(xq.float(), qdata, scale, zero_point, group_size) * x_scale[:, None]
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


# Decode layout of int4 nibbles: blocks of PACK_ROWS rows, each stored INT4_PACK_RUN bytes (128 values) at a time:
# packed[b, s, r, j] = qdata[b * 4 + r, s * 64 + j]. N is zero-padded to PACK_ROWS.
INT4_PACK_RUN = 64


def pack_int4_blocked(qdata: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K / 2]`` nibbles -> flat uint8 in the int4 decode layout ``[N / 4][K / 128][4][64 bytes]``.
    K must be a multiple of 128."""
    n, half_k = qdata.shape
    if half_k % INT4_PACK_RUN:
        raise ValueError(f"pack_int4_blocked needs K divisible by {2 * INT4_PACK_RUN}, got K={2 * half_k}")
    n_pad = -n % PACK_ROWS
    w = torch.nn.functional.pad(qdata, (0, 0, 0, n_pad)) if n_pad else qdata.contiguous()
    words = w.view(torch.int64).reshape(-1, PACK_ROWS, half_k // INT4_PACK_RUN, INT4_PACK_RUN // 8)
    return words.permute(0, 2, 1, 3).contiguous().view(torch.uint8).reshape(-1)


def unpack_int4_blocked(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_int4_blocked``: the uint8 ``[N, K / 2]`` nibbles."""
    half_k = k // 2
    words = packed.view(torch.int64).reshape(-1, half_k // INT4_PACK_RUN, PACK_ROWS, INT4_PACK_RUN // 8)
    return words.permute(0, 2, 1, 3).contiguous().view(torch.uint8).reshape(-1, half_k)[:n].contiguous()


# W4A8 decode layout of int4 nibbles ("lanes"): blocks of INT4_LANE_ROWS rows; in each block, for every 8 consecutive
# k, 64 bytes in which bytes 4i .. 4i + 3 (32-bit lane i) belong to row i: byte j holds k + j in its low nibble and
# k + 4 + j in its high nibble. So one 64-byte load, masked (and shifted), gives 16 rows x 4 k of codes for VNNI dot
# products against 4 broadcast activation bytes. The block's group scales and zero points are stored likewise, 16
# rows per group: [N / 16][G][16]. N is zero-padded to 16 rows.
INT4_LANE_ROWS = 16


def pack_int4_lanes(qdata: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K / 2]`` nibbles -> flat uint8 in the lane layout ``[N / 16][K / 8][16][4 bytes]``."""
    n, half_k = qdata.shape
    if half_k % 4:
        raise ValueError(f"pack_int4_lanes needs K divisible by 8, got K={2 * half_k}")
    # 8 values of a row are one little-endian int32 of bytes b0..b3 holding k = 0, 1 | 2, 3 | 4, 5 | 6, 7 (low |
    # high nibble); the lane wants bytes k0 | k4, k1 | k5, k2 | k6, k3 | k7: shifts and masks on whole words. This is
    # the reference; the prepack pass runs the native copy of it (``kernels.pack_int4_lanes``).
    padded = torch.nn.functional.pad(qdata, (0, 0, 0, -n % INT4_LANE_ROWS))
    w = padded.view(torch.int32)  # [N, K / 8]
    lanes = (
        (w & 0xF)  # k0 <- b0 low
        | ((w >> 12) & 0xF0)  # k4 <- b2 low
        | ((w << 4) & 0xF00)  # k1 <- b0 high
        | ((w >> 8) & 0xF000)  # k5 <- b2 high
        | ((w << 8) & 0xF0000)  # k2 <- b1 low
        | ((w >> 4) & 0xF00000)  # k6 <- b3 low
        | ((w << 12) & 0xF000000)  # k3 <- b1 high
        | (w & -0x10000000)  # k7 <- b3 high (0xF0000000 as an int32)
    )
    blocks = lanes.view(-1, INT4_LANE_ROWS, half_k // 4)
    return blocks.permute(0, 2, 1).contiguous().view(torch.uint8).reshape(-1)


def unpack_int4_lanes(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_int4_lanes``: the uint8 ``[N, K / 2]`` nibbles."""
    b = packed.view(-1, k // 8, INT4_LANE_ROWS, 4).permute(0, 2, 1, 3)  # [N / 16, 16, K / 8, 4]
    q = torch.stack([b & 0xF, b >> 4], dim=3).reshape(-1, k)[:n]
    return pack_int4(q)


def pack_group_lanes(t: torch.Tensor) -> torch.Tensor:
    """Per-group ``[N, G]`` scales or zero points -> flat ``[N / 16][G][16]`` (rows zero-padded to 16)."""
    n, g = t.shape
    padded = torch.nn.functional.pad(t, (0, 0, 0, -n % INT4_LANE_ROWS))
    return padded.view(-1, INT4_LANE_ROWS, g).transpose(1, 2).contiguous().reshape(-1)


def unpack_group_lanes(t: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Inverse of ``pack_group_lanes``: the ``[N, G]`` tensor."""
    return t.view(-1, groups, INT4_LANE_ROWS).transpose(1, 2).reshape(-1, groups)[:n].contiguous()


# aten's CPU int4 layout (``aten._convert_weight_to_int4pack_for_cpu``, torch 2.15; probed): N in blocks of 64 rows,
# each block k-major. In a full block byte ``k * 32 + j`` holds row j (low nibble) and row 32 + j (high nibble); in
# the last, narrower block of width bw (16, 32 or 48) byte ``k * bw / 2 + j`` holds rows 2j and 2j + 1. Values are
# q in [0, 15] and aten dequantizes them as ``(q - 8) * scale + zero`` with scale / zero from ``[K / g, N, 2]``.
ATEN_INT4_BLOCK_N = 64
ATEN_INT4_N_MULTIPLE = 16


def unpack_aten_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """aten's CPU int4 layout (uint8 ``[N, K / 2]``) -> uint8 ``[N, K]`` values in [0, 15]."""
    flat = packed.reshape(-1)
    lo, hi = flat & 0xF, flat >> 4
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    offset = 0
    for n0 in range(0, n, ATEN_INT4_BLOCK_N):
        width = min(ATEN_INT4_BLOCK_N, n - n0)
        size = width * k // 2
        block_lo = lo[offset : offset + size].reshape(k, width // 2).t()
        block_hi = hi[offset : offset + size].reshape(k, width // 2).t()
        if width == ATEN_INT4_BLOCK_N:
            out[n0 : n0 + 32], out[n0 + 32 : n0 + 64] = block_lo, block_hi
        else:
            out[n0 : n0 + width : 2], out[n0 + 1 : n0 + width : 2] = block_lo, block_hi
        offset += size
    return out


# --- ternary (1.58-bit) weights and int8 activations: BitLinear's numerics -----------------------------------------

TERNARY_WEIGHT_GRANULARITIES = ("per_tensor", "per_channel")
ACTIVATION_GRANULARITIES = ("per_tensor", "per_token")
ACT_QMAX = 127  # int8 activations use the symmetric range [-127, 127]

# Packed ternary layout: a weight q in {-1, 0, +1} is stored as the 2-bit code q + 1 in {0, 1, 2}, four codes per
# byte. Each row is cut into blocks of TERNARY_K_BLOCK values held in 64 bytes; byte i of a block holds the values
# at k = i, 64 + i, 128 + i, 192 + i in bits 0-1, 2-3, 4-5, 6-7. So shifting a block right by 2p and masking each
# byte to 2 bits gives the 64 codes of k in [64p, 64p + 64), in order: one vector of bytes per shift, no shuffles.
# K is padded with code 1 (the value 0) to a whole block.
TERNARY_VALUES_PER_BYTE = 4  # ternary values take 2 bits
TERNARY_K_BLOCK = 256  # values per 64-byte block of a row
TERNARY_BLOCK_BYTES = TERNARY_K_BLOCK // TERNARY_VALUES_PER_BYTE


def ternary_packed_k(k: int) -> int:
    """Bytes per row of a packed ternary weight with ``k`` input features (K padded to a whole block)."""
    return -(-k // TERNARY_K_BLOCK) * TERNARY_BLOCK_BYTES


def quantize_ternary(
    weight: torch.Tensor, granularity: str = "per_tensor", eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a ``[N, K]`` float weight (BitNet b1.58).

    ``scale = mean(|w|)`` over the whole tensor (``per_tensor``, shape ``[1]``) or over each output row
    (``per_channel``, shape ``[N]``), at least ``eps``; ``q = clamp(round(w / scale), -1, 1)`` as int8.
    ``weight ≈ q * scale``. Differentiable code should call ``fake_quantize_ternary``.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"expected a 2-D floating point weight, got shape {tuple(weight.shape)} of {weight.dtype}"
        )
    w = weight.detach().float()
    scale = _ternary_scale(w, granularity, eps)
    q = torch.round(w / scale[:, None]).clamp_(-1, 1).to(torch.int8)
    return q, scale if granularity == "per_channel" else scale[:1].clone()


def _ternary_scale(w: torch.Tensor, granularity: str, eps: float) -> torch.Tensor:
    """The absmean scale broadcast to ``[N]`` (one value repeated for ``per_tensor``)."""
    if granularity == "per_tensor":
        return w.abs().mean().clamp_min(eps).expand(w.shape[0])
    if granularity == "per_channel":
        return w.abs().mean(dim=1).clamp_min(eps)
    raise ValueError(f"weight granularity must be one of {TERNARY_WEIGHT_GRANULARITIES}, got {granularity!r}")


def fake_quantize_ternary(weight: torch.Tensor, granularity: str = "per_tensor", eps: float = 1e-5):
    """``q * scale`` in ``weight``'s dtype with a straight-through gradient: the forward sees the ternary weight,
    the backward passes the gradient to ``weight`` unchanged."""
    w = weight.float()
    scale = _ternary_scale(w.detach(), granularity, eps)[:, None]
    quantized = (w / scale).round().clamp(-1, 1) * scale
    return (w + (quantized - w).detach()).to(weight.dtype)


def quantize_activation_int8(
    x: torch.Tensor, granularity: str = "per_token", eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 quantization of ``[M, K]`` activations: ``scale = max(|x|) / 127`` per row (``per_token``) or
    over the whole tensor (``per_tensor``), at least ``eps / 127``; ``q = round(x / scale)``.

    Returns ``q`` (int8 ``[M, K]``) and ``scale`` (fp32 ``[M]``, one value repeated for ``per_tensor``), so
    ``x ≈ q * scale[:, None]``. Plain torch ops: under ``torch.compile`` Inductor fuses them into one kernel.
    """
    xf = x.float()
    scale = _activation_scale(xf, granularity, eps).expand(xf.shape[0], 1)
    q = torch.round(xf / scale).clamp(-ACT_QMAX, ACT_QMAX).to(torch.int8)
    return q, scale.squeeze(-1)


def _activation_scale(xf: torch.Tensor, granularity: str, eps: float) -> torch.Tensor:
    """``max(|x|) / 127`` over the last dim (``per_token``, keepdim) or over everything (``per_tensor``, 0-d)."""
    if granularity == "per_token":
        absmax = xf.abs().amax(dim=-1, keepdim=True)
    elif granularity == "per_tensor":
        absmax = xf.abs().amax()
    else:
        raise ValueError(
            f"activation granularity must be one of {ACTIVATION_GRANULARITIES}, got {granularity!r}"
        )
    return absmax.clamp_min(eps) / ACT_QMAX


def fake_quantize_activation_int8(x: torch.Tensor, granularity: str = "per_token", eps: float = 1e-5):
    """``quantize_activation_int8`` followed by dequantization, in ``x``'s dtype, with a straight-through gradient."""
    xf = x.float()
    scale = _activation_scale(xf.detach(), granularity, eps)
    quantized = (xf / scale).round().clamp(-ACT_QMAX, ACT_QMAX) * scale
    return (xf + (quantized - xf).detach()).to(x.dtype)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` int8 in {-1, 0, 1} -> ``[N, ternary_packed_k(K)]`` uint8 in the layout described above."""
    n, k = q.shape
    codes = (q.to(torch.int16) + 1).to(torch.uint8)
    k_pad = -k % TERNARY_K_BLOCK
    if k_pad:
        codes = torch.nn.functional.pad(codes, (0, k_pad), value=1)
    planes = codes.reshape(
        n, -1, TERNARY_VALUES_PER_BYTE, TERNARY_BLOCK_BYTES
    )  # [N, blocks, plane p, byte i]
    packed = planes[:, :, 0] | planes[:, :, 1] << 2 | planes[:, :, 2] << 4 | planes[:, :, 3] << 6
    return packed.reshape(n, -1).contiguous()


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``pack_ternary``: the ``[N, K]`` int8 weight in {-1, 0, 1}."""
    n = packed.shape[0]
    blocks = packed.reshape(n, -1, 1, TERNARY_BLOCK_BYTES)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device).view(1, 1, -1, 1)
    codes = (blocks >> shifts) & 3  # [N, blocks, plane p, byte i]
    return (codes.reshape(n, -1)[:, :k].to(torch.int8) - 1).contiguous()


def ternary_linear_reference(
    x: torch.Tensor,
    q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation_granularity: str = "per_token",
) -> torch.Tensor:
    """The eager ternary reference: int8 activations (absmax) times ternary weights, summed exactly in int32, then
    ``* x_scale * weight_scale (+ bias)`` in fp32; the result in ``x``'s dtype."""
    xq, x_scale = quantize_activation_int8(x, activation_granularity)
    acc = (xq.to(torch.int32) @ q.to(torch.int32).t()).float()
    out = acc * x_scale[:, None] * weight_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


# --- quantized_matmul weights: int8, or int4 values in an int8 container, per channel or in blocks along K -------
# Range of each weight width: the full signed range, so an asymmetric (zero-point) grid uses every code.
QMM_RANGES = {8: (-128, 127), 4: (-8, 7)}


def qmm_groups(k: int, block_size: int) -> int:
    """Scale groups per output channel: 1 for per-channel (``block_size == -1``), else ``K / block_size``."""
    if block_size == -1:
        return 1
    if not isinstance(block_size, int) or block_size <= 0 or k % block_size:
        raise ValueError(
            f"block_size must be -1 (per-channel) or a positive divisor of K={k}, got {block_size!r}"
        )
    return k // block_size


def quantize_weight(
    weight: torch.Tensor, bits: int = 8, block_size: int = -1, zero_point: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a float ``[N, K]`` weight for ``quantized_matmul``: per output channel (``block_size=-1``) or per
    block of ``block_size`` values along K, to ``bits`` = 8 or 4 (int4 values kept in an int8 container).

    Symmetric (default): ``scale = max|w| / qmax`` (qmax 127 or 7), ``q = round(w / scale)`` in ``[-qmax, qmax]``.
    With ``zero_point``: the range ``[min(w, 0), max(w, 0)]`` is mapped onto every code (``[-128, 127]`` or
    ``[-8, 7]``), ``zero_point`` is the integer code of 0.0, ``w ≈ (q - zero_point) * scale``.

    Returns ``q`` (int8 ``[N, K]``), ``scale`` (fp32 ``[N]`` per channel, ``[N, K / block_size]`` blockwise) and
    ``zero_point`` (fp32, the shape of ``scale``, integral values) or ``None``.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"expected a 2-D floating point weight, got shape {tuple(weight.shape)} of {weight.dtype}"
        )
    if bits not in QMM_RANGES:
        raise ValueError(f"bits must be one of {tuple(QMM_RANGES)}, got {bits!r}")
    n, k = weight.shape
    groups = qmm_groups(k, block_size)
    w = weight.detach().float().reshape(n, groups, k // groups)
    qmin, qmax = QMM_RANGES[bits]
    if zero_point:
        lo = w.amin(dim=-1).clamp_max(0)
        hi = w.amax(dim=-1).clamp_min(0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(SCALE_EPS)
        zp = (qmin - torch.round(lo / scale)).clamp_(qmin, qmax)
        q = (torch.round(w / scale[..., None]) + zp[..., None]).clamp_(qmin, qmax)
    else:
        scale = (w.abs().amax(dim=-1) / qmax).clamp_min(SCALE_EPS)
        zp = None
        q = torch.round(w / scale[..., None]).clamp_(-qmax, qmax)
    squeeze = (lambda t: t[:, 0]) if block_size == -1 else (lambda t: t)
    return q.reshape(n, k).to(torch.int8), squeeze(scale), squeeze(zp) if zp is not None else None


def dequantize_weight(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
) -> torch.Tensor:
    """fp32 ``[N, K]`` weight ``(q - zero_point) * scale``; ``scale`` is ``[N]`` or ``[N, G]`` (blocks of K / G)."""
    n, k = q.shape
    s = scale.float().reshape(n, -1, 1)
    w = q.float().reshape(n, s.shape[1], -1)
    if zero_point is not None:
        w = w - zero_point.float().reshape(n, -1, 1)
    return (w * s).reshape(n, k)


def quantized_matmul_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    quantize_activation: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 reference of ``quantized_matmul``: the dequantized weight, ``x`` (or, with ``quantize_activation``, its
    per-token absmax int8 rounding ``q * x_scale``), one fp32 matmul, the bias, one cast to ``x.dtype``."""
    xf = x.reshape(-1, x.shape[-1]).float()
    if quantize_activation:
        xq, x_scale = quantize_activation_int8(xf)
        xf = xq.float() * x_scale[:, None]
    out = xf @ dequantize_weight(w, scale, zero_point).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])
