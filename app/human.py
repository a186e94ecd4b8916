"""The Analysis tab's human-complexity panel: KC-hat vs Savoias human scores.

Savoias (1,420 images) is far above the upload limit, so the panel reads a folder on the
machine that runs the app (default: ``$KARL_SAVOIAS_DIR``). The work is the report's
section 5 (:func:`analysis.human.run_human_analysis`): images streamed in batches, one
progress bar, per-category correlations with bootstrap CIs and the paper's heatmap.

The folder field reads the server's file system, so its answers ("no such folder", "not a
Savoias folder") tell a visitor which paths exist there: it is on only for an app bound to
localhost without ``--share``, or started with ``--allow-server-paths`` (``app.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import pandas as pd

from app.batch import new_download_dir
from app.components import SafeSlider
from app.errors import user_error

SAVOIAS_ENV = "KARL_SAVOIAS_DIR"
N_BOOT = 1000


def _relative_paths(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Paths relative to the data-set folder: the download does not reveal the server's layout."""
    out = df.copy()
    out["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else Path(p).name
                   for p in out["path"]]
    return out


SERVER_PATHS_OFF = ("Reading folders on the server is off: this app is served beyond this machine "
                    "(a host other than 127.0.0.1 / localhost, or --share), and the field would tell "
                    "any visitor which server paths exist. Start it with --allow-server-paths to use "
                    "this panel there, or run the study in a terminal: python -m analysis.human_study "
                    "SAVOIAS_DIR.")


def _per_category(value) -> int | None:
    """The panel's "images per category" by the app's one rule: empty or 0 -> all."""
    from app import inference as inf
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    n = inf._finite_number(value, "images per category", "(0: all)")
    if n < 0:
        raise inf.InputError(f"images per category must be 0 (all) or more, got {n:g}")
    return int(round(n)) or None


def human_view(model, folder: str, epsilon: float, per_category: float | None,
               progress=gr.Progress(), server_paths: bool = True):
    """-> (status markdown, Spearman table, Pearson table, bars, heatmap, KC-hat per epsilon, CSVs).

    ``server_paths=False`` (an app served beyond this machine) refuses before touching the
    file system, so the answer says nothing about which paths exist."""
    from analysis.human import (correlation_table, input_size_note, kc_by_epsilon, load_human,
                                plot_human_correlations, plot_human_heatmap, run_human_analysis,
                                subsample_per_category)
    from analysis.human_study import saturation, saturation_note, wide_correlations
    from analysis.savoias import SavoiasLayoutError
    from app import inference as inf

    if not server_paths:
        raise gr.Error(SERVER_PATHS_OFF, print_exception=False)
    folder = (folder or "").strip()
    if not folder:
        raise gr.Error("Enter the folder that holds Savoias' Images/ and Ground truth/ "
                       "(see docs/ANALYSIS.md for how to get it).", print_exception=False)
    root = Path(folder).expanduser()
    try:  # bad input: the message as it is
        eps, _, _ = inf.check_request(model, epsilon, None)
        n = _per_category(per_category)
        df = load_human(root)  # a Savoias folder, or a CSV of scores
        if n:
            df = subsample_per_category(df, n)
    except (SavoiasLayoutError, FileNotFoundError, ValueError) as err:
        raise gr.Error(str(err), print_exception=False) from None
    try:
        report = lambda done, total: progress(done / max(total, 1), desc=f"{done}/{total} images")  # noqa: E731
        hdf, corr = run_human_analysis(model, df, eps, n_boot=N_BOOT, show_progress=False,
                                       on_progress=report)
    except Exception as err:
        raise user_error(err) from None
    k_max = int(model.max_tokens)
    out = new_download_dir("human")
    base = root if root.is_dir() else root.parent
    files = [out / "human_scores.csv", out / "human_correlations.csv", out / "human_correlations_wide.csv"]
    _relative_paths(hdf, base).to_csv(files[0], index=False)
    corr.to_csv(files[1], index=False)
    wide_correlations(corr).to_csv(files[2], index=False)
    lines = [f"**{len(hdf)} images in {hdf['category'].nunique()} categories**, KC-hat and sum(1 - p) "
             f"at several epsilons (heatmap: epsilon {eps:g}); correlations within each category, 95% "
             f"bootstrap CIs ({N_BOOT} resamples).", input_size_note(hdf),
             saturation_note(saturation(hdf, k_max), k_max)] + [f"- {n}" for n in hdf.attrs.get("notes", [])]
    shown = lambda table: gr.update(value=table, visible=True)  # noqa: E731  (hidden until a result)
    return ("\n\n".join(lines), shown(correlation_table(corr, "spearman")),
            shown(correlation_table(corr, "pearson")), plot_human_correlations(corr, "spearman"),
            plot_human_heatmap(hdf, max_tokens=k_max, kc_bucket=max(1, k_max // 8)),
            shown(kc_by_epsilon(hdf)), [str(f) for f in files])


def build_human_panel(model, run_model: dict, server_paths: bool = False) -> None:
    """The panel's components and event, inside the current Blocks context (an Analysis tab).

    ``server_paths``: whether the folder field may read the server's file system (see
    :data:`SERVER_PATHS_OFF`); off, the field is disabled and not pre-filled."""
    from app.components import SafeNumber

    bins = list(model.config.loss_bins)
    with gr.Accordion("Human complexity (Savoias)", open=False, elem_id="human-panel"):
        gr.Markdown("Correlate KC-hat with human complexity scores per category (the paper's Fig. 10). "
                    "Savoias is not bundled: download it (docs/ANALYSIS.md) and enter its folder on "
                    "the machine running this app. About a minute for all 1,420 images on a CPU "
                    "with the bundled model.")
        if not server_paths:
            gr.Markdown(SERVER_PATHS_OFF, elem_id="human-off")
        with gr.Row():
            h_folder = gr.Textbox(value=os.environ.get(SAVOIAS_ENV, "") if server_paths else "",
                                  label="Savoias folder (on this machine)", interactive=server_paths,
                                  placeholder="/path/to/Savoias-Dataset", elem_id="human-folder", scale=3)
            h_eps = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon", scale=2)
            h_n = SafeNumber(0, precision=0, minimum=0, label="images per category (0: all)", scale=1)
        h_run = gr.Button("Correlate with human scores", variant="primary", interactive=server_paths)
        h_status = gr.Markdown(elem_id="human-status")
        # Hidden until there is a result: an empty Dataframe shows the headers "1 2 3".
        h_spear = gr.Dataframe(label="Spearman r with the human score [95% CI]", interactive=False,
                               visible=False, elem_id="human-spearman")
        h_pear = gr.Dataframe(label="Pearson r with the human score [95% CI]", interactive=False,
                              visible=False, elem_id="human-pearson")
        with gr.Row():
            h_bars = gr.Plot(label="Spearman r per category")
            h_heat = gr.Plot(label="human score vs KC-hat bucket")
        h_eps_table = gr.Dataframe(label="mean KC-hat per category at several epsilons", interactive=False,
                                   visible=False, elem_id="human-by-epsilon")
        h_files = gr.File(label="CSV downloads", interactive=False, file_count="multiple")
    h_run.click(lambda f, e, n, progress=gr.Progress(): human_view(model, f, e, n, progress, server_paths),
                inputs=[h_folder, h_eps, h_n],
                outputs=[h_status, h_spear, h_pear, h_bars, h_heat, h_eps_table, h_files],
                api_visibility="private", **run_model)
