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


@torch.no_grad()
def encode_many(model, images: Tensor, epsilons: Sequence[float], budget: int | None = None,
                batch_size: int = 64, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Halting probabilities [N, E, K] and keep masks [N, E, K] of N images at E epsilons.

    Every (image, epsilon) pair is one row of a batched encoder pass: images are repeated
    E times with a per-row epsilon tensor. The base tokenizer runs once per image.
    """
    from karl.base_tokenizers import BaseGrid

    images = check_images(images, model.image_size)
    eps = torch.as_tensor(list(epsilons), dtype=torch.float32)
    n, e = images.shape[0], len(eps)
    assert e >= 1, "need at least one epsilon"
    per_pass = max(1, batch_size // e)  # images per encoder pass
    probs, keep = [], []
    steps = list(chunks(n, per_pass))
    for sl in progress(steps, total=len(steps), desc="encode", enabled=show_progress):
        x = images[sl].to(model.device)
        grid = model.base_encode(x)
        m = x.shape[0]
        rep = lambda t: t.repeat_interleave(e, dim=0)  # noqa: E731  [m, ...] -> [m*e, ...]
        grid_rep = BaseGrid(features=rep(grid.features), target=rep(grid.target))
        enc = model.encode(rep(x), epsilon=eps.repeat(m).to(model.device), budget=budget,
                           base_grid=grid_rep)
        k = enc.keep.shape[1]
        probs.append(enc.halting_probs.float().cpu().reshape(m, e, k))
        keep.append(enc.keep.cpu().reshape(m, e, k))
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(keep).numpy()
