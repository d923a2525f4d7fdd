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
