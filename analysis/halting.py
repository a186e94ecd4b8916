"""Analysis 1: the halting probability of each 1D token of one image, across epsilons.

A token is kept when its halting probability is <= the threshold (0.75, as in the
paper and the authors' release); KC-hat is the number of kept tokens and the continuous complexity is
sum(1 - p), the expected number of kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from analysis._common import (HALTED_COLOR, KEPT_COLOR, THRESHOLD_COLOR, Exportable, epsilon_row,
                              figure_style, sweep_many)
from karl.config import LOSS_BINS


@dataclass
class HaltingData(Exportable):
    epsilons: np.ndarray       # [E] requested epsilons (the model rounds each up to its loss bin)
    probs: np.ndarray          # [E, K] halting probability per token
    keep: np.ndarray           # [E, K] bool, probs <= threshold
    threshold: float
    kc_hat: np.ndarray         # [E] kept-token count
    continuous_kc: np.ndarray  # [E] sum(1 - probs)

    @property
    def num_tokens(self) -> int:
        return self.probs.shape[1]

    def index_of(self, epsilon: float) -> int:
        """Row of ``epsilon`` by the model's own rounding (:func:`analysis._common.epsilon_row`)."""
        return epsilon_row(self.epsilons, epsilon)

    @classmethod
    def from_sweep(cls, sweep, threshold: float, image: int = 0) -> "HaltingData":
        """One image of a ``karl.model.Sweep`` (``KARL.sweep``): rows = the sweep's epsilons."""
        return cls(epsilons=sweep.epsilons.double().cpu().numpy(),
                   probs=sweep.halting_probs[image].double().cpu().numpy(), keep=sweep.keep[image].cpu().numpy(),
                   threshold=float(threshold), kc_hat=sweep.kc_hat[image].cpu().numpy().astype(np.int64),
                   continuous_kc=sweep.continuous_kc[image].cpu().numpy())

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (epsilon, token)."""
        e, k = self.probs.shape
        return pd.DataFrame({
            "epsilon": np.repeat(self.epsilons, k),
            "token": np.tile(np.arange(1, k + 1), e),
            "halting_prob": self.probs.reshape(-1),
            "kept": self.keep.reshape(-1),
            "kc_hat": np.repeat(self.kc_hat, k),
            "continuous_kc": np.repeat(self.continuous_kc, k),
        })


def compute_halting(model, image: Tensor, epsilons: Sequence[float] = LOSS_BINS,
                    budget: int | None = None) -> HaltingData:
    """Halting probabilities of the first ``budget`` tokens of ``image`` [3, H, W] at each epsilon.

    All epsilons go through the encoder in one batch (the image repeated E times).
    """
    assert image.ndim == 3, f"expected one image [3, H, W], got {tuple(image.shape)}"
    sweep = sweep_many(model, image[None], list(epsilons), budget=budget, batch_size=max(64, len(epsilons)))
    return HaltingData.from_sweep(sweep, model.config.halt_threshold)


def plot_halting(data: HaltingData, epsilon: float, title: str | None = None):
    """Bar per token (kept / halted colours) at the epsilon nearest ``epsilon``; dashed threshold.
    ``title`` replaces the default one (the epsilon, KC-hat and expected kept tokens)."""
    import plotly.graph_objects as go

    i = data.index_of(epsilon)
    tokens = np.arange(1, data.num_tokens + 1)
    groups = (("kept", data.keep[i], KEPT_COLOR), ("halted", ~data.keep[i], HALTED_COLOR))
    hover = "token %{x}<br>p(halt) = %{y:.3f}<extra>%{fullData.name}</extra>"
    traces = [go.Bar(x=tokens[mask], y=data.probs[i][mask], name=name, marker_color=color,
                     legendgroup=name, hovertemplate=hover) for name, mask, color in groups]
    # A point on each bar (traces 2, 3): a kept token with p(halt) ~ 0.001 draws no visible
    # bar, and a plot where every token is kept would otherwise look empty.
    traces += [go.Scatter(x=tokens[mask], y=data.probs[i][mask], mode="markers", name=name,
                          legendgroup=name, showlegend=False, hovertemplate=hover,
                          marker=dict(color=color, size=7, line=dict(color="#264653", width=1)))
               for name, mask, color in groups]
    if title is None:
        title = (f"Halting probability per token at epsilon = {data.epsilons[i]:g}: KC-hat = "
                 f"{int(data.kc_hat[i])} / {data.num_tokens} (expected kept {data.continuous_kc[i]:.1f})")
    # One constructor call: plotly validates each add_trace / update_layout separately.
    fig = go.Figure(traces, layout=dict(
        title=title, xaxis_title="1D token index", yaxis_title="halting probability",
        yaxis_range=[0, 1.02], barmode="overlay", bargap=0.1, legend_orientation="h", legend_y=-0.2,
        **figure_style()))
    fig.add_hline(y=data.threshold, line_dash="dash", line_color=THRESHOLD_COLOR,
                  annotation_text=f"threshold {data.threshold:g}", annotation_position="top left")
    return fig


def plot_halting_heatmap(data: HaltingData):
    """Heatmap tokens x epsilon of the halting probability, with KC-hat per epsilon overlaid."""
    import plotly.graph_objects as go

    labels = [f"{e:g}" for e in data.epsilons]
    tokens = np.arange(1, data.num_tokens + 1)
    fig = go.Figure(go.Heatmap(
        z=data.probs, x=tokens, y=labels, zmin=0, zmax=1, colorscale="Viridis",
        colorbar_title="p(halt)",
        hovertemplate="token %{x}<br>epsilon %{y}<br>p(halt) = %{z:.3f}<extra></extra>"))
    # The boundary of the kept set: KC-hat per epsilon (tokens are not always kept as a prefix).
    fig.add_trace(go.Scatter(x=data.kc_hat + 0.5, y=labels, mode="lines+markers", name="KC-hat",
                             line=dict(color=THRESHOLD_COLOR, shape="hv"),
                             hovertemplate="epsilon %{y}: KC-hat %{customdata}<extra></extra>",
                             customdata=data.kc_hat))
    fig.update_layout(title="Halting probabilities across epsilons (line: KC-hat)",
                      xaxis_title="1D token index", yaxis_title="epsilon (loss bin)",
                      yaxis_type="category", **figure_style(), legend_orientation="h",
                      legend_y=-0.2)
    return fig
