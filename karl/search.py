"""Search baselines on a KARL model: the minimal token count for L1 <= epsilon, found by search.

Search-based adaptive tokenizers (the paper's baselines) need many decoder (and encoder) runs
per image to find the token count that reaches a target quality; KARL predicts it in one
encoder pass. Emulating the searches on the same KARL model gives a same-model comparison,
and the minimal count they find is the oracle KC-hat for that model.

- :func:`search_prefix_linear` (One-D-Piece / FlexTok, tail-drop): encode once with the full
  budget, then decode prefixes of ``step, 2 step, ..., budget`` tokens until L1 <= epsilon.
- :func:`search_prefix_binary`: the same prefixes, by binary search (lower bound). Exact only
  if L1 does not increase with the prefix length (assumed, not checked).
- :func:`search_iterative` (ALIT): encode *and* decode with ``step, 2 step, ...`` tokens
  (one encoder and one decoder run per try, as in the fixed-token regime) until L1 <= epsilon.

Every search runs in lockstep over a batch: each round decodes one candidate for each image
still searching, so the work equals that of the per-image sequential algorithm, and the
``encoder_runs`` / ``decoder_runs`` it returns are those the sequential algorithm does for
that image. If no candidate reaches epsilon the result is the full budget, ``reached=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from karl.base_tokenizers import BaseGrid
from karl.model import KARL, Encoding

__all__ = ["MethodResult", "candidate_counts", "search_prefix_linear", "search_prefix_binary",
           "search_iterative", "subset_encoding", "subset_grid", "pixel_l1"]


@dataclass
class MethodResult:
    """Per-image outcome of one method (a regime or a search) on a batch of B images."""

    tokens: Tensor        # [B] long: tokens used (the count found; the budget when not reached)
    encoder_runs: Tensor  # [B] long: KARL encoder passes the sequential method needs
    decoder_runs: Tensor  # [B] long: decoder passes the sequential method needs
    recon: Tensor         # [B, 3, H, W] the reconstruction at ``tokens``
    reached: Tensor | None = None  # [B] bool: L1 <= epsilon at ``tokens`` (None: no target)


def pixel_l1(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean absolute error [B] (the paper's epsilon; same as ``karl.metrics.l1``)."""
    return (x.float() - y.float()).abs().flatten(1).mean(1)


def candidate_counts(budget: int, step: int) -> list[int]:
    """``[step, 2 step, ..., budget]``; the budget is always the last candidate."""
    if budget < 1 or step < 1:
        raise ValueError(f"budget and step must be >= 1, got budget={budget}, step={step}")
    counts = list(range(step, budget + 1, step))
    if not counts or counts[-1] != budget:
        counts.append(budget)
    return counts


def subset_encoding(enc: Encoding, idx: Tensor) -> Encoding:
    ids = None if enc.token_ids is None else enc.token_ids[idx]
    return Encoding(enc.latents[idx], enc.halting_probs[idx], enc.keep[idx], ids, enc.epsilon[idx])


def subset_grid(grid: BaseGrid | None, idx: Tensor) -> BaseGrid | None:
    return None if grid is None else BaseGrid(grid.features[idx], grid.target[idx])


# A "runner" decodes candidate token counts for a subset of the batch:
# run(active [a] long indices into the batch, counts [a] long) -> reconstructions [a, 3, H, W].
Runner = Callable[[Tensor, Tensor], Tensor]


def _linear(images: Tensor, epsilon: float, counts: list[int], run: Runner) -> tuple[Tensor, ...]:
    """Try counts in order per image; stop at the first with L1 <= epsilon."""
    b = images.shape[0]
    dev = images.device
    tokens = torch.full((b,), counts[-1], dtype=torch.long, device=dev)
    reached = torch.zeros(b, dtype=torch.bool, device=dev)
    runs = torch.zeros(b, dtype=torch.long, device=dev)
    recon = torch.zeros_like(images)
    active = torch.arange(b, device=dev)
    for k in counts:
        if active.numel() == 0:
            break
        out = run(active, torch.full_like(active, k))
        ok = pixel_l1(out, images[active]) <= epsilon
        runs[active] += 1
        recon[active] = out.to(recon.dtype)
        tokens[active] = k
        reached[active[ok]] = True
        active = active[~ok]
    return tokens, reached, runs, recon


