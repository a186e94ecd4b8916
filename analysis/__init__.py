"""The paper's AIT analyses: ``compute_*`` -> dataclasses of arrays, ``plot_*`` -> plotly figures.

Every dataclass has ``to_frame()`` (pandas) and ``save_csv(path)``. The same figures serve
the app and the report (``python -m analysis.report``). Imports go one way:
``app -> analysis -> karl``; plotly is imported only inside ``plot_*``.
"""

from analysis.description_length import (DescriptionLengthData, compute_description_length,
                                         plot_description_length)
from analysis.gallery import GalleryData, bucket_index, compute_gallery, gallery_html
from analysis.halting import HaltingData, compute_halting, plot_halting, plot_halting_heatmap
from analysis.human import (SAVOIAS_CATEGORIES, SavoiasLayoutError, classic_proxies,
                            compute_human_correlations, compute_human_measures, compute_model_complexity,
                            correlation_table, correlation_with_ci, kc_by_epsilon, load_human,
                            load_savoias, load_scores_csv, plot_human_correlations, plot_human_heatmap)
from analysis.kc_curve import KCCurve, compute_kc_curve, plot_kc_curve
from analysis.structure_noise import (DeltaData, TokenSweep, compute_delta, compute_token_sweep,
                                      plot_kc_vs_delta, plot_token_sweep, standard_probe_images)

__all__ = [
    "HaltingData", "compute_halting", "plot_halting", "plot_halting_heatmap",
    "KCCurve", "compute_kc_curve", "plot_kc_curve",
    "TokenSweep", "DeltaData", "standard_probe_images", "compute_token_sweep", "compute_delta",
    "plot_token_sweep", "plot_kc_vs_delta",
    "GalleryData", "compute_gallery", "gallery_html", "bucket_index",
    "SAVOIAS_CATEGORIES", "SavoiasLayoutError", "load_savoias", "load_scores_csv", "load_human",
    "classic_proxies", "compute_model_complexity", "compute_human_measures", "correlation_with_ci",
    "compute_human_correlations", "correlation_table", "kc_by_epsilon",
    "plot_human_heatmap", "plot_human_correlations",
    "DescriptionLengthData", "compute_description_length", "plot_description_length",
    "build_report",
]


def build_report(*args, **kwargs):
    """See :func:`analysis.report.build_report` (imported lazily: it pulls in plotly)."""
    from analysis.report import build_report as _build
    return _build(*args, **kwargs)
