"""Plotly figures as the app shows them: fitted to a half-width column, and the placeholder
shown before the first result. Nothing here runs a model."""

from __future__ import annotations

import functools

from analysis._common import figure_style

__all__ = ["fit_figure", "placeholder_figure"]


def fit_figure(fig, max_legend_rows: int = 6):
    """Keep a plotly figure readable in a half-width column: a short title (room above the
    plot for each of its ``<br>`` lines), and a legend that moves to the right in small type
    when it would otherwise take rows of the plot."""
    lines = (fig.layout.title.text or "").count("<br>")
    fig.update_layout(title_font_size=14, margin=dict(l=50, r=20, t=50 + 20 * lines, b=50))
    entries = [t for t in fig.data if getattr(t, "showlegend", False) is not False and getattr(t, "name", None)]
    if len(entries) > max_legend_rows:
        fig.update_layout(legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top",
                                      font_size=10), margin_r=150)
        for t in entries:
            if len(t.name) > 20:
                t.update(name=t.name[:18] + "…")
    return fig


@functools.lru_cache(maxsize=1)
def placeholder_figure():
    """An empty plot shown before the first result. Rendering one at page load also loads
    the plotting library then, so later the plots arrive together with the numbers.
    Built once per process (plotly figures are slow to build) and never mutated."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(**figure_style(), height=320, xaxis_visible=False, yaxis_visible=False,
                      margin=dict(l=20, r=20, t=20, b=20),
                      annotations=[dict(text="appears once an image is tokenized", showarrow=False,
                                        x=0.5, y=0.5, xref="paper", yref="paper",
                                        font=dict(color="#888", size=14))])
    return fig
