"""What an encoding request means and what it returns, each decided in one place.

- :func:`check_epsilon`, :func:`check_count`: the one rule for a user-given epsilon, token
  budget or cap (the app, ``karl-complexity``, ``karl-eval`` and the report all call them):
  a finite number; above the trained range, the end of the range with a notice; below it,
  NaN, infinity or not a number, a :class:`RequestError` in one line.
- :func:`epsilon_to_bin`: which of the loss bins an epsilon conditions on (rounded up).
- :func:`halting_decision`: the keep rule, ``sigmoid(logit) <= threshold``, for inference
  (``KARL._encode_at``) and training (``karl/train/phases.py``'s LTC phase) alike.
- :class:`Encoding`: one encoder pass; :class:`Sweep`: N images at E epsilons
  (``KARL.sweep``), whose row ``[i, j]`` is the encoding of image i at epsilon j.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["RequestError", "check_epsilon", "check_count", "check_budget", "parse_epsilons",
           "epsilon_to_bin", "halting_decision",
           "Encoding", "Sweep"]


# ----------------------------------------------------------------------------- requests

class RequestError(ValueError):
    """A refused request, with a one-line message meant for the user (a bad epsilon, budget or
    cap; the app raises it, as ``app.inference.InputError``, for an unreadable upload too)."""


def _finite_number(value: Any, what: str, expected: str) -> float:
    """``value`` as a finite float, or a RequestError naming ``what`` and the range ``expected``."""
    if isinstance(value, bool):  # bool is an int subclass; True is not an epsilon
        value = str(value)
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be a number {expected}, got {value!r}") from None
    if not math.isfinite(x):
        raise RequestError(f"{what} must be a finite number {expected}, got {x!r}")
    return x


def check_epsilon(value: Any, bins: Sequence[float], what: str = "epsilon") -> tuple[float, list[str]]:
    """A requested pixel-L1 target -> (epsilon, notices).

    Accepted: finite numbers >= 0 (numeric strings too). Above the last loss bin the model
    conditions on the last bin: accepted, with the notice "... using <last bin>". Negative,
    NaN, infinity or not a number: :class:`RequestError`.
    """
    last = float(bins[-1])
    eps = _finite_number(value, what, f"between 0 and {last:g}")
    if eps < 0:
        raise RequestError(f"{what} must be between 0 and {last:g}, got {eps:g}")
    if eps > last:
        return eps, [f"{what} {eps:g} is above the largest loss bin; using {last:g}"]
    return eps, []


def parse_epsilons(values: str | Sequence[Any], bins: Sequence[float],
                   what: str = "--epsilon") -> tuple[list[float], list[str]]:
    """Command-line epsilons (strings separated by commas or spaces, or several of them) by
    :func:`check_epsilon` -> (epsilons in order without repeats, notices); "none" -> []."""
    parts = [values] if isinstance(values, str) else list(values)
    words = [w for v in parts for w in str(v).replace(",", " ").split()]
    if [w.lower() for w in words] == ["none"]:
        return [], []
    eps: dict[str, float] = {}
    notices: list[str] = []
    for w in words:
        e, more = check_epsilon(w, bins, what)
        if f"{e:g}" not in eps:
            eps[f"{e:g}"] = e
            notices += more
    return list(eps.values()), notices


def check_count(value: Any, what: str, k_max: int, unit: str, above: str) -> tuple[int, list[str]]:
    """A token count (budget, cap) in [1, ``k_max``] -> (count, notices).

    A fractional value rounds half up (3.5 -> 4, 3.7 -> 4, 0.5 -> 1). Above ``k_max``:
    ``k_max``, with the notice "<what> <value> is above <above>; using <k_max>". Below 1
    after rounding, NaN, infinity or not a number: :class:`RequestError` in one line.
    """
    x = _finite_number(value, what, f"of {unit} between 1 and {k_max}")
    k = math.floor(x + 0.5)
    if k < 1:
        raise RequestError(f"{what} must be between 1 and {k_max} {unit}, got {x:g}")
    if k > k_max:
        return k_max, [f"{what} {k} is above {above}; using {k_max}"]
    return k, []


def check_budget(value: Any, k_max: int) -> tuple[int, list[str]]:
    """A token budget by :func:`check_count`; None or "" -> ``k_max`` (the model's ``max_tokens``:
    tokens beyond it were never trained to halt, so a larger budget would keep them all)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return int(k_max), []
    return check_count(value, "budget", int(k_max), "tokens",
                       f"the {k_max} tokens this model was trained to halt within")


# ----------------------------------------------------------------------------- bins and the keep rule

def epsilon_to_bin(epsilon: float | Tensor, bins: Tensor) -> Tensor:
    """Index of the smallest loss bin >= epsilon (0 -> first bin; above the last -> last)."""
    eps = torch.as_tensor(epsilon, dtype=torch.float64, device=bins.device).reshape(-1)
    # Bins and epsilons often arrive as float32 (0.05 -> 0.0500000007): compare at 1e-6
    # resolution so that a value equal to a bin maps to that bin, not the next one.
    exact = torch.round(bins.double() * 1e6) / 1e6
    idx = torch.bucketize(torch.round(eps * 1e6) / 1e6, exact, right=False)
    return idx.clamp(max=len(bins) - 1)


