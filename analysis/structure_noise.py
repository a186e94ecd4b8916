"""Analysis 3: structure vs noise (the paper's Fig. 6 and the Delta scatter).

- Token sweep: L1 and SSIM of the fixed-token reconstruction as a function of the token
  count, for pure noise, a chessboard, a natural photo and a fractal.
- Delta = L1(small budget) - L1(full budget), how much the extra tokens help (positive when
  they do). The paper uses 32 and 256 tokens; here the small budget defaults to
  ``max_tokens // 8``. Pure noise: KC-hat is maximal yet Delta ~ 0 (nothing to learn);
  a chessboard: few tokens but a large Delta (out-of-distribution structure); natural
  images and fractals fall in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analysis._common import (PALETTE, Exportable, check_images, chunks, default_token_counts, figure_style,
                              progress)

PROBE_NAMES = ["noise", "chessboard", "natural", "fractal"]


@dataclass
class TokenSweep(Exportable):
    names: list[str]
    token_counts: np.ndarray  # [T]
    l1: np.ndarray            # [N, T]
    ssim: np.ndarray          # [N, T]

    def to_frame(self) -> pd.DataFrame:
        n, t = self.l1.shape
        return pd.DataFrame({"image": np.repeat(self.names, t), "tokens": np.tile(self.token_counts, n),
                             "l1": self.l1.reshape(-1), "ssim": self.ssim.reshape(-1)})


@dataclass
class DeltaData(Exportable):
    kc_hat: np.ndarray         # [N] at ``epsilon``
    continuous_kc: np.ndarray  # [N]
    delta: np.ndarray          # [N] l1_small - l1_full
    l1_small: np.ndarray       # [N]
    l1_full: np.ndarray        # [N]
    epsilon: float = 0.05
    small_budget: int = 0
    full_budget: int = 0
    names: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        n = len(self.kc_hat)
        return pd.DataFrame({"image": self.names if len(self.names) == n else [str(i) for i in range(n)],
                             "kc_hat": self.kc_hat, "continuous_kc": self.continuous_kc,
                             "l1_small": self.l1_small, "l1_full": self.l1_full, "delta": self.delta,
                             "epsilon": self.epsilon, "small_budget": self.small_budget,
                             "full_budget": self.full_budget})


# ----------------------------------------------------------------------------- probe images

def _chessboard(size: int, squares: int = 8) -> Tensor:
    idx = torch.arange(size) * squares // size
    board = ((idx[:, None] + idx[None, :]) % 2).float()
    return board.expand(3, size, size).clone()


def _mandelbrot(size: int, iters: int = 64) -> Tensor:
    """A coloured Mandelbrot view (smooth iteration count through a cosine palette)."""
    y, x = np.mgrid[-1.25:1.25:size * 1j, -2.1:0.6:size * 1j]
    c = x + 1j * y
    z = np.zeros_like(c)
    count = np.full(c.shape, float(iters))
    for i in range(iters):
        alive = count == iters
        z[alive] = z[alive] ** 2 + c[alive]
        escaped = alive & (np.abs(z) > 2)
        count[escaped] = i + 1 - np.log2(np.log2(np.abs(z[escaped])))
    t = np.where(count >= iters, 0.0, np.sqrt(count / iters))
    phase = np.array([0.0, 0.33, 0.67])[:, None, None]
    rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (3 * t[None] + phase))
    rgb = np.where(count[None] >= iters, 0.0, rgb)
    return torch.from_numpy(rgb).float().clamp(0, 1)


def _natural(size: int) -> Tensor:
    from PIL import Image
    from skimage import data

    from karl.data.images import preprocess
    return preprocess(Image.fromarray(data.astronaut()), size)


def standard_probe_images(size: int, seed: int = 0) -> tuple[Tensor, list[str]]:
    """The four probes of the paper's Fig. 6 -> ([4, 3, size, size] in [0, 1], names).

    noise: i.i.d. uniform pixels; chessboard: 8 x 8 black and white squares; natural:
    skimage's astronaut photo (bundled, offline), resized and centre-cropped; fractal: a
    coloured Mandelbrot set.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(3, size, size, generator=g)
    images = torch.stack([noise, _chessboard(size), _natural(size), _mandelbrot(size)])
    return images, list(PROBE_NAMES)


# ----------------------------------------------------------------------------- computations

@torch.no_grad()
def compute_token_sweep(model, images: Tensor, names: Sequence[str] | None = None,
                        token_counts: Sequence[int] | None = None, batch_size: int = 64,
                        show_progress: bool = False) -> TokenSweep:
    """L1 and SSIM of ``model.reconstruct(images, num_tokens=k)`` for each k -> [N, T].

    ``token_counts`` defaults to the powers of two up to ``model.max_tokens``.
    """
    from karl.metrics import l1, ssim

    images = check_images(images, model.image_size)
    counts = list(token_counts) if token_counts is not None else default_token_counts(model.max_tokens)
    n = images.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    assert len(names) == n, f"{len(names)} names for {n} images"
    out_l1, out_ssim = np.zeros((n, len(counts))), np.zeros((n, len(counts)))
    for j, k in enumerate(progress(counts, total=len(counts), desc="token sweep", enabled=show_progress)):
        for sl in chunks(n, batch_size):
            x = images[sl].to(model.device)
            rec = model.reconstruct(x, num_tokens=int(k))
            out_l1[sl, j] = l1(rec, x).double().cpu().numpy()
            out_ssim[sl, j] = ssim(rec, x).double().cpu().numpy()
    return TokenSweep(names=names, token_counts=np.asarray(counts, dtype=np.int64), l1=out_l1, ssim=out_ssim)


