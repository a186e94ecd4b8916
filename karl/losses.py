"""Reconstruction losses for the three training stages; each returns ``(loss, parts, images)``.

- Stage 0 (our base autoencoder) and stage 2: pixel L1 + LPIPS, plus (stage 2) a hinge
  PatchGAN term weighted VQGAN-style by the ratio of gradient norms at the decoder's last
  layer (as in VQGAN / TiTok).
- Stage 1: token-level loss against the frozen base tokenizer's grid.

EIC and LTC take their reconstruction term as a :class:`ReconLoss` (:class:`TokenReconLoss`
in stage 1, :class:`PixelReconLoss` in stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from karl.base_tokenizers import BaseTokenizer
from karl.config import TrainConfig


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix NLayerDiscriminator): conv 4x4 stride 2, BatchNorm, LeakyReLU 0.2."""

    def __init__(self, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images * 2 - 1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def gan_weight(cfg: TrainConfig, step: int) -> float:
    """The release's schedule (0 / 0.2 / 0.8 at epochs 0 / 20 / 100), in steps."""
    if step < cfg.gan_mid_step:
        return cfg.gan_weight_early
    if step < cfg.gan_late_step:
        return cfg.gan_weight_mid
    return cfg.gan_weight_late


def last_layer_weight(base: BaseTokenizer) -> Tensor:
    """The weight of the image decoder's final conv, where the adaptive GAN weight is measured."""
    convs = [m for m in base.decoder.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].weight


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class PixelLoss:
    """L1 + lpips_weight x LPIPS (+ GAN when a discriminator and a positive weight are given)."""

    def __init__(self, lpips_module: nn.Module | None, lpips_weight: float):
        self.lpips = lpips_module
        self.lpips_weight = lpips_weight

    def nll(self, recon: Tensor, images: Tensor) -> tuple[Tensor, dict[str, float]]:
        l1 = (recon - images).abs().mean()
        parts = {"l1": l1.item()}
        loss = l1
        if self.lpips is not None and self.lpips_weight > 0:
            lp = self.lpips(recon.float() * 2 - 1, images.float() * 2 - 1).mean()
            loss = loss + self.lpips_weight * lp
            parts["lpips"] = lp.item()
        return loss, parts

    def __call__(self, recon: Tensor, images: Tensor, disc: nn.Module | None = None,
                 weight: float = 0.0, last_layer: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        loss, parts = self.nll(recon, images)
        if disc is not None and weight > 0:
            g_loss = -disc(recon).mean()
            d_weight = adaptive_weight(loss, g_loss, last_layer) if last_layer is not None else 1.0
            loss = loss + weight * d_weight * g_loss
            parts.update(g_loss=g_loss.item(), d_weight=float(d_weight))
        return loss, parts


# ----------------------------------------------------------------------------- EIC / LTC reconstruction

ReconOutput = tuple[Tensor, "dict[str, float]", "Tensor | None"]  # (loss, parts, pixel images or None)


@dataclass(frozen=True, eq=False)
class ReconLoss:
    """The reconstruction term of EIC and LTC for one batch: ``recon(head) -> (loss, parts, images)``.

    ``head [b, head_dim, g, g]`` is the decoder's prediction of the base grid; ``images`` are
    the pixel reconstructions when the loss decoded them (stage 2), else None. The base
    grid's ``target`` is only known once ``karl_iteration`` has run the base tokenizer, which
    binds it with :meth:`with_target`.
    """

    def with_target(self, target: Tensor) -> "ReconLoss":
        return self  # the pixel loss compares with the images, not the base grid

    def __call__(self, head: Tensor) -> ReconOutput:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class TokenReconLoss(ReconLoss):
    """Stage 1: the prediction against the frozen base grid's ``target`` (``base.token_loss``)."""

    base: BaseTokenizer
    target: Tensor | None = None   # discrete: [b, g, g] code indices; continuous: [b, c, g, g]

    def with_target(self, target: Tensor) -> "TokenReconLoss":
        return replace(self, target=target)

    def __call__(self, head: Tensor) -> ReconOutput:
        if self.target is None:
            raise ValueError("TokenReconLoss has no base-grid target: bind it with with_target(grid.target)")
        loss, parts = self.base.token_loss(head, self.target)
        return loss, parts, None


@dataclass(frozen=True, eq=False)
class PixelReconLoss(ReconLoss):
    """Stage 2: decode the prediction to pixels and apply L1 + LPIPS (+ GAN) against ``images``."""

    base: BaseTokenizer
    images: Tensor                      # [b, 3, H, W] in [0, 1]
    pixel_loss: PixelLoss
    disc: nn.Module | None = None
    gan_weight: float = 0.0
    last_layer: Tensor | None = None    # where the adaptive GAN weight is measured

    def __call__(self, head: Tensor) -> ReconOutput:
        recon = self.base.decode_head(head)
        loss, parts = self.pixel_loss(recon, self.images, self.disc, self.gan_weight, self.last_layer)
        return loss, parts, recon
