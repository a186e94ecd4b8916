"""The two phases that run in every training iteration (KARL_FACTS section 2).

EIC ("estimate image complexity"): encode with a sampled budget T at a near-lossless
target, decode all T tokens (no halting), learn to reconstruct and to keep every token;
measure each image's pixel error e_T.

LTC ("learn to tokenize at complexity"): encode with the full budget, conditioned on e_T
rounded up to the next loss bin; the last Delta = max(0, max_tokens - T) tokens are
labelled "halt", the rest "keep"; decode with the model's own halting mask.

Because e_T is what T tokens achieved for *this* image, a complex image never receives a
(low error, few tokens) pair: the self-curriculum of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from karl.config import TrainConfig
from karl.metrics import l1 as per_image_l1
from karl.model import KARL, epsilon_to_bin

# recon_fn(head [b, c, g, g], phase) -> (loss, parts, reconstructed images or None); the
# losses in karl/losses.py take the base grid's target as a third argument, bound by
# karl_iteration (``_bind_target``) so the phases never see it.
ReconFn = Callable[[Tensor, str], "tuple[Tensor, dict[str, float], Tensor | None]"]


@dataclass
class PhaseOutput:
    loss: Tensor
    parts: dict[str, float]
    images: Tensor | None       # pixel reconstructions when the recon loss produced them


def budget_choices(cfg: TrainConfig) -> list[int]:
    return list(range(cfg.budget_step, cfg.budget_max + 1, cfg.budget_step))


def sample_budget(cfg: TrainConfig, generator: torch.Generator) -> int:
    """One budget T per batch from {step, 2 step, ..., budget_max} (release: 16..368)."""
    choices = budget_choices(cfg)
    return choices[int(torch.randint(len(choices), (1,), generator=generator))]


def eic_bins(model: KARL, cfg: TrainConfig, batch: int, generator: torch.Generator) -> Tensor:
    """Near-lossless EIC targets: a bin <= eic_max_epsilon per image."""
    allowed = int((model.loss_bins <= cfg.eic_max_epsilon + 1e-9).sum())
    return torch.randint(allowed, (batch,), generator=generator).to(model.device)


def halting_labels(batch: int, max_tokens: int, budget: int, device: torch.device) -> Tensor:
    """[b, max_tokens] float: 0 for the first max_tokens - Delta tokens, 1 for the last Delta."""
    delta = max(0, max_tokens - budget)
    labels = torch.zeros(batch, max_tokens, device=device)
    if delta:
        labels[:, max_tokens - delta:] = 1.0
    return labels


def eic_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, recon_fn: ReconFn,
              cfg: TrainConfig, generator: torch.Generator) -> tuple[PhaseOutput, Tensor]:
    """Returns the EIC loss and e_T [b], each image's pixel L1 with T tokens (no grad)."""
    b = images.shape[0]
    z, halt_logits = model.forward_encoder(tokens2d, eic_bins(model, cfg, b, generator), budget)
    latents, _, q_loss = model.quantize_latents(z)
    head = model.forward_decoder(latents, torch.ones_like(halt_logits, dtype=torch.bool))
    rec, parts, recon_images = recon_fn(head, "eic")
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), torch.zeros_like(halt_logits, dtype=torch.float))
    loss = cfg.token_loss_weight * rec + cfg.quant_loss_weight * q_loss + cfg.halt_loss_weight * halt
    with torch.no_grad():
        if recon_images is None:
            recon_images = model.base.decode_head(head.detach().float())
        e_t = per_image_l1(recon_images.detach().float().clamp(0, 1), images.float())
    parts = {f"eic/{k}": v for k, v in parts.items()}
    parts.update({"eic/halt_bce": halt.item(), "eic/quant": float(q_loss.detach()), "eic/l1": e_t.mean().item()})
    return PhaseOutput(loss, parts, recon_images), e_t


def ltc_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, e_t: Tensor,
              recon_fn: ReconFn, cfg: TrainConfig) -> PhaseOutput:
    b, k = images.shape[0], model.max_tokens
    cond = epsilon_to_bin(e_t, model.loss_bins).to(model.device)   # rounded UP to the next bin
    z, halt_logits = model.forward_encoder(tokens2d, cond, k)
    latents, _, q_loss = model.quantize_latents(z)
    keep = (halt_logits.detach().float().sigmoid() <= model.config.halt_threshold)
    head = model.forward_decoder(latents, keep)
    rec, parts, recon_images = recon_fn(head, "ltc")
    labels = halting_labels(b, k, budget, images.device)
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), labels)
    loss = cfg.token_loss_weight * rec + cfg.quant_loss_weight * q_loss + cfg.halt_loss_weight * halt
    parts = {f"ltc/{k_}": v for k_, v in parts.items()}
    parts.update({"ltc/halt_bce": halt.item(), "ltc/quant": float(q_loss.detach()),
                  "ltc/kept": keep.float().sum(-1).mean().item(),
                  "ltc/delta": float(max(0, k - budget))})
    return PhaseOutput(loss, parts, recon_images)


def karl_iteration(model: KARL, images: Tensor, recon_fn: ReconFn, cfg: TrainConfig,
                   generator: torch.Generator, budget: int | None = None,
                   base_trainable: bool = False) -> tuple[Tensor, dict[str, float], dict[str, Tensor | None]]:
    """EIC then LTC on one batch. Returns (total loss, logged parts, reconstructions)."""
    if budget is None:
        budget = sample_budget(cfg, generator)
    if base_trainable:
        grid = model.base_encode(images)
    else:
        with torch.no_grad():
            grid = model.base_encode(images)
    tokens2d = model.embed_grid(images, grid.features)
    recon_fn_bound = _bind_target(recon_fn, grid.target)
    eic, e_t = eic_phase(model, images, tokens2d, budget, recon_fn_bound, cfg, generator)
    ltc = ltc_phase(model, images, tokens2d, budget, e_t, recon_fn_bound, cfg)
    parts = {"loss": (eic.loss + ltc.loss).item(), "budget": float(budget), **eic.parts, **ltc.parts}
    return eic.loss + ltc.loss, parts, {"eic": eic.images, "ltc": ltc.images}


def _bind_target(recon_fn, target):
    def fn(head: Tensor, phase: str):
        return recon_fn(head, phase, target)
    return fn
