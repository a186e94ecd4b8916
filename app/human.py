"""The Analysis tab's human-complexity panel: KC-hat vs Savoias human scores.

Savoias (1,420 images) is far above the upload limit, so the panel reads a folder on the
machine that runs the app (default: ``$KARL_SAVOIAS_DIR``). The work is the report's
section 5 (:func:`analysis.human.run_human_analysis`): images streamed in batches, one
progress bar, per-category correlations with bootstrap CIs and the paper's heatmap.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import pandas as pd

from app.batch import new_download_dir
from app.components import SafeSlider

SAVOIAS_ENV = "KARL_SAVOIAS_DIR"
N_BOOT = 1000


def _relative_paths(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Paths relative to the data-set folder: the download does not reveal the server's layout."""
    out = df.copy()
    out["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else Path(p).name
                   for p in out["path"]]
    return out


def human_view(model, folder: str, epsilon: float, per_category: float | None,
               progress=gr.Progress()):
    """-> (status markdown, Spearman table, Pearson table, bars, heatmap, KC-hat per epsilon, CSVs)."""
    from analysis.human import (correlation_table, input_size_note, kc_by_epsilon, load_human,
                                plot_human_correlations, plot_human_heatmap, run_human_analysis,
                                subsample_per_category)
    from analysis.savoias import SavoiasLayoutError
    from app import inference as inf

    folder = (folder or "").strip()
    if not folder:
        raise gr.Error("Enter the folder that holds Savoias' Images/ and Ground truth/ "
                       "(see docs/ANALYSIS.md for how to get it).", print_exception=False)
    root = Path(folder).expanduser()
    try:  # bad input: the message as it is
        eps, _, _ = inf.check_request(model, epsilon, None)
        df = load_human(root)  # a Savoias folder, or a CSV of scores
        if per_category:
            df = subsample_per_category(df, int(per_category))
    except (SavoiasLayoutError, FileNotFoundError, ValueError) as err:
        raise gr.Error(str(err), print_exception=False) from None
    try:
        report = lambda done, total: progress(done / max(total, 1), desc=f"{done}/{total} images")  # noqa: E731
        hdf, corr = run_human_analysis(model, df, eps, n_boot=N_BOOT, show_progress=False,
                                       on_progress=report)
    except Exception as err:
        from app.ui import _user_error  # lazy: app.ui imports this module
        raise _user_error(err) from None
    k_max = int(model.max_tokens)
    out = new_download_dir("human")
    base = root if root.is_dir() else root.parent
    files = [out / "human_scores.csv", out / "human_correlations.csv"]
    _relative_paths(hdf, base).to_csv(files[0], index=False)
    corr.to_csv(files[1], index=False)
    lines = [f"**{len(hdf)} images in {hdf['category'].nunique()} categories**, KC-hat at epsilon "
             f"{eps:g}; correlations within each category, 95% bootstrap CIs ({N_BOOT} resamples).",
             input_size_note(hdf)] + [f"- {n}" for n in hdf.attrs.get("notes", [])]
    return ("\n\n".join(lines), correlation_table(corr, "spearman"), correlation_table(corr, "pearson"),
            plot_human_correlations(corr, "spearman"),
            plot_human_heatmap(hdf, max_tokens=k_max, kc_bucket=max(1, k_max // 8)),
            kc_by_epsilon(hdf), [str(f) for f in files])


def build_human_panel(model, run_model: dict) -> None:
    """The panel's components and event, inside the current Blocks context (an Analysis tab)."""
    bins = list(model.config.loss_bins)
    with gr.Accordion("Human complexity (Savoias)", open=False, elem_id="human-panel"):
        gr.Markdown("Correlate KC-hat with human complexity scores per category (the paper's Fig. 10). "
                    "Savoias is not bundled: download it (docs/ANALYSIS.md) and enter its folder on "
                    "the machine running this app. About a minute for all 1,420 images on a CPU "
                    "with the bundled model.")
        with gr.Row():
            h_folder = gr.Textbox(value=os.environ.get(SAVOIAS_ENV, ""), label="Savoias folder (on this machine)",
                                  placeholder="/path/to/Savoias-Dataset", elem_id="human-folder", scale=3)
            h_eps = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon", scale=2)
            h_n = gr.Number(0, precision=0, minimum=0, label="images per category (0: all)", scale=1)
        h_run = gr.Button("Correlate with human scores", variant="primary")
        h_status = gr.Markdown(elem_id="human-status")
        h_spear = gr.Dataframe(label="Spearman r with the human score [95% CI]", interactive=False)
        h_pear = gr.Dataframe(label="Pearson r with the human score [95% CI]", interactive=False)
        with gr.Row():
            h_bars = gr.Plot(label="Spearman r per category")
            h_heat = gr.Plot(label="human score vs KC-hat bucket")
        h_eps_table = gr.Dataframe(label="mean KC-hat per category at several epsilons", interactive=False)
        h_files = gr.File(label="CSV downloads", interactive=False, file_count="multiple")
    h_run.click(lambda f, e, n, progress=gr.Progress(): human_view(model, f, e, n, progress),
                inputs=[h_folder, h_eps, h_n],
                outputs=[h_status, h_spear, h_pear, h_bars, h_heat, h_eps_table, h_files],
                api_visibility="private", **run_model)
