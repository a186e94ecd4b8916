"""Learning-rate schedule and optimiser construction (the release's stage settings, as in VQGAN / TiTok)."""

from __future__ import annotations

import math

import torch
from torch import nn

from karl.config import TrainConfig


def lr_at(step: int, base_lr: float, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio x base_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def scaled_lr(cfg: TrainConfig, world_size: int) -> float:
    """lr = lr_256 x global batch / 256."""
    return cfg.lr * cfg.batch_size * world_size / 256


def build_optimizer(params: list[tuple[str, nn.Parameter]], lr: float, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on 1-D parameters (norms, biases, scalars)."""
    decay = [p for _, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
