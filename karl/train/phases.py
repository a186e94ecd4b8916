"""The two phases that run in every training iteration (paper Sec. 3, Fig. 3/4).

EIC ("estimate image complexity"): encode with a sampled budget T at a near-lossless
target, decode all T tokens (no halting), learn to reconstruct and to keep every token;
measure each image's pixel error e_T.

LTC ("learn to tokenize at complexity"): encode with the full budget, conditioned on e_T
rounded up to the next loss bin; decode with the model's own halting mask. Halting labels:

- ``paper``: the last Delta = max(0, max_tokens - T) tokens are "halt", the rest "keep".
  When an image's error has saturated (the same bin for many T), the same (image, bin)
  pair gets a different label for every sampled T, and the BCE optimum of token j is
  P(T < j), which stays below the 0.75 threshold: such images never halt (measured in
  docs/HALTING_LABELS.md).
- ``minimal``: the tokens after the shortest prefix of *this* LTC encoding whose decoded L1
  meets the condition bin are "halt" (a few batched prefix decodes without gradient). For
  the achieved bin the prefix is capped at T, the paper's label; a share of the batch is
  conditioned on a bin drawn from all bins, and when no prefix meets it every token is
  "keep" (unreachable targets keep the full budget). EIC's all-"keep" halting term is
  dropped in this mode: it contradicts these labels at the EIC bins.

Because e_T is what T tokens achieved for *this* image, a complex image never receives a
(low error, few tokens) pair: the self-curriculum of the paper, kept by both label rules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from karl.config import TrainConfig
from karl.losses import ReconLoss
from karl.metrics import l1 as per_image_l1
from karl.model import KARL, epsilon_to_bin, halting_decision
from karl.precision import autocast as precision_autocast
from karl.precision import cpu_has_fast_bf16

@dataclass(frozen=True)
class PhaseOutput:
    loss: Tensor
    parts: dict[str, float]
    images: Tensor | None       # pixel reconstructions when the recon loss produced them


def budget_choices(cfg: TrainConfig) -> list[int]:
    if cfg.budget_choices:
        return sorted(set(cfg.budget_choices))
    return list(range(cfg.budget_step, cfg.budget_max + 1, cfg.budget_step))


def prefix_grid(cfg: TrainConfig, max_tokens: int) -> list[int]:
    """Prefix lengths tried for ``minimal`` labels: 1, 2, 3, 4, 6, 8, 12, 16, ... and max_tokens."""
    if cfg.label_prefix_grid:
        grid = {k for k in cfg.label_prefix_grid if k <= max_tokens}
    else:
        grid, k = {1, 2, 3}, 4
        while k < max_tokens:
            grid.update({k, k + k // 2})
            k *= 2
    return sorted({k for k in grid if k < max_tokens} | {max_tokens})


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


@torch.no_grad()
def minimal_program_lengths(model: KARL, latents: Tensor, images: Tensor, cond: Tensor,
                            grid: list[int]) -> Tensor:
    """[b] long: per image, the shortest k in ``grid`` whose k-token prefix decodes within bin ``cond``.

    A binary search over ``grid`` (ceil(log2 len(grid)) + 1 batched decodes, no gradient):
    the returned prefix meets the bin and the grid point before it does not, which is the
    shortest one whenever the error falls with the prefix length, as it does for prefixes
    of one encoding. Images whose full encoding misses the bin get ``max_tokens`` (keep
    every token). The labels are what the current model can do, so training turns this
    search into the single-pass halting decision.
    """
    b, k_max = latents.shape[:2]
    lengths = torch.tensor(grid, device=latents.device)
    positions = torch.arange(k_max, device=latents.device)[None]

    def meets(idx: Tensor) -> Tensor:
        with _label_autocast(latents.device):
            head = model.forward_decoder(latents, positions < lengths[idx][:, None])
            recon = model.base.decode_head(head).float().clamp(0, 1)
        err = per_image_l1(recon, images.float())
        return epsilon_to_bin(err, model.loss_bins).to(cond.device) <= cond

    lo = torch.zeros(b, dtype=torch.long, device=latents.device)
    hi = torch.full_like(lo, len(grid) - 1)
    reachable = meets(hi)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        ok = meets(mid)
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid + 1)
    return torch.where(reachable, lengths[hi], torch.full_like(hi, k_max))


def _label_autocast(device: torch.device):
    """bf16 for the label search where the CPU computes it natively (~2x faster here, no
    gradient involved; karl.precision also turns oneDNN on, without which bf16 convolutions
    are far slower); on CUDA the training step's own autocast applies."""
    if device.type == "cpu" and cpu_has_fast_bf16():
        return precision_autocast(device, "bf16")
    return contextlib.nullcontext()


def minimal_halting_labels(lengths: Tensor, max_tokens: int) -> Tensor:
    """[b, max_tokens] float: 0 ("keep") for the first lengths[i] tokens, 1 ("halt") after."""
    idx = torch.arange(max_tokens, device=lengths.device)[None]
    return (idx >= lengths[:, None]).float()


