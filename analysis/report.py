"""One self-contained HTML report of every analysis, plus a CSV per analysis.

    python -m analysis.report --checkpoint assets/checkpoints/karl_cpu_tae --data corpus --out report.html
    python -m analysis.report --checkpoint DIR --data path/to/images --human path/to/Savoias --out r.html

``--data``: any data spec (``karl/data/spec.py``, as ``karl-eval --data``): a folder of images,
``procedural`` (generated images), ``corpus`` (the offline photo corpus in ``data_cache/corpus``,
built on first use), an image file, a glob, ``imagefolder:PATH`` or a Hugging Face name, read by
``karl.data.imageset.open_images`` (the same images as every tool). At most ``--max-images``
images (default 64; a larger set gives its ``--seed`` subset) are used, so the report builds on a
CPU in minutes.
Plotly's JavaScript is inlined once, so the file works offline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analysis.description_length import compute_description_length, plot_description_length
from analysis.gallery import compute_gallery, gallery_html
from analysis.halting import compute_halting, plot_halting, plot_halting_heatmap
from analysis.human import plot_human_correlations, plot_human_heatmap
from analysis.kc_curve import compute_kc_curve, plot_kc_curve
from analysis.structure_noise import (compute_delta, compute_token_sweep, plot_kc_vs_delta, plot_token_sweep,
                                      standard_probe_images)
from analysis._common import check_images, epsilon_arg, epsilon_row, epsilons_arg
from analysis.gallery import _thumb_uri
from analysis.human import DEFAULT_EPSILONS, PROXY_SIZE, load_human, subsample_per_category
from analysis.data import load_data
from karl.checkpoint import CheckpointError
from karl.data.spec import DataSpecError, parse_data_spec
from karl.model_args import add_model_args, load_model_from_args

SECTIONS = {
    "model": "Model and data",
    "halting": "1. Halting probability per token",
    "kc_curve": "2. KC-hat vs epsilon",
    "structure": "3. Structure vs noise",
    "gallery": "4. Data-set complexity gallery",
    "human": "5. Human complexity",
    "description": "6. Known description length",
    "tokens": "7. What each token encodes",
}


# ----------------------------------------------------------------------------- HTML pieces

def _fig_html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True},
                       default_height=420)


def _table(df: pd.DataFrame, max_rows: int = 40) -> str:
    shown = df if len(df) <= max_rows else df.head(max_rows)
    note = "" if len(df) <= max_rows else f"<p class='note'>first {max_rows} of {len(df)} rows (all in the CSV)</p>"
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="num",
                         na_rep="n/a") + note


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _csv_note(paths: list[Path], out_dir: Path) -> str:
    rel = ", ".join(f"<code>{html.escape(str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p))}</code>"
                    for p in paths)
    return f"<p class='note'>Data: {rel}</p>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:2px solid #264653;padding-bottom:0.2em;margin-top:2em}
table.num{border-collapse:collapse;font-size:13px;margin:0.5em 0}
table.num td,table.num th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
.note{color:#666;font-size:13px} .probe{display:inline-block;text-align:center;margin:4px;font-size:12px}
.probe img{image-rendering:pixelated;display:block} nav a{margin-right:1em}
"""


def _page(title: str, body: str) -> str:
    import plotly.offline

    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"</head><body>{body}</body></html>")


# ----------------------------------------------------------------------------- the report

