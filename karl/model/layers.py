"""Transformer blocks with per-sample attention masks.

Parameter names (``ln_1``, ``attn.in_proj_weight``, ``attn.out_proj``, ``ln_2``,
``mlp.c_fc``, ``mlp.c_proj``) follow the released checkpoints so conversion is a rename
of prefixes only. Attention runs through ``scaled_dot_product_attention`` with a boolean
key-padding mask broadcast as ``[B, 1, 1, L]``: one mask per image, never a head-major
repeat (the release's batch-mixing defect, docs/OFFICIAL.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, f"width {width} not divisible by heads {heads}"
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.in_proj_kernel = None      # a karl.kernels.Kernel (int8 / oneDNN inference), or None

    def in_proj(self, x: Tensor) -> Tensor:
        """The packed q, k, v projection: ``F.linear``, or the kernel karl/kernels.py installed."""
        if self.in_proj_kernel is not None:
            return self.in_proj_kernel(x, self.in_proj_weight, self.in_proj_bias)
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x: [B, L, d]; key_mask: [B, L] bool, True where a token may be attended to."""
        qkv = self.in_proj(x)
        q, k, v = rearrange(qkv, "b l (three h e) -> three b h l e", three=3, h=self.heads)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(rearrange(out, "b h l e -> b l (h e)"))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.transformer = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        for block in self.transformer:
            x = block(x, key_mask)
        return x

