"""The interface every 2D base tokenizer implements.

KARL never looks inside a base tokenizer: it reads ``encode(images).features`` (a grid of
``latent_dim`` channels, ``image_size / downsample`` on a side), predicts one vector of
``head_dim`` per grid cell, and turns that prediction back into pixels with
``decode_head``. Stage 1 compares the prediction with ``encode(images).target`` through
``token_loss``.

Two kinds:
- ``discrete`` (VQGAN): ``target`` holds codebook indices ``[B, g, g]`` (long);
  ``head_dim`` = codebook size (logits); ``decode_head`` decodes the soft code
  ``softmax(logits) @ codebook``.
- ``continuous`` (KL-VAE, our conv AE): ``target`` equals ``features`` (the scaled latent);
  ``head_dim`` = ``latent_dim``; ``decode_head`` decodes the predicted latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class BaseGrid:
    features: Tensor  # [B, latent_dim, g, g] what KARL reads
    target: Tensor    # discrete: [B, g, g] long indices; continuous: [B, latent_dim, g, g]


class BaseTokenizer(nn.Module):
    """Abstract base. Images are ``[B, 3, H, W]`` floats in ``[0, 1]`` in and out."""

    kind: str = "continuous"   # or "discrete"
    # Trained from scratch in stage 0 (karl-train stage=0); the others come pretrained.
    trained_in_stage0: bool = False
    latent_dim: int
    downsample: int
    head_dim: int

    def encode(self, images: Tensor) -> BaseGrid:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, features: Tensor) -> Tensor:  # pragma: no cover - interface
        """Decode a ``features`` grid (as returned by ``encode``) to images in [0, 1]."""
        raise NotImplementedError

    def decode_head(self, out: Tensor) -> Tensor:
        """Decode KARL's per-cell prediction ``[B, head_dim, g, g]`` to images in [0, 1]."""
        if self.kind == "discrete":
            return self.decode_code(self.soft_code(out))
        return self.decode(out)

    # discrete tokenizers override these two
    def soft_code(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_code(self, code: Tensor) -> Tensor:
        raise NotImplementedError

    def token_loss(self, out: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Stage-1 loss between KARL's prediction and the base tokenizer's target.

        VQGAN: cross-entropy on codebook indices + 1.0 x MSE(soft code, true code);
        continuous: MSE on latents (the release's stage-1 losses).
        """
        if self.kind == "discrete":
            ce = F.cross_entropy(out.float(), target)
            true_code = self.code_of(target)
            mse = F.mse_loss(self.soft_code(out.float()), true_code)
            return ce + mse, {"token_ce": ce.item(), "token_mse": mse.item()}
        mse = F.mse_loss(out.float(), target.float())
        return mse, {"token_mse": mse.item()}

    def code_of(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images).features)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv (``upsample.conv`` in both paper tokenizers)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