def _human_section(model, human_df: pd.DataFrame, save, out_dir: Path, *, epsilon: float,
                   epsilons: Sequence[float], proxy_size: int | None, n_boot: int, seed: int,
                   batch_size: int, k_max: int, bucket_size: int) -> list[str]:
    """HTML parts of section 5: measures streamed over the data set, correlations per category."""
    from analysis.human import (correlation_table, input_size_note, kc_by_epsilon,
                                run_human_analysis)
    from analysis.human_study import saturation, saturation_note, wide_correlations

    hdf, corr = run_human_analysis(model, human_df, epsilon, epsilons, proxy_size, n_boot, seed,
                                   batch_size)
    by_eps, sat = kc_by_epsilon(hdf), saturation(hdf, k_max)
    paths = [save(hdf, "human_scores.csv"), save(corr, "human_correlations.csv"),
             save(wide_correlations(corr), "human_correlations_wide.csv"),
             save(by_eps, "human_kc_by_epsilon.csv"), save(sat, "human_saturation.csv")]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in hdf.attrs.get("notes", []))
    per_cat = "".join(_fig_html(plot_human_heatmap(hdf, max_tokens=k_max, kc_bucket=bucket_size,
                                                   category=c)) for c in hdf["category"].unique())
    return [f"<p>{len(hdf)} images in {hdf['category'].nunique()} categories. Correlations are "
            f"within a category (scores are rescaled per category), with 95% bootstrap CIs "
            f"({n_boot} resamples); KC-hat and sum(1 - p) at each epsilon, side by side with the "
            "classic proxies.</p>",
            f"<p class='note'>{html.escape(input_size_note(hdf))}</p>",
            f"<p class='note'>{html.escape(saturation_note(sat, k_max))}</p>",
            f"<ul class='note'>{notes}</ul>" if notes else "",
            "<h3>Spearman r with the human score [95% CI]</h3>", _table(correlation_table(corr, "spearman")),
            "<h3>Pearson r with the human score [95% CI]</h3>", _table(correlation_table(corr, "pearson")),
            _fig_html(plot_human_correlations(corr, "spearman")),
            "<h3>The paper's comparison: human score vs KC-hat bucket</h3>",
            _fig_html(plot_human_heatmap(hdf, max_tokens=k_max, kc_bucket=bucket_size)),
            _details("Heatmap per category", per_cat),
            "<h3>Mean KC-hat per category at several epsilons</h3>", _table(by_eps),
            _details("All correlations (with p-values)", _table(corr, 200)), _csv_note(paths, out_dir)]


@dataclass(frozen=True)
class _Run:
    """What every section reads: the model, the data set, the shared settings and the CSV folder."""
    model: Any
    images: Tensor
    names: list[str]
    epsilon: float
    seed: int
    batch_size: int
    bucket_size: int
    csv_dir: Path
    out_dir: Path

    def save(self, obj, name: str) -> Path:
        path = self.csv_dir / name
        (obj if isinstance(obj, pd.DataFrame) else obj.to_frame()).to_csv(path, index=False)
        return path


def _section(key: str, *body: str) -> str:
    return f"<section id='{key}'><h2>{html.escape(SECTIONS[key])}</h2>{''.join(body)}</section>"


def _model_section(run: _Run, model_desc: str, data_desc: str) -> list[str]:
    """Section "Model and data": what was measured, on what, when."""
    model, cfg = run.model, run.model.config
    size, k_max = int(model.image_size), int(model.max_tokens)
    info = pd.DataFrame({"item": ["model", "image size", "max tokens (K)", "width / layers",
                                  "base tokenizer", "quantised", "data", "epsilon", "generated"],
                         "value": [model_desc or type(model).__name__, f"{size} x {size}", k_max,
                                   f"{cfg.width} / {cfg.encoder_layers}+{cfg.decoder_layers}",
                                   cfg.base.kind, cfg.quantize, data_desc or f"{len(run.names)} images",
                                   run.epsilon, _dt.datetime.now().isoformat(timespec="seconds")]})
    return [info.to_html(index=False, border=0, classes="num"),
            "<p class='note'>KC-hat(x; epsilon) is the number of 1D tokens KARL keeps (halting "
            f"probability <= {cfg.halt_threshold:g}) to reconstruct x within pixel L1 epsilon; "
            "sum(1 - p) is its continuous version (expected kept tokens).</p>"]


def _halting_section(run: _Run, rep: int) -> list[str]:
    """Section 1: halting per token for the representative image ``rep``."""
    image, epsilon = run.images[rep], run.epsilon
    halting = compute_halting(run.model, image)
    p_halt = run.save(halting, "halting.csv")
    return [f"<p>Image <b>{html.escape(run.names[rep])}</b> (median KC-hat of the data set at epsilon "
            f"{epsilon:g}): <img src='{_thumb_uri(image.cpu(), 96)}' width=96 height=96 "
            "style='vertical-align:middle;image-rendering:pixelated'></p>",
            _fig_html(plot_halting(halting, epsilon)), _fig_html(plot_halting_heatmap(halting)),
            _details("KC-hat of this image per epsilon", _table(pd.DataFrame(
                {"epsilon": halting.epsilons, "kc_hat": halting.kc_hat,
                 "continuous_kc": halting.continuous_kc}))),
            _csv_note([p_halt], run.out_dir)]


