"""The evaluation regimes: what is run (:class:`Plan` of :class:`Task` s) and how each runs on a batch.

fixed (paper Table 1), variable (Table 2) and the search baselines of :mod:`karl.search`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from karl.model import KARL
from karl.search import MethodResult, pixel_l1, search_iterative, search_prefix_binary, search_prefix_linear


SEARCHES = ("prefix_linear", "prefix_binary", "iterative")
DEFAULT_EPSILONS = (0.03, 0.05, 0.09)


class EvalError(RuntimeError):
    """A user-facing problem (bad arguments, unreadable data, mismatched results folder)."""


def fmt_eps(eps: float | None) -> str:
    return "" if eps is None else f"{eps:g}"


@dataclass(frozen=True)
class Task:
    """One (regime, target) pair: every image gets one row per task."""

    regime: str            # fixed | variable | prefix_linear | prefix_binary | iterative
    epsilon: float | None  # the target (None for fixed)
    budget: int            # fixed: the exact token count; otherwise the maximum budget

    @property
    def key(self) -> tuple[str, str, str]:
        return self.regime, fmt_eps(self.epsilon), str(self.budget)

    @property
    def label(self) -> str:
        return f"fixed_k{self.budget}" if self.regime == "fixed" else f"{self.regime}_eps{fmt_eps(self.epsilon)}"


@dataclass
class Plan:
    fixed: list[int]
    epsilons: list[float]
    searches: list[str]
    budget: int
    linear_step: int
    binary_step: int
    iterative_step: int
    prefix_condition: float | None  # None: each search encodes at its own target epsilon
    lpips_net: str | None

    def tasks(self) -> list[Task]:
        out = [Task("fixed", None, k) for k in self.fixed]
        out += [Task("variable", e, self.budget) for e in self.epsilons]
        out += [Task(s, e, self.budget) for s in self.searches for e in self.epsilons]
        return out


@torch.no_grad()
def evaluate_fixed(model: KARL, images: Tensor, k: int, base_grid=None) -> MethodResult:
    """Fixed-token regime (Table 1): encode with exactly k tokens, keep all, decode."""
    images = images.to(model.device)
    recon = model.reconstruct(images, num_tokens=k, base_grid=base_grid)
    ones = torch.ones(images.shape[0], dtype=torch.long, device=images.device)
    return MethodResult(tokens=ones * k, encoder_runs=ones, decoder_runs=ones.clone(), recon=recon)


@torch.no_grad()
def evaluate_variable(model: KARL, images: Tensor, epsilon: float, budget: int | None = None,
                      base_grid=None) -> MethodResult:
    """Variable regime (Table 2): one encoder pass at epsilon picks the tokens, one decoder pass."""
    images = images.to(model.device)
    enc = model.encode(images, epsilon=epsilon, budget=budget, base_grid=base_grid)
    recon = model.decode(enc)
    ones = torch.ones(images.shape[0], dtype=torch.long, device=images.device)
    return MethodResult(tokens=enc.kc_hat.long(), encoder_runs=ones, decoder_runs=ones.clone(),
                        recon=recon, reached=pixel_l1(recon, images) <= epsilon)


def run_task(model: KARL, task: Task, plan: Plan, images: Tensor, grid) -> MethodResult:
    if task.regime == "fixed":
        return evaluate_fixed(model, images, task.budget, grid)
    if task.regime == "variable":
        return evaluate_variable(model, images, task.epsilon, task.budget, grid)
    cond = task.epsilon if plan.prefix_condition is None else plan.prefix_condition
    if task.regime == "prefix_linear":
        return search_prefix_linear(model, images, task.epsilon, plan.linear_step, task.budget, cond, base_grid=grid)
    if task.regime == "prefix_binary":
        return search_prefix_binary(model, images, task.epsilon, plan.binary_step, task.budget, cond, base_grid=grid)
    if task.regime == "iterative":
        return search_iterative(model, images, task.epsilon, plan.iterative_step, task.budget, base_grid=grid)
    raise ValueError(f"unknown regime {task.regime!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def default_fixed_counts(max_tokens: int) -> list[int]:
    """max/8, max/4, max/2, max: the paper's 32, 64, 128, 256 for 256 tokens."""
    return sorted({max(1, max_tokens // d) for d in (8, 4, 2, 1)})
