"""Helpers shared by the analyses: batching, token-count grids, CSV/JSON export, colours.

Nothing here imports plotly; ``analysis.*`` modules import plotly lazily in ``plot_*``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

# Colours used by every figure (kept / halted tokens, groups in scatters).
KEPT_COLOR = "#2a9d8f"
HALTED_COLOR = "#c8c8c8"
THRESHOLD_COLOR = "#e76f51"
PALETTE = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d", "#6d597a", "#f4a261",
           "#457b9d", "#b5838d", "#3d405b"]
FIGURE_TEMPLATE = "plotly_white"


def figure_style() -> dict:
    """The layout keywords every figure takes: ``template=FIGURE_TEMPLATE``, unless plotly
    already applies that template as its default (the app sets it at start).

    Naming a template in a layout makes plotly validate a deep copy of it, about 10 ms per
    figure here, a third of the app's figure time on an epsilon change; plotly applies its
    default template to a new figure without that copy.
    """
    import plotly.io as pio

    return {} if pio.templates.default == FIGURE_TEMPLATE else {"template": FIGURE_TEMPLATE}


def use_figure_template() -> None:
    """Make FIGURE_TEMPLATE plotly's default in this process (the app: one process that draws
    nothing else), so that :func:`figure_style` adds nothing and figures build faster."""
    import plotly.io as pio

    if pio.templates.default != FIGURE_TEMPLATE:
        pio.templates.default = FIGURE_TEMPLATE


def mark_x(fig, x: float, text: str, log_x: bool, side: str = "right", **line) -> None:
    """A vertical line at data ``x`` labelled ``text`` at the top, on its ``side``.

    Plotly places a shape on a log axis at ``x`` but an annotation at ``log10(x)``, so
    ``add_vline(annotation_text=...)`` on a log axis puts the label at 10^x and autorange
    stretches the axis to it (x = 32 tokens: an axis running to 10^32). The label is added
    here in the axis' own coordinates instead.
    """
    fig.add_vline(x=x, **line)
    fig.add_annotation(x=math.log10(x) if log_x else x, xref="x", y=1, yref="paper", text=text,
                       showarrow=False, yanchor="bottom", xanchor="left" if side == "right" else "right")


class Exportable:
    """Mixin for analysis dataclasses: ``to_frame()`` (subclasses) -> CSV / JSON files."""

    def to_frame(self) -> pd.DataFrame:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def save_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path, index=False)
        return path

    def to_dict(self) -> dict:
        """Plain-typed dict (arrays -> lists) of the dataclass fields."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, pd.DataFrame):
                v = v.to_dict(orient="records")
            elif isinstance(v, (np.floating, np.integer)):
                v = v.item()
            out[f.name] = v
        return out

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=float))
        return path


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering range(n) in steps of ``size``."""
    assert size >= 1, f"batch size must be >= 1, got {size}"
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def default_token_counts(max_tokens: int) -> list[int]:
    """Powers of two up to ``max_tokens``, plus ``max_tokens`` itself (tiny 16 -> 1..16)."""
    assert max_tokens >= 1, f"max_tokens must be >= 1, got {max_tokens}"
    counts = [2 ** i for i in range(int(np.log2(max_tokens)) + 1)]
    if counts[-1] != max_tokens:
        counts.append(max_tokens)
    return counts


def check_images(images: Tensor, size: int) -> Tensor:
    assert isinstance(images, Tensor) and images.ndim == 4 and images.shape[1:] == (3, size, size), (
        f"expected images [N, 3, {size}, {size}] in [0, 1] (see karl.data.images.preprocess), "
        f"got {tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    return images.float()


def as_float_array(values: Sequence[float] | Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """tqdm when enabled (and installed), else the iterable unchanged."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def epsilons_arg(text: str) -> tuple[float, ...]:
    """argparse type: epsilons separated by commas, by karl's one rule (``karl.model.parse_epsilons``:
    finite and >= 0; above the largest loss bin, conditioned on that bin, with a warning)."""
    import argparse
    import sys

    from karl.config import LOSS_BINS
    from karl.model import RequestError, parse_epsilons
    try:
        eps, notices = parse_epsilons(text, LOSS_BINS, "epsilon")
    except RequestError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    for n in notices:
        print(f"warning: {n}", file=sys.stderr)
    return tuple(eps)


def epsilon_arg(text: str) -> float:
    """argparse type: one epsilon by karl's one rule (:func:`epsilons_arg`)."""
    import argparse

    eps = epsilons_arg(text)
    if len(eps) != 1:
        raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
    return eps[0]


def epsilon_row(epsilons: Sequence[float] | np.ndarray, epsilon: float) -> int:
    """Index of the row (of rows encoded at ``epsilons``) that ``epsilon`` belongs to: the
    smallest row epsilon >= it, by the model's own rounding (``karl.model.epsilon_to_bin``);
    with a row per loss bin, exactly the bin ``KARL.encode`` conditions on."""
    from karl.model import epsilon_to_bin

    eps = np.asarray(epsilons, dtype=np.float64)
    order = np.argsort(eps, kind="stable")
    return int(order[int(epsilon_to_bin(epsilon, torch.as_tensor(eps[order])))])


@torch.no_grad()
def sweep_many(model, images: Tensor, epsilons: Sequence[float], budget: int | None = None,
               batch_size: int = 64, show_progress: bool = False):
    """``model.sweep`` of N images at E epsilons, about ``batch_size`` (image, epsilon) rows per
    encoder pass -> a decisions-only ``karl.model.Sweep`` (halting probs and keep [N, E, K] on the
    CPU; ``kc_hat`` and ``continuous_kc`` [N, E]): memory does not grow with the latents."""
    from karl.model import Sweep

    images = check_images(images, model.image_size)
    e = len(epsilons)
    assert e >= 1, "need at least one epsilon"
    per_pass = max(1, batch_size // e)  # images per encoder pass
    steps = list(chunks(images.shape[0], per_pass))
    return Sweep.cat([model.sweep(images[sl], epsilons, budget=budget).decisions()
                      for sl in progress(steps, total=len(steps), desc="encode", enabled=show_progress)])
