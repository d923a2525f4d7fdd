"""The built-in model of the demo and the benchmarks: a small decoder-only transformer made of linear layers.

Pre-norm blocks of causal self-attention (q, k, v, o projections) and a SwiGLU MLP (gate, up, down), as in
Llama-style models; weights are random (seeded), which is all a speed and numerics check needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelSize:
    dim: int
    hidden: int
    layers: int
    heads: int


SIZES = {
    "tiny": ModelSize(dim=256, hidden=768, layers=2, heads=4),
    "small": ModelSize(dim=1024, hidden=2816, layers=4, heads=8),
    "base": ModelSize(dim=2048, hidden=5632, layers=8, heads=16),
    "7b-layer": ModelSize(dim=4096, hidden=11008, layers=2, heads=32),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        ) * self.weight


class Block(nn.Module):
    def __init__(self, size: ModelSize):
        super().__init__()
        d, h = size.dim, size.hidden
        self.heads = size.heads
        self.attn_norm = RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.mlp_norm = RMSNorm(d)
        self.gate, self.up = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        y = self.attn_norm(x)
        q, k, v = (
            proj(y).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + self.o(attn.transpose(1, 2).reshape(b, t, d))
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class TinyDecoder(nn.Module):
    """``forward(x: [batch, tokens, dim]) -> [batch, tokens, dim]``; embeddings and the LM head are left out."""

    def __init__(self, size: ModelSize):
        super().__init__()
        self.blocks = nn.ModuleList(Block(size) for _ in range(size.layers))
        self.norm = RMSNorm(size.dim)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def build(size: str = "small", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> TinyDecoder:
    if size not in SIZES:
        raise ValueError(f"model size must be one of {sorted(SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    model = TinyDecoder(SIZES[size])
    for name, p in model.named_parameters():
        if p.dim() == 2:  # scaled so activations stay O(1) through the residual stream
            nn.init.normal_(
                p, std=p.shape[1] ** -0.5 / (2 if name.endswith(("o.weight", "down.weight")) else 1)
            )
    return model.to(dtype).eval()
