"""Factorised latent quantiser (TiTok style): l2-normalised codebook lookup."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class FactorizedQuantizer(nn.Module):
    """Nearest code by cosine similarity; straight-through gradient; commitment loss.

    ``embedding.weight`` [codebook_size, e] matches the release's ``quantize.embedding.weight``.
    """

    def __init__(self, codebook_size: int, dim: int, commitment: float = 0.25):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1 / codebook_size, 1 / codebook_size)
        self.commitment = commitment

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [b, k, e] -> (quantised [b, k, e], ids [b, k], loss [])."""
        z = F.normalize(z.float(), dim=-1)
        codebook = F.normalize(self.embedding.weight.float(), dim=-1)
        flat = rearrange(z, "b k e -> (b k) e")
        ids = (flat @ codebook.t()).argmax(-1)
        q = rearrange(codebook[ids], "(b k) e -> b k e", b=z.shape[0])
        loss = self.commitment * F.mse_loss(z, q.detach()) + F.mse_loss(q, z.detach())
        q = z + (q - z).detach()
        return q, rearrange(ids, "(b k) -> b k", b=z.shape[0]), loss

    def lookup(self, ids: Tensor) -> Tensor:
        return F.normalize(self.embedding.weight[ids].float(), dim=-1)
