"""The two phases that run in every training iteration (KARL_FACTS section 2).

EIC ("estimate image complexity"): encode with a sampled budget T at a near-lossless
target, decode all T tokens (no halting), learn to reconstruct and to keep every token;
measure each image's pixel error e_T.

LTC ("learn to tokenize at complexity"): encode with the full budget, conditioned on e_T
rounded up to the next loss bin; decode with the model's own halting mask. Halting labels:

- ``paper``: the last Delta = max(0, max_tokens - T) tokens are "halt", the rest "keep".
  When an image's error has saturated (the same bin for many T), the same (image, bin)
  pair gets a different label for every sampled T, and the BCE optimum of token j is
  P(T < j), which stays below the 0.75 threshold: such images never halt (KARL_FACTS 2).
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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from karl.config import TrainConfig
from karl.metrics import l1 as per_image_l1
from karl.model import KARL, epsilon_to_bin
from karl.precision import autocast as precision_autocast
from karl.precision import cpu_has_fast_bf16

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


def eic_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, recon_fn: ReconFn,
              cfg: TrainConfig, generator: torch.Generator) -> tuple[PhaseOutput, Tensor]:
    """Returns the EIC loss and e_T [b], each image's pixel L1 with T tokens (no grad)."""
    b = images.shape[0]
    z, halt_logits = model.forward_encoder(tokens2d, eic_bins(model, cfg, b, generator), budget)
    latents, _, q_loss = model.quantize_latents(z)
    head = model.forward_decoder(latents, torch.ones_like(halt_logits, dtype=torch.bool))
    rec, parts, recon_images = recon_fn(head, "eic")
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), torch.zeros_like(halt_logits, dtype=torch.float))
    halt_weight = cfg.halt_loss_weight if cfg.halting_labels == "paper" else 0.0
    loss = cfg.token_loss_weight * rec + cfg.quant_loss_weight * q_loss + halt_weight * halt
    with torch.no_grad():
        if recon_images is None:
            recon_images = model.base.decode_head(head.detach().float())
        e_t = per_image_l1(recon_images.detach().float().clamp(0, 1), images.float())
    parts = {f"eic/{k}": v for k, v in parts.items()}
    parts.update({"eic/halt_bce": halt.item(), "eic/quant": float(q_loss.detach()), "eic/l1": e_t.mean().item()})
    return PhaseOutput(loss, parts, recon_images), e_t


def ltc_phase(model: KARL, images: Tensor, tokens2d: Tensor, budget: int, e_t: Tensor,
              recon_fn: ReconFn, cfg: TrainConfig, generator: torch.Generator | None = None) -> PhaseOutput:
    b, k = images.shape[0], model.max_tokens
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    cond, free = ltc_conditions(model, e_t, cfg, generator)
    z, halt_logits = model.forward_encoder(tokens2d, cond, k)
    latents, _, q_loss = model.quantize_latents(z)
    keep = (halt_logits.detach().float().sigmoid() <= model.config.halt_threshold)
    head = model.forward_decoder(latents, keep)
    rec, parts, recon_images = recon_fn(head, "ltc")
    if cfg.halting_labels == "minimal":
        lengths = minimal_program_lengths(model, latents, images, cond, prefix_grid(cfg, k))
        # The achieved bin was met by T tokens in EIC: never label a longer program than T.
        lengths = torch.where(free, lengths, lengths.clamp(max=min(budget, k)))
        labels = minimal_halting_labels(lengths, k)
        parts_extra = {"ltc/label_len": lengths.float().mean().item()}
    else:
        labels = halting_labels(b, k, budget, images.device)
        parts_extra = {}
    halt = F.binary_cross_entropy_with_logits(halt_logits.float(), labels)
    loss = cfg.token_loss_weight * rec + cfg.quant_loss_weight * q_loss + cfg.halt_loss_weight * halt
    parts = {f"ltc/{k_}": v for k_, v in parts.items()}
    parts.update({"ltc/halt_bce": halt.item(), "ltc/quant": float(q_loss.detach()),
                  "ltc/kept": keep.float().sum(-1).mean().item(),
                  "ltc/delta": float(max(0, k - budget)), **parts_extra})
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
    ltc = ltc_phase(model, images, tokens2d, budget, e_t, recon_fn_bound, cfg, generator)
    parts = {"loss": (eic.loss + ltc.loss).item(), "budget": float(budget), **eic.parts, **ltc.parts}
    return eic.loss + ltc.loss, parts, {"eic": eic.images, "ltc": ltc.images}


def _bind_target(recon_fn, target):
    def fn(head: Tensor, phase: str):
        return recon_fn(head, phase, target)
    return fn
