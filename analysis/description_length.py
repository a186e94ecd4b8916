"""Analysis 6: KC-hat vs the known description length of procedural images.

Procedural images (:mod:`karl.data.procedural`) come with the length in bits of the
program that draws them, an upper bound on their Kolmogorov complexity. Does KC-hat rise
with it? Within a family (same renderer), it should; across families the renderer's
constant differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from analysis._common import PALETTE, Exportable, figure_style, sweep_many
from analysis.human import correlation_with_ci


@dataclass
class DescriptionLengthData(Exportable):
    samples: pd.DataFrame       # family, seed, complexity, bits, kc_hat, continuous_kc
    correlations: pd.DataFrame  # family (and "all"), n, spearman, spearman_continuous, pearson
    epsilon: float = 0.05
    max_tokens: int = 0

    def to_frame(self) -> pd.DataFrame:
        return self.samples

    def __iter__(self) -> Iterator[pd.DataFrame]:
        """``samples, correlations = compute_description_length(...)`` also works."""
        return iter((self.samples, self.correlations))


def _correlations(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fam, g in [*df.groupby("family", sort=False), ("all", df)]:
        kc = correlation_with_ci(g["kc_hat"], g["bits"], n_boot=0)
        ckc = correlation_with_ci(g["continuous_kc"], g["bits"], n_boot=0)
        rows.append({"family": fam, "n": len(g), "bits_min": g["bits"].min(), "bits_max": g["bits"].max(),
                     "spearman": kc["spearman"], "spearman_continuous": ckc["spearman"],
                     "pearson": kc["pearson"], "pearson_continuous": ckc["pearson"]})
    return pd.DataFrame(rows)


def compute_description_length(model, n_per_family: int = 8, size: int | None = None, seed: int = 0,
                               epsilon: float = 0.05, families: Sequence[str] | None = None,
                               batch_size: int = 64) -> DescriptionLengthData:
    """Generate ``n_per_family`` images of each procedural family (complexity knob cycled
    0..5 for a spread of program lengths), encode at ``epsilon`` and correlate per family."""
    from karl.data import procedural

    size = size or model.image_size
    assert size == model.image_size, f"size {size} != model.image_size {model.image_size}"
    families = list(families) if families is not None else list(procedural.FAMILIES)
    rng = np.random.default_rng(seed)
    samples = []
    for fam in families:
        for i in range(n_per_family):
            c = i % (procedural.MAX_COMPLEXITY + 1)
            samples.append(procedural.generate(int(rng.integers(0, 2 ** 31)), size, family=fam, complexity=c))
    images = torch.stack([s.image for s in samples])
    sweep = sweep_many(model, images, [epsilon], batch_size=batch_size)
    df = pd.DataFrame({"family": [s.family for s in samples], "seed": [s.seed for s in samples],
                       "complexity": [s.complexity for s in samples], "bits": [s.bits for s in samples],
                       "kc_hat": sweep.kc_hat[:, 0].numpy().astype(np.int64),
                       "continuous_kc": sweep.continuous_kc[:, 0].numpy()})
    return DescriptionLengthData(samples=df, correlations=_correlations(df), epsilon=float(epsilon),
                                 max_tokens=int(model.max_tokens))


def plot_description_length(data: DescriptionLengthData, y: str = "kc_hat"):
    """Scatter of program length in bits (x, log) vs KC-hat (y), one colour per family;
    legend entries carry the within-family Spearman rho."""
    import plotly.graph_objects as go

    if y not in ("kc_hat", "continuous_kc"):
        raise ValueError(f"y must be 'kc_hat' or 'continuous_kc', got {y!r}")
    df, corr = data.samples, data.correlations.set_index("family")
    key = "spearman" if y == "kc_hat" else "spearman_continuous"
    fig = go.Figure()
    for i, (fam, g) in enumerate(df.groupby("family", sort=False)):
        rho = corr.loc[fam, key]
        fig.add_trace(go.Scatter(
            x=g["bits"], y=g[y], mode="markers", name=f"{fam} (rho {rho:.2f})" if np.isfinite(rho) else fam,
            marker=dict(color=PALETTE[i % len(PALETTE)], size=8, opacity=0.8),
            customdata=np.stack([g["complexity"], g["seed"]], -1),
            hovertemplate=(fam + "<br>%{x:.0f} bits<br>" + y + " %{y:.1f}<br>complexity %{customdata[0]}"
                           "<br>seed %{customdata[1]}<extra></extra>")))
    rho_all = corr.loc["all", key]
    fig.update_layout(
        title=(f"KC-hat (epsilon = {data.epsilon:g}) vs program length; Spearman over all = "
               f"{rho_all:.2f}" if np.isfinite(rho_all) else "KC-hat vs program length"),
        xaxis_title="description length of the program (bits)", xaxis_type="log",
        yaxis_title="KC-hat (tokens kept)" if y == "kc_hat" else "sum(1 - p)",
        yaxis_range=[-0.5, max(data.max_tokens, 1) * 1.05 + 0.5], **figure_style(),
        legend_orientation="h", legend_y=-0.2)
    return fig