def _binary(images: Tensor, epsilon: float, counts: list[int], run: Runner) -> tuple[Tensor, ...]:
    """Lower-bound binary search for the first count with L1 <= epsilon, per image.

    Invariant: every candidate below ``lo`` failed, the one at ``hi`` (if < n) succeeded.
    The full budget is decoded exactly when every smaller probe failed, so the returned
    reconstruction is always one that was decoded.
    """
    b, n = images.shape[0], len(counts)
    dev = images.device
    cand = torch.tensor(counts, dtype=torch.long, device=dev)
    lo = torch.zeros(b, dtype=torch.long, device=dev)
    hi = torch.full((b,), n, dtype=torch.long, device=dev)
    runs = torch.zeros(b, dtype=torch.long, device=dev)
    recon = torch.zeros_like(images)
    while True:
        active = (lo < hi).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        mid = (lo[active] + hi[active]) // 2
        out = run(active, cand[mid])
        ok = pixel_l1(out, images[active]) <= epsilon
        runs[active] += 1
        keep = ok | (mid == n - 1)  # a success, or the full budget (the answer if none succeeds)
        recon[active[keep]] = out[keep].to(recon.dtype)
        hi[active[ok]] = mid[ok]
        lo[active[~ok]] = mid[~ok] + 1
    reached = hi < n
    tokens = cand[lo.clamp(max=n - 1)]
    return tokens, reached, runs, recon


def _result(found: tuple[Tensor, ...], encoder_runs: Tensor) -> MethodResult:
    tokens, reached, runs, recon = found
    return MethodResult(tokens=tokens, encoder_runs=encoder_runs, decoder_runs=runs, recon=recon,
                        reached=reached)


def _prefix_runner(model: KARL, enc: Encoding) -> Runner:
    def run(active: Tensor, counts: Tensor) -> Tensor:
        return model.decode(model.keep_prefix(subset_encoding(enc, active), counts))
    return run


def _prefix_encoding(model: KARL, images: Tensor, epsilon: float, budget: int | None,
                     condition: float | None, encoding: Encoding | None,
                     base_grid: BaseGrid | None) -> Encoding:
    if encoding is not None:
        assert encoding.latents.shape[0] == images.shape[0], "encoding and images differ in batch size"
        return encoding
    cond = epsilon if condition is None else condition
    return model.encode(images, epsilon=cond, budget=budget or model.max_tokens, base_grid=base_grid)


@torch.no_grad()
def search_prefix_linear(model: KARL, images: Tensor, epsilon: float, step: int = 1,
                         budget: int | None = None, condition: float | None = None,
                         encoding: Encoding | None = None,
                         base_grid: BaseGrid | None = None) -> MethodResult:
    """One-D-Piece-style linear prefix search: 1 encoder run, 1 decoder run per prefix tried.

    Args:
        images: [B, 3, S, S] in [0, 1].
        epsilon: target pixel L1 (success: L1 <= epsilon).
        step: prefix lengths tried are ``step, 2 step, ..., budget``.
        budget: full token budget (default ``model.max_tokens``).
        condition: the epsilon the single encoding is conditioned on (default: ``epsilon``).
        encoding: a precomputed full-budget encoding to reuse (then ``condition`` is ignored).
    """
    images = images.to(model.device)
    enc = _prefix_encoding(model, images, epsilon, budget, condition, encoding, base_grid)
    found = _linear(images, epsilon, candidate_counts(enc.budget, step), _prefix_runner(model, enc))
    return _result(found, torch.ones_like(found[2]))


@torch.no_grad()
def search_prefix_binary(model: KARL, images: Tensor, epsilon: float, step: int = 1,
                         budget: int | None = None, condition: float | None = None,
                         encoding: Encoding | None = None,
                         base_grid: BaseGrid | None = None) -> MethodResult:
    """Binary prefix search over ``step, 2 step, ..., budget``: about log2(budget / step) decodes.

    Finds the minimal prefix exactly when L1 is non-increasing in the prefix length; otherwise
    it returns *a* prefix with L1 <= epsilon (not necessarily the shortest). Arguments as in
    :func:`search_prefix_linear`.
    """
    images = images.to(model.device)
    enc = _prefix_encoding(model, images, epsilon, budget, condition, encoding, base_grid)
    found = _binary(images, epsilon, candidate_counts(enc.budget, step), _prefix_runner(model, enc))
    return _result(found, torch.ones_like(found[2]))


@torch.no_grad()
def search_iterative(model: KARL, images: Tensor, epsilon: float, step: int = 32,
                     budget: int | None = None, base_grid: BaseGrid | None = None) -> MethodResult:
    """ALIT-style iterative search: encode and decode with ``step, 2 step, ...`` tokens.

    Each try is one fixed-token reconstruction (``model.reconstruct(images, k)``: the same
    near-lossless condition and all k tokens kept), so it costs one encoder and one decoder
    run; ``base_grid`` (the base tokenizer's encoding) is computed once and reused.
    """
    images = images.to(model.device)
    grid = base_grid if base_grid is not None else model.base_encode(images)

    def run(active: Tensor, counts: Tensor) -> Tensor:
        k = int(counts[0])  # lockstep: every active image tries the same count
        return model.reconstruct(images[active], num_tokens=k, base_grid=subset_grid(grid, active))

    found = _linear(images, epsilon, candidate_counts(budget or model.max_tokens, step), run)
    return _result(found, found[2].clone())
