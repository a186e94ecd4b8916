"""The human-complexity study from the terminal: ``python -m analysis.human_study SAVOIAS_DIR``.

Runs only analysis 5 (:mod:`analysis.human`): no image corpus, no other report section.
At the end it prints the per-category Spearman table and which model columns are constant
or nearly so, and writes CSVs to ``--out-dir`` (default ``human_study/``):

- ``human_scores.csv``: per image (path, category, index, human_score, every measure);
- ``human_correlations.csv``: long format, one row per category and measure (Spearman and
  Pearson r, bootstrap CIs, p-values, why r is undefined);
- ``human_correlations_wide.csv``: a row per category; per measure its Spearman r (column
  ``<measure>``), its CI (``<measure> low`` / ``<measure> high``) and ``<measure> pearson``;
- ``human_saturation.csv``: per model column, the share of images at the full token budget
  and in how many categories the column is constant;
- ``human_kc_by_epsilon.csv``: mean KC-hat per category at each epsilon.

KC-hat is an integer that stops at the budget: at a small epsilon a weak model keeps every
token for most images, and such a column cannot rank them. KC-hat and continuous KC are
therefore reported at several epsilons (``--epsilons``, default 0.02, 0.05, 0.1, 0.2) side
by side with the classic proxies, and the summary names the columns that are constant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis._common import epsilon_arg, epsilons_arg
from karl.model_args import add_model_args
from analysis.human import (DEFAULT_EPSILONS, PROXY_SIZE, human_measures, input_size_note,
                            kc_by_epsilon, load_human, measure_label, run_human_analysis,
                            subsample_per_category)

NEARLY = 0.9   # a column with at least this share of images at the full budget is "nearly constant"
_SHORT = {"kc_hat": "KC", "continuous_kc": "cKC", "jpeg_bpp": "JPEG", "png_bpp": "PNG",
          "edge_density": "edges"}


def _model_columns(df: pd.DataFrame) -> list[str]:
    """The model's measure columns in report order (no plain column that an ``@`` one repeats)."""
    return [c for c in human_measures(df) if str(c).split("@")[0] in ("kc_hat", "continuous_kc")]


def saturation(df: pd.DataFrame, max_tokens: int | None = None) -> pd.DataFrame:
    """Per model column (``kc_hat``, ``continuous_kc``, ``...@e``): how many images sit at the
    full budget -> DataFrame(measure, label, at_budget, constant_categories, categories, verdict).

    ``at_budget``: share of images whose value is within half a token of ``max_tokens``
    (default ``df.attrs["max_tokens"]``, else the column's maximum). ``verdict``: "constant"
    (one value over all images), "constant within each category", "nearly constant" (>= 90%
    at the budget), "partly constant" (constant in some categories) or "".
    """
    k = max_tokens or df.attrs.get("max_tokens")
    groups = [g for _, g in df.groupby("category", sort=False)] if "category" in df.columns else [df]
    rows = []
    for m in _model_columns(df):
        x = df[m].to_numpy(dtype=np.float64)
        budget = float(k) if k else float(np.nanmax(x))
        share = float(np.mean(x >= budget - 0.5)) if len(x) else float("nan")
        const = sum(int(np.ptp(g[m].to_numpy(dtype=np.float64)) == 0) for g in groups if len(g))
        verdict = ("constant" if len(x) and np.ptp(x) == 0 else
                   "constant within each category" if const == len(groups) else
                   "nearly constant" if share >= NEARLY else
                   "partly constant" if const else "")
        rows.append({"measure": m, "label": measure_label(m), "at_budget": share,
                     "constant_categories": const, "categories": len(groups), "verdict": verdict})
    return pd.DataFrame(rows, columns=["measure", "label", "at_budget", "constant_categories",
                                       "categories", "verdict"])


def saturation_note(sat: pd.DataFrame, max_tokens: int | None = None) -> str:
    """One paragraph: which model columns are constant or nearly so, with the share at the budget."""
    if sat.empty:
        return ""
    budget = f"the full {max_tokens} tokens" if max_tokens else "the full budget"
    flagged = sat[sat.verdict != ""]
    parts = [f"{r.label}: {r.at_budget:.0%} of images at {budget}, constant in {r.constant_categories} "
             f"of {r.categories} categories ({r.verdict})" for r in flagged.itertuples()]
    if not parts:
        best = sat.loc[sat.at_budget.idxmax()]
        return (f"No model column is constant or nearly so (at most {best.at_budget:.0%} of images at "
                f"{budget}, {best.label}).")
    return ("Constant or nearly constant columns (their correlations say little): "
            + "; ".join(parts) + ".")


def wide_correlations(corr: pd.DataFrame) -> pd.DataFrame:
    """A row per category: n, then per measure its Spearman r (column ``<m>``), the CI bounds
    (``<m> low``, ``<m> high``) and Pearson r (``<m> pearson``). NaN where r is undefined."""
    out = pd.DataFrame({"category": list(dict.fromkeys(corr["category"]))}).set_index("category")
    out["n"] = corr.groupby("category", sort=False)["n"].max()
    cols = (("", "spearman"), (" low", "spearman_low"), (" high", "spearman_high"), (" pearson", "pearson"))
    pivots = {col: corr.pivot(index="category", columns="measure", values=col) for _, col in cols}
    for m in dict.fromkeys(corr["measure"]):
        for suffix, col in cols:
            out[f"{m}{suffix}"] = pivots[col].loc[out.index, m]
    return out.reset_index()


