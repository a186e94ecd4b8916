"""Analysis 2: KC-hat as a function of the requested reconstruction error epsilon.

For one image it is a staircase that falls as epsilon grows; over a data set we show the
mean and the interquartile band. Every (image, epsilon) pair is a row of a batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from analysis._common import PALETTE, THRESHOLD_COLOR, Exportable, figure_style, mark_x, sweep_many
from karl.config import LOSS_BINS


@dataclass
class KCCurve(Exportable):
    epsilons: np.ndarray       # [E]
    kc_hat: np.ndarray         # [N, E] kept-token counts
    continuous_kc: np.ndarray  # [N, E] expected kept tokens, sum(1 - p)
    budget: int = 0            # tokens available (K)
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_sweep(cls, sweep, names: list[str] | None = None) -> "KCCurve":
        """A ``karl.model.Sweep`` (``KARL.sweep``) -> its KC-hat and continuous KC arrays [N, E]."""
        return cls(epsilons=sweep.epsilons.double().cpu().numpy(),
                   kc_hat=sweep.kc_hat.cpu().numpy().astype(np.int64),
                   continuous_kc=sweep.continuous_kc.cpu().numpy(), budget=int(sweep.budget),
                   names=list(names or []))

    def summary(self) -> pd.DataFrame:
        """Per epsilon: mean, quartiles and min/max of KC-hat over the images."""
        q = np.percentile(self.kc_hat, [0, 25, 50, 75, 100], axis=0)
        return pd.DataFrame({"epsilon": self.epsilons, "kc_mean": self.kc_hat.mean(0),
                             "kc_min": q[0], "kc_q25": q[1], "kc_median": q[2], "kc_q75": q[3],
                             "kc_max": q[4], "continuous_kc_mean": self.continuous_kc.mean(0)})

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (image, epsilon)."""
        n, e = self.kc_hat.shape
        names = self.names if len(self.names) == n else [str(i) for i in range(n)]
        return pd.DataFrame({"image": np.repeat(names, e), "epsilon": np.tile(self.epsilons, n),
                             "kc_hat": self.kc_hat.reshape(-1),
                             "continuous_kc": self.continuous_kc.reshape(-1)})


def compute_kc_curve(model, images: Tensor, epsilons: Sequence[float] = LOSS_BINS,
                     budget: int | None = None, batch_size: int = 64,
                     names: list[str] | None = None, show_progress: bool = False) -> KCCurve:
    """KC-hat and continuous KC of ``images`` [N, 3, H, W] at every epsilon -> arrays [N, E]."""
    if images.ndim == 3:
        images = images[None]
    sweep = sweep_many(model, images, list(epsilons), budget=budget, batch_size=batch_size,
                       show_progress=show_progress)
    return KCCurve.from_sweep(sweep, names)


def plot_kc_curve(curve: KCCurve, mark_epsilon: float | None = None, names: list[str] | None = None):
    """One image: its KC-hat staircase (and continuous KC); several: mean and quartile band.

    ``names`` (or ``curve.names``) label individual images; up to 8 named images are drawn
    as thin lines over the band.
    """
    import plotly.graph_objects as go

    eps, kc = curve.epsilons, curve.kc_hat
    names = names if names is not None else (curve.names or None)
    if kc.shape[0] == 1:
        label = names[0] if names else "image"
        traces = [go.Scatter(x=eps, y=kc[0], mode="lines+markers", name=f"KC-hat ({label})",
                             line=dict(shape="hv", color=PALETTE[0])),
                  go.Scatter(x=eps, y=curve.continuous_kc[0], mode="lines", name="sum(1 - p)",
                             line=dict(dash="dot", color=PALETTE[2]))]
        title = f"KC-hat vs epsilon: {label}"
    else:
        s = curve.summary()
        traces = [go.Scatter(x=eps, y=s.kc_q75, mode="lines", line=dict(width=0), showlegend=False,
                             hoverinfo="skip"),
                  go.Scatter(x=eps, y=s.kc_q25, mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(38,70,83,0.2)", name="25-75% of images"),
                  go.Scatter(x=eps, y=s.kc_mean, mode="lines+markers", name="mean KC-hat",
                             line=dict(color=PALETTE[0], width=3))]
        if names and len(names) == kc.shape[0] and kc.shape[0] <= 8:
            traces += [go.Scatter(x=eps, y=kc[i], mode="lines", name=name, opacity=0.6,
                                  line=dict(shape="hv", width=1, color=PALETTE[(i + 1) % len(PALETTE)]))
                       for i, name in enumerate(names)]
        title = f"KC-hat vs epsilon over {kc.shape[0]} images"
    lo, hi = np.log10(eps.min()), np.log10(eps.max())
    ticks = [t for t in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.38) if eps.min() <= t <= eps.max()]
    # One constructor call: plotly validates each add_trace / update_layout separately.
    fig = go.Figure(traces, layout=dict(
        title=title, xaxis_title="epsilon (target pixel L1)", xaxis_type="log",
        xaxis_range=[lo - 0.08, hi + 0.08], xaxis_tickvals=ticks or None,
        yaxis_title="tokens kept (KC-hat)", yaxis_range=[0, max(curve.budget, 1) * 1.05],
        legend_orientation="h", legend_y=-0.2, **figure_style()))
    if mark_epsilon is not None:
        mark_x(fig, float(mark_epsilon), f"epsilon = {mark_epsilon:g}", log_x=True, line_dash="dash",
               line_color=THRESHOLD_COLOR)
    return fig