def _kc_curve_section(run: _Run, curve, rep: int) -> list[str]:
    """Section 2: KC-hat vs epsilon of the representative image, then of the whole set."""
    single = compute_kc_curve(run.model, run.images[rep:rep + 1], names=[run.names[rep]])
    p_curve, p_sum = run.save(curve, "kc_curve.csv"), run.save(curve.summary(), "kc_curve_summary.csv")
    named = run.names if len(run.names) <= 8 else None
    return [_fig_html(plot_kc_curve(single, mark_epsilon=run.epsilon)),
            _fig_html(plot_kc_curve(curve, mark_epsilon=run.epsilon, names=named)),
            _table(curve.summary(), 25), _csv_note([p_curve, p_sum], run.out_dir)]


def _structure_section(run: _Run) -> list[str]:
    """Section 3: structure vs noise on the standard probes, then Delta over probes and data set."""
    model, names = run.model, run.names
    probes, probe_names = standard_probe_images(int(model.image_size), seed=run.seed)
    sweep = compute_token_sweep(model, probes, probe_names, batch_size=run.batch_size)
    delta = compute_delta(model, torch.cat([probes, run.images]), epsilon=run.epsilon,
                          names=probe_names + names, batch_size=run.batch_size, show_progress=True)
    labels = probe_names + ["data set"] * len(names)
    p_sweep, p_delta = run.save(sweep, "token_sweep.csv"), run.save(delta, "delta.csv")
    thumbs = "".join(f"<span class='probe'><img src='{_thumb_uri(probes[i], 72)}' width=72 height=72>"
                     f"{html.escape(n)}</span>" for i, n in enumerate(probe_names))
    sweep_table = sweep.to_frame().pivot(index="image", columns="tokens", values="l1").reset_index()
    sweep_table.columns = ["image"] + [f"L1 @ {c}" for c in sweep_table.columns[1:]]
    return [f"<div>{thumbs}</div>", _fig_html(plot_token_sweep(sweep)), _table(sweep_table),
            f"<p>Delta = L1({delta.small_budget} tokens) - L1({delta.full_budget} tokens): how much "
            "the extra tokens help. Noise: high KC-hat, Delta ~ 0; simple structure: low KC-hat.</p>",
            _fig_html(plot_kc_vs_delta(delta, labels)), _table(delta.to_frame().head(len(probe_names))),
            _csv_note([p_sweep, p_delta], run.out_dir)]


def _gallery_section(run: _Run, kc_eps: np.ndarray) -> list[str]:
    """Section 4: the data set bucketed by KC-hat at epsilon."""
    gal = compute_gallery(kc_eps, run.bucket_size, run.names)
    p_gal = run.save(gal, "gallery.csv")
    counts = gal.to_frame().groupby(["bucket_low", "bucket_high"]).size().reset_index(name="images")
    title = f"KC-hat at epsilon {run.epsilon:g}, buckets of {run.bucket_size} tokens"
    return [gallery_html(run.images.cpu(), kc_eps, run.bucket_size, run.names, title=title),
            _table(counts), _csv_note([p_gal], run.out_dir)]


def _human_or_hint_section(run: _Run, human_df: pd.DataFrame | None, *, n_boot: int,
                           epsilons: Sequence[float], proxy_size: int | None) -> list[str]:
    """Section 5: correlations with human scores, or how to get them when none were given."""
    if human_df is None or not len(human_df):
        return ["<p class='note'>No human scores given. Pass <code>--human PATH</code> "
                "(the Savoias folder or a CSV of scores) to correlate KC-hat with human "
                "complexity; see docs/ANALYSIS.md.</p>"]
    return _human_section(run.model, human_df, run.save, run.out_dir, epsilon=run.epsilon,
                          epsilons=epsilons, proxy_size=proxy_size, n_boot=n_boot, seed=run.seed,
                          batch_size=run.batch_size, k_max=int(run.model.max_tokens),
                          bucket_size=run.bucket_size)


def _description_section(run: _Run, n_per_family: int) -> list[str]:
    """Section 6: KC-hat against the known description length of procedural images."""
    dl = compute_description_length(run.model, n_per_family=n_per_family, size=int(run.model.image_size),
                                    seed=run.seed, epsilon=run.epsilon, batch_size=run.batch_size)
    p_dl = run.save(dl.samples, "description_length.csv")
    p_dlc = run.save(dl.correlations, "description_length_correlations.csv")
    return [_fig_html(plot_description_length(dl)), _table(dl.correlations),
            _csv_note([p_dl, p_dlc], run.out_dir)]