def _short(measure: str) -> str:
    base, _, eps = measure.partition("@")
    return f"{_SHORT.get(base, base)}@{eps}" if eps else _SHORT.get(base, base)


def spearman_text(corr: pd.DataFrame) -> str:
    """The per-category Spearman table for a terminal: r with 2 decimals, "const" where a
    measure is constant in the category, "-" where r is otherwise undefined."""
    wide = wide_correlations(corr)
    measures = list(dict.fromkeys(corr["measure"]))
    notes = corr.set_index(["category", "measure"])["note"]
    table = pd.DataFrame({"category": wide["category"], "n": wide["n"].astype(int)})
    for m in measures:
        table[_short(m)] = [f"{r:.2f}" if np.isfinite(r) else
                            ("const" if str(notes.get((c, m), "")).startswith("constant") else "-")
                            for c, r in zip(wide["category"], wide[m])]
    legend = ("KC = KC-hat, cKC = continuous KC sum(1 - p), @e = at epsilon e; JPEG / PNG = bits "
              "per pixel, edges = Canny edge density")
    return table.to_string(index=False) + "\n" + legend


def summary_text(hdf: pd.DataFrame, corr: pd.DataFrame, max_tokens: int | None = None) -> str:
    """What the terminal shows at the end: the table, the constant columns, the input sizes."""
    k = max_tokens or hdf.attrs.get("max_tokens")
    head = (f"Spearman r with the human score, within each category ({len(hdf)} images in "
            f"{hdf['category'].nunique()} categories):")
    lines = [head, spearman_text(corr)]
    sat = saturation(hdf, k)
    if not sat.empty:
        lines.append(saturation_note(sat, k))
    if hdf.attrs.get("model_input"):
        lines.append(input_size_note(hdf))
    return "\n".join(lines)


def write_outputs(hdf: pd.DataFrame, corr: pd.DataFrame, out_dir: str | Path,
                  max_tokens: int | None = None) -> list[Path]:
    """The CSVs listed in the module docstring, in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = {"human_scores.csv": hdf, "human_correlations.csv": corr,
              "human_correlations_wide.csv": wide_correlations(corr)}
    if _model_columns(hdf):
        frames["human_saturation.csv"] = saturation(hdf, max_tokens)
    if any(str(c).startswith("kc_hat@") for c in hdf.columns):
        frames["human_kc_by_epsilon.csv"] = kc_by_epsilon(hdf)
    paths = []
    for name, frame in frames.items():
        frame.to_csv(out / name, index=False)
        paths.append(out / name)
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m analysis.human_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="the Savoias folder (holding Images/ and Ground truth/) or a CSV of "
                    "human scores (docs/ANALYSIS.md)")
    add_model_args(ap)
    ap.add_argument("--epsilons", type=epsilons_arg, default=DEFAULT_EPSILONS,
                    help="epsilons of the KC-hat and continuous KC columns (default "
                    f"{','.join(f'{e:g}' for e in DEFAULT_EPSILONS)})")
    ap.add_argument("--epsilon", type=epsilon_arg, default=0.05, help="epsilon of the plain kc_hat / "
                    "continuous_kc columns (default 0.05)")
    ap.add_argument("--images", help="image root for the paths of a CSV (default: its folder)")
    ap.add_argument("--max-per-category", type=int, default=None,
                    help="at most this many images per category (a seeded subset)")
    ap.add_argument("--strict", action="store_true", help="stop when a Savoias image is missing")
    ap.add_argument("--proxy-size", type=int, default=PROXY_SIZE,
                    help=f"centre-crop side of the classic proxies (default {PROXY_SIZE}; 0: originals)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="human_study", help="where the CSVs go (default human_study/)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from karl.checkpoint import CheckpointError
    from karl.model_args import load_model_from_args

    try:  # the data first: a wrong folder fails before the model loads
        df = load_human(args.data, args.images, strict=args.strict)
        if args.max_per_category:
            df = subsample_per_category(df, args.max_per_category, args.seed)
        model, model_desc = load_model_from_args(args)
    except (FileNotFoundError, ValueError, CheckpointError) as err:  # not Savoias, bad CSV, no model
        print(f"analysis.human_study: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(df)} images, model {model_desc}, epsilons {', '.join(f'{e:g}' for e in args.epsilons)}",
          file=sys.stderr)
    hdf, corr = run_human_analysis(model, df, args.epsilon, args.epsilons, args.proxy_size or None,
                                   args.bootstrap, args.seed, args.batch_size)
    paths = write_outputs(hdf, corr, args.out_dir, int(model.max_tokens))
    print(summary_text(hdf, corr, int(model.max_tokens)))
    for note in hdf.attrs.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {', '.join(p.name for p in paths)} to {Path(args.out_dir)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