@torch.no_grad()
def compute_delta(model, images: Tensor, epsilon: float = 0.05, small_budget: int | None = None,
                  names: Sequence[str] | None = None, batch_size: int = 64,
                  show_progress: bool = False) -> DeltaData:
    """KC-hat at ``epsilon`` and Delta = L1(small_budget tokens) - L1(max_tokens) per image."""
    from karl.metrics import l1

    images = check_images(images, model.image_size)
    full = int(model.max_tokens)
    small = int(small_budget) if small_budget is not None else max(1, full // 8)
    assert 1 <= small <= full, f"small_budget {small} outside [1, {full}]"
    n = images.shape[0]
    kc, ckc, l1_s, l1_f = (np.zeros(n) for _ in range(4))
    steps = list(chunks(n, batch_size))
    for sl in progress(steps, total=len(steps), desc="delta", enabled=show_progress):
        x = images[sl].to(model.device)
        grid = model.base_encode(x)
        enc = model.encode(x, epsilon=epsilon, base_grid=grid)
        kc[sl] = enc.kc_hat.cpu().numpy()
        ckc[sl] = enc.continuous_kc.double().cpu().numpy()
        l1_s[sl] = l1(model.reconstruct(x, num_tokens=small, base_grid=grid), x).double().cpu().numpy()
        l1_f[sl] = l1(model.reconstruct(x, num_tokens=full, base_grid=grid), x).double().cpu().numpy()
    names = list(names) if names is not None else [str(i) for i in range(n)]
    return DeltaData(kc_hat=kc.astype(np.int64), continuous_kc=ckc, delta=l1_s - l1_f, l1_small=l1_s,
                     l1_full=l1_f, epsilon=float(epsilon), small_budget=small, full_budget=full,
                     names=names)


# ----------------------------------------------------------------------------- figures

def plot_token_sweep(sweep: TokenSweep):
    """L1 (left) and SSIM (right) vs token count, one line per image."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("pixel L1 (lower is better)",
                                                        "SSIM (higher is better)"))
    for i, name in enumerate(sweep.names):
        color = PALETTE[i % len(PALETTE)]
        for col, values in ((1, sweep.l1[i]), (2, sweep.ssim[i])):
            fig.add_trace(go.Scatter(x=sweep.token_counts, y=values, mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1, line=dict(color=color)),
                          row=1, col=col)
    fig.update_xaxes(title_text="tokens", type="log", tickvals=sweep.token_counts.tolist())
    fig.update_layout(title="Reconstruction quality vs token count (structure vs noise)",
                      **figure_style(), legend_orientation="h", legend_y=-0.25)
    return fig


def plot_kc_vs_delta(delta_data: DeltaData, labels: Sequence[str] | None = None):
    """Scatter of KC-hat (x) vs Delta (y), one colour per label.

    Reading guide: high KC-hat with Delta ~ 0 is noise-like (incompressible, more tokens do
    not help); low KC-hat is redundant structure; large Delta with mid-to-high KC-hat is
    "interesting" structure that the extra tokens capture.
    """
    import plotly.graph_objects as go

    d = delta_data
    labels = list(labels) if labels is not None else ["images"] * len(d.kc_hat)
    assert len(labels) == len(d.kc_hat), f"{len(labels)} labels for {len(d.kc_hat)} points"
    names = d.names if len(d.names) == len(d.kc_hat) else [str(i) for i in range(len(d.kc_hat))]
    fig = go.Figure()
    groups = list(dict.fromkeys(labels))
    lab = np.asarray(labels)
    for i, g in enumerate(groups):
        m = lab == g
        fig.add_trace(go.Scatter(
            x=d.kc_hat[m], y=d.delta[m], mode="markers", name=g,
            marker=dict(size=9 if m.sum() < 8 else 6, color=PALETTE[i % len(PALETTE)], opacity=0.8),
            text=[names[j] for j in np.flatnonzero(m)],
            customdata=d.continuous_kc[m],
            hovertemplate="%{text}<br>KC-hat %{x}<br>sum(1-p) %{customdata:.1f}<br>Delta %{y:.4f}<extra></extra>"))
    fig.add_hline(y=0, line_color="#888", line_width=1)
    fig.update_layout(
        title=(f"KC-hat (epsilon = {d.epsilon:g}) vs Delta = L1({d.small_budget} tokens) - "
               f"L1({d.full_budget} tokens)"),
        xaxis_title="KC-hat (tokens kept)", yaxis_title="Delta (L1 gained by the extra tokens)",
        xaxis_range=[-0.5, d.full_budget * 1.05 + 0.5], **figure_style(), legend_orientation="h",
        legend_y=-0.2,
        annotations=[
            dict(x=1, y=0, xref="paper", yref="paper", xanchor="right", yanchor="bottom", showarrow=False,
                 text="noise: many tokens, Delta ~ 0 (bottom right)", font=dict(color="#888")),
            dict(x=0, y=1, xref="paper", yref="paper", xanchor="left", yanchor="top", showarrow=False,
                 text="structure the extra tokens capture: large Delta", font=dict(color="#888")),
        ])
    return fig