def build_report(model, images: Tensor, names: Sequence[str], out_html: str | Path,
                 human_df: pd.DataFrame | None = None, *, epsilon: float = 0.05,
                 csv_dir: str | Path | None = None, n_per_family: int = 6, seed: int = 0,
                 n_boot: int = 1000, bucket_size: int | None = None, batch_size: int = 64,
                 title: str = "KARL complexity report", model_desc: str = "",
                 data_desc: str = "", human_epsilons: Sequence[float] = DEFAULT_EPSILONS,
                 proxy_size: int | None = PROXY_SIZE) -> Path:
    """Run every analysis on ``images`` [N, 3, S, S] (S = model.image_size) and write the report.

    Args:
        human_df: optional human scores, DataFrame(path, category, human_score) as returned
            by :func:`analysis.human.load_savoias` / ``load_scores_csv``; KC-hat (also at
            ``human_epsilons``) and the classic proxies (on the ``proxy_size`` centre crop)
            are computed here, streamed in batches, when the frame lacks them.
        csv_dir: where the CSVs go (default: ``<out stem>_data/`` next to the HTML).
        bucket_size: KC-hat bucket width of the gallery and the heatmap (default max_tokens / 8).

    Returns the path of the HTML file.
    """
    out_html = Path(out_html)
    csv_dir = Path(csv_dir) if csv_dir is not None else out_html.parent / f"{out_html.stem}_data"
    csv_dir.mkdir(parents=True, exist_ok=True)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    images = check_images(images, model.image_size)
    names = list(names)
    assert len(names) == images.shape[0], f"{len(names)} names for {images.shape[0]} images"
    run = _Run(model, images, names, epsilon, seed, batch_size,
               bucket_size or max(1, int(model.max_tokens) // 8), csv_dir, out_html.parent)

    # The data-set curve (section 2) first: it picks the representative image of section 1.
    curve = compute_kc_curve(model, images, batch_size=batch_size, names=names, show_progress=True)
    kc_eps = curve.kc_hat[:, epsilon_row(curve.epsilons, epsilon)]   # the bin encode rounds epsilon to
    rep = int(np.argsort(kc_eps, kind="stable")[len(kc_eps) // 2])  # median KC-hat image
    # Built in page order, each when its turn comes (the timestamp is taken after the curve).
    sections = {
        "model": lambda: _model_section(run, model_desc, data_desc),
        "halting": lambda: _halting_section(run, rep),
        "kc_curve": lambda: _kc_curve_section(run, curve, rep),
        "structure": lambda: _structure_section(run),
        "gallery": lambda: _gallery_section(run, kc_eps),
        "human": lambda: _human_or_hint_section(run, human_df, n_boot=n_boot, epsilons=human_epsilons,
                                                proxy_size=proxy_size),
        "description": lambda: _description_section(run, n_per_family),
        "tokens": lambda: _tokens_section(model, images[rep], names[rep], epsilon, run.save, run.out_dir),
    }
    # SECTIONS (titles, page order) and these builders are one list in two halves: a section in
    # one and not the other would silently vanish from the page (issue 24), so they must agree.
    assert list(sections) == list(SECTIONS), f"report sections {list(sections)} vs titles {list(SECTIONS)}"
    nav = " ".join(f"<a href='#{k}'>{html.escape(v)}</a>" for k, v in SECTIONS.items())
    parts = [f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>"]
    from tqdm.auto import tqdm
    for key in tqdm(SECTIONS, desc="report"):
        parts.append(_section(key, *sections[key]()))
    out_html.write_text(_page(title, "".join(parts)), encoding="utf-8")
    return out_html


def _tokens_section(model, image: Tensor, name: str, epsilon: float, save, out_dir: Path,
                    max_maps: int = 64) -> list[str]:
    """HTML parts of section 7 (analysis/tokens.py): film strip, error curve, token maps."""
    from analysis.tokens import (compute_progressive, compute_token_maps, plot_map_agreement,
                                 plot_progressive, plot_progressive_strip, plot_segmentation,
                                 plot_token_maps)

    pg = compute_progressive(model, image, epsilon)
    tm = compute_token_maps(model, image, epsilon, max_maps=max_maps)
    paths = [save(pg, "tokens_progressive.csv"), save(tm, "token_maps.csv")]
    sampled = f" ({html.escape(tm.notes[0])})" if tm.notes else ""
    return [f"<p>Image <b>{html.escape(name)}</b> (as in section 1), epsilon {epsilon:g}: KC-hat "
            f"{tm.kc_hat}. The program (its kept tokens, in order) decoded with its first 1, 2, 4, "
            "... tokens; then, per token, how much each pixel changes when that token alone is "
            f"removed (each map scaled to its own maximum){sampled}, the token that explains each "
            "pixel most, and where this agrees with the decoder's attention to the token. "
            "Definitions: docs/ANALYSIS.md.</p>",
            _fig_html(plot_progressive_strip(pg)), _fig_html(plot_progressive(pg)),
            _fig_html(plot_token_maps(tm)), _fig_html(plot_segmentation(tm)),
            _fig_html(plot_map_agreement(tm)) if tm.attention is not None and len(tm.tokens) else "",
            _details("Per-token table", _table(tm.to_frame(), 64)), _csv_note(paths, out_dir)]


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--data", default="corpus", help="image folder, 'procedural[:N]', 'corpus' (default), "
                    "image file, glob, imagefolder:PATH or a Hugging Face name (karl/data/spec.py)")
    ap.add_argument("--max-images", type=int, default=64)
    ap.add_argument("--human", help="Savoias root folder or a CSV of human scores")
    ap.add_argument("--human-images", help="image root for the paths of a --human CSV (default: its folder)")
    ap.add_argument("--max-human-images", type=int, default=None,
                    help="at most this many images per human category (seeded subset)")
    ap.add_argument("--human-strict", action="store_true",
                    help="stop when a Savoias image is missing (default: skip it, with one warning)")
    ap.add_argument("--human-epsilons", type=epsilons_arg, default=DEFAULT_EPSILONS,
                    help="epsilons at which KC-hat is also reported for the human scores "
                    f"(default {','.join(f'{e:g}' for e in DEFAULT_EPSILONS)})")
    ap.add_argument("--proxy-size", type=int, default=PROXY_SIZE,
                    help=f"centre-crop side of the classic proxies (default {PROXY_SIZE}; 0: original images)")
    ap.add_argument("--out", default="report.html")
    ap.add_argument("--csv-dir", help="where the CSVs go (default: <out stem>_data/)")
    ap.add_argument("--epsilon", type=epsilon_arg, default=0.05)
    ap.add_argument("--n-per-family", type=int, default=6)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    try:  # first: a wrong spec or folder fails before anything slow runs
        data = parse_data_spec(args.data)
    except DataSpecError as err:
        print(f"analysis.report: error: --data {err}", file=sys.stderr)
        return 2
    human_df = None
    if args.human:
        try:
            human_df = load_human(args.human, args.human_images, strict=args.human_strict)
        except (FileNotFoundError, ValueError) as err:  # not Savoias, missing images (strict), bad CSV
            print(f"analysis.report: error: {err}", file=sys.stderr)
            return 2
        if args.max_human_images:
            human_df = subsample_per_category(human_df, args.max_human_images, args.seed)
    try:
        model, model_desc = load_model_from_args(args)
    except CheckpointError as err:  # names nothing, untrusted .pth, damaged weights
        print(f"analysis.report: error: {err}", file=sys.stderr)
        return 2
    try:
        images, names, data_desc = load_data(data, model.image_size, args.max_images, args.seed)
    except (DataSpecError, FileNotFoundError) as err:  # names nothing, nothing readable
        print(f"analysis.report: error: --data {err}", file=sys.stderr)
        return 2
    out = build_report(model, images, names, args.out, human_df, epsilon=args.epsilon,
                       csv_dir=args.csv_dir, n_per_family=args.n_per_family, seed=args.seed,
                       n_boot=args.bootstrap, batch_size=args.batch_size, model_desc=model_desc,
                       data_desc=data_desc, human_epsilons=args.human_epsilons,
                       proxy_size=args.proxy_size or None)
    csv_dir = Path(args.csv_dir) if args.csv_dir else out.parent / (out.stem + "_data")
    if human_df is not None:  # the per-category table in the terminal too, not only in the HTML
        from analysis.human_study import summary_text
        hdf = pd.read_csv(csv_dir / "human_scores.csv")
        hdf.attrs.update(epsilon=args.epsilon, model_input=int(model.image_size),
                         proxy_size=args.proxy_size or None)
        print(summary_text(hdf, pd.read_csv(csv_dir / "human_correlations.csv"), int(model.max_tokens)))
    print(f"wrote {out} (CSVs in {csv_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