def ltc_conditions(model: KARL, e_t: Tensor, cfg: TrainConfig,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Bin per image (e_T rounded up, or a uniformly drawn bin) and a [b] bool "free" flag."""
    b = e_t.shape[0]
    cond = epsilon_to_bin(e_t, model.loss_bins).to(model.device)        # rounded UP to the next bin
    if cfg.ltc_free_condition_fraction <= 0:
        return cond, torch.zeros_like(cond, dtype=torch.bool)
    free = (torch.rand(b, generator=generator) < cfg.ltc_free_condition_fraction).to(model.device)
    drawn = torch.randint(len(model.loss_bins), (b,), generator=generator).to(model.device)
    return torch.where(free, drawn, cond), free


def phase_loss(cfg: TrainConfig, rec: Tensor, q_loss: Tensor, halt: Tensor, halt_weight: float) -> Tensor:
    """One phase's loss: reconstruction + quantiser + halting BCE.

    ``token_loss_weight`` weights the reconstruction term of either stage: the token loss in
    stage 1, the pixel loss (L1 + LPIPS + GAN) in stage 2.
    """
    return cfg.token_loss_weight * rec + cfg.quant_loss_weight * q_loss + halt_weight * halt


def _phase_parts(phase: str, rec_parts: dict[str, float], halt: Tensor, q_loss: Tensor) -> dict[str, float]:
    """Logged parts under ``phase/``: the reconstruction's own, then the halting BCE and quantiser loss."""
    parts = {f"{phase}/{k}": v for k, v in rec_parts.items()}
    parts.update({f"{phase}/halt_bce": halt.item(), f"{phase}/quant": float(q_loss.detach())})
    return parts


def eic_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, recon: ReconLoss,
              cfg: TrainConfig, generator: torch.Generator, grid: Tensor | None = None) -> tuple[PhaseOutput, Tensor]:
    """Returns the EIC loss and e_T [b], each image's pixel L1 with T tokens (no grad)."""
    b = images.shape[0]
    z, halt_logits = model.forward_encoder(tokens2d, eic_bins(model, cfg, b, generator), budget, grid)
    latents, _, q_loss = model.quantize_latents(z)
    head = model.forward_decoder(latents, torch.ones_like(halt_logits, dtype=torch.bool))
    rec, rec_parts, recon_images = recon(head)
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), torch.zeros_like(halt_logits, dtype=torch.float))
    halt_weight = cfg.halt_loss_weight if cfg.halting_labels == "paper" else 0.0
    loss = phase_loss(cfg, rec, q_loss, halt, halt_weight)
    with torch.no_grad():
        if recon_images is None:
            recon_images = model.base.decode_head(head.detach().float())
        e_t = per_image_l1(recon_images.detach().float().clamp(0, 1), images.float())
    parts = _phase_parts("eic", rec_parts, halt, q_loss)
    parts["eic/l1"] = e_t.mean().item()
    return PhaseOutput(loss, parts, recon_images), e_t


def ltc_labels(model: KARL, images: Tensor, latents: Tensor, cond: Tensor, free: Tensor, budget: int,
               cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
    """LTC's halting labels [b, max_tokens] (see the module docstring) and what to log of them."""
    k = model.max_tokens
    if cfg.halting_labels != "minimal":
        return halting_labels(images.shape[0], k, budget, images.device), {}
    lengths = minimal_program_lengths(model, latents, images, cond, prefix_grid(cfg, k))
    # The achieved bin was met by T tokens in EIC: never label a longer program than T.
    lengths = torch.where(free, lengths, lengths.clamp(max=min(budget, k)))
    return minimal_halting_labels(lengths, k), {"ltc/label_len": lengths.float().mean().item()}


def ltc_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, e_t: Tensor,
              recon: ReconLoss, cfg: TrainConfig, generator: torch.Generator | None = None,
              grid: Tensor | None = None) -> PhaseOutput:
    k = model.max_tokens
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    cond, free = ltc_conditions(model, e_t, cfg, generator)
    z, halt_logits = model.forward_encoder(tokens2d, cond, k, grid)
    latents, _, q_loss = model.quantize_latents(z)
    _, keep = halting_decision(halt_logits.detach(), model.config.halt_threshold)  # inference's rule
    head = model.forward_decoder(latents, keep)
    rec, rec_parts, recon_images = recon(head)
    labels, label_parts = ltc_labels(model, images, latents, cond, free, budget, cfg)
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), labels)
    loss = phase_loss(cfg, rec, q_loss, halt, cfg.halt_loss_weight)
    parts = _phase_parts("ltc", rec_parts, halt, q_loss)
    parts.update({"ltc/kept": keep.float().sum(-1).mean().item(),
                  "ltc/delta": float(max(0, k - budget)), **label_parts})
    return PhaseOutput(loss, parts, recon_images)


def karl_iteration(model: KARL, images: Tensor, recon: ReconLoss, cfg: TrainConfig,
                   generator: torch.Generator, budget: int | None = None,
                   base_trainable: bool = False) -> tuple[Tensor, dict[str, float], dict[str, Tensor | None]]:
    """EIC then LTC on one batch. Returns (total loss, logged parts, reconstructions).

    ``recon`` is the batch's reconstruction loss (``karl.losses.TokenReconLoss`` in stage 1,
    ``PixelReconLoss`` in stage 2); the base grid's target is bound to it here.
    """
    if budget is None:
        budget = sample_budget(cfg, generator)
    if base_trainable:
        grid = model.base_encode(images)
    else:
        with torch.no_grad():
            grid = model.base_encode(images)
    tokens2d = model.embed_grid(images, grid.features)
    recon = recon.with_target(grid.target)
    eic, e_t = eic_phase(model, images, tokens2d, budget, recon, cfg, generator, grid.features)
    ltc = ltc_phase(model, images, tokens2d, budget, e_t, recon, cfg, generator, grid.features)
    parts = {"loss": (eic.loss + ltc.loss).item(), "budget": float(budget), **eic.parts, **ltc.parts}
    return eic.loss + ltc.loss, parts, {"eic": eic.images, "ltc": ltc.images}