def halting_decision(halt_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """The keep rule: (halting probabilities [b, k] in float32, keep [b, k] bool).

    A token is kept (not halted) when its halting probability is <= ``threshold``.
    """
    probs = halt_logits.float().sigmoid()
    return probs, probs <= threshold


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Encoding:
    """The result of one encoder pass. KC-hat = ``keep.sum(-1)``.

    Frozen: derive a changed one with ``dataclasses.replace(enc, keep=...)`` (an
    encoding may be cached and shared, e.g. by the app).
    """

    latents: Tensor            # [B, K, e] factorised latents (quantised for VQ models)
    halting_probs: Tensor      # [B, K] in [0, 1]
    keep: Tensor               # [B, K] bool: not halted
    token_ids: Tensor | None   # [B, K] codebook ids (quantised models) or None
    epsilon: Tensor            # [B] the loss bin each image was conditioned on

    @property
    def kc_hat(self) -> Tensor:
        return self.keep.sum(-1)

    @property
    def continuous_kc(self) -> Tensor:
        """Expected number of kept tokens, sum(1 - halting prob) in float64: ranks finer than kc_hat."""
        return _continuous_kc(self.halting_probs)

    @property
    def budget(self) -> int:
        return self.keep.shape[1]

    def to(self, device: torch.device | str) -> "Encoding":
        ids = None if self.token_ids is None else self.token_ids.to(device)
        return dataclasses.replace(self, latents=self.latents.to(device),
                                   halting_probs=self.halting_probs.to(device), keep=self.keep.to(device),
                                   token_ids=ids, epsilon=self.epsilon.to(device))


def _continuous_kc(probs: Tensor) -> Tensor:
    return (1.0 - probs.double()).sum(-1)


@dataclass(frozen=True)
class Sweep:
    """N images at E epsilons (``KARL.sweep``): element ``[i, j]`` is the program of image i
    at epsilon j, as ``KARL.encode(images[i:i+1], epsilons[j])`` gives it.

    Frozen. :meth:`decisions` drops the latents (the halting decisions only, on the CPU: what
    the analyses keep of many images); :meth:`cat` joins sweeps of image batches.
    """

    epsilons: Tensor           # [E] float64: the epsilons asked for
    bins: Tensor               # [E] the loss bin each epsilon conditioned on (Encoding.epsilon)
    halting_probs: Tensor      # [N, E, K] float32 in [0, 1]
    keep: Tensor               # [N, E, K] bool
    latents: Tensor | None     # [N, E, K, e]; None after decisions()
    token_ids: Tensor | None   # [N, E, K] codebook ids (quantised models) or None

    @property
    def kc_hat(self) -> Tensor:
        """[N, E] kept tokens."""
        return self.keep.sum(-1)

    @property
    def continuous_kc(self) -> Tensor:
        """[N, E] float64 sum(1 - halting prob)."""
        return _continuous_kc(self.halting_probs)

    @property
    def budget(self) -> int:
        return self.keep.shape[-1]

    def column(self, epsilon: float) -> int:
        """The column whose loss bin ``epsilon`` conditions on, by :func:`epsilon_to_bin` over
        the columns' bins (a sweep over every loss bin: exactly the model's own rounding)."""
        order = torch.argsort(self.bins.double().cpu(), stable=True)
        return int(order[epsilon_to_bin(epsilon, self.bins.double().cpu()[order])])

    def encoding(self, j: int) -> Encoding:
        """Every image's program at epsilon column ``j``: an :class:`Encoding` [N, K]."""
        if self.latents is None:
            raise ValueError("this Sweep holds the halting decisions only (decisions()): no latents to decode")
        ids = None if self.token_ids is None else self.token_ids[:, j]
        return Encoding(latents=self.latents[:, j], halting_probs=self.halting_probs[:, j],
                        keep=self.keep[:, j], token_ids=ids,
                        epsilon=self.bins[j].expand(self.keep.shape[0]))

    def decisions(self) -> "Sweep":
        """The halting decisions only (no latents or token ids), on the CPU."""
        return Sweep(epsilons=self.epsilons.cpu(), bins=self.bins.cpu(), halting_probs=self.halting_probs.cpu(),
                     keep=self.keep.cpu(), latents=None, token_ids=None)

    @staticmethod
    def cat(sweeps: Sequence["Sweep"]) -> "Sweep":
        """Sweeps of image batches (same epsilons) joined along the image axis."""
        assert sweeps, "nothing to join"

        def join(name: str) -> Tensor | None:
            parts = [getattr(s, name) for s in sweeps]
            return None if any(p is None for p in parts) else torch.cat(parts)
        first = sweeps[0]
        return Sweep(epsilons=first.epsilons, bins=first.bins, halting_probs=join("halting_probs"),
                     keep=join("keep"), latents=join("latents"), token_ids=join("token_ids"))

    @staticmethod
    def from_rows(enc: Encoding, epsilons: Tensor) -> "Sweep":
        """An :class:`Encoding` of N * E rows, image-major (image i at epsilon j is row i * E + j)."""
        e = len(epsilons)
        n = enc.keep.shape[0] // e

        def split(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.reshape(n, e, *x.shape[1:])
        return Sweep(epsilons=epsilons, bins=enc.epsilon[:e], halting_probs=split(enc.halting_probs),
                     keep=split(enc.keep), latents=split(enc.latents), token_ids=split(enc.token_ids))
