"""Analysis 5: KC-hat vs human visual-complexity scores (Savoias, the paper's Fig. 10).

Data: :mod:`analysis.savoias` reads Savoias in its published layout and pairs each image
with the score of its own file number. Any other data set: a CSV with an image column
(``path``, ``image``, ``file`` or ``filename``), a score column (``human_score``, ``score``
or ``gt``) and optionally ``category`` (:func:`load_scores_csv`).

Measures (:func:`compute_human_measures`, streamed in batches so memory stays bounded):
KC-hat and continuous KC at one epsilon and at several epsilons (the model sees each
image at its own input size, shorter side resized then centre crop), and the classic
proxies of the Savoias paper on the 256 x 256 centre crop (JPEG bpp at quality 75, PNG bpp
of the pixels alone, Canny edge density). Scores are rescaled within each category, so
correlations are computed within a category (:func:`compute_human_correlations`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analysis._common import PALETTE, figure_style, progress, sweep_many
from analysis.gallery import bucket_index
from analysis.savoias import SAVOIAS_CATEGORIES, SavoiasLayoutError, load_savoias  # noqa: F401  (re-exported)

PROXIES = ("jpeg_bpp", "png_bpp", "edge_density")
MEASURE_LABELS = {"kc_hat": "KC-hat", "continuous_kc": "sum(1 - p)", "jpeg_bpp": "JPEG bpp",
                  "png_bpp": "PNG bpp", "edge_density": "edge density"}
DEFAULT_EPSILONS = (0.02, 0.05, 0.1, 0.2)  # KC-hat and continuous KC are also reported at these
PROXY_SIZE = 256  # the classic proxies are measured on this centre crop (as the reference figures)


def measure_label(measure: str) -> str:
    """Column name -> label: ``kc_hat@0.1`` -> ``KC-hat @ 0.1``."""
    base, _, eps = measure.partition("@")
    label = MEASURE_LABELS.get(base, base)
    return f"{label} @ {eps}" if eps else label


# ----------------------------------------------------------------------------- loaders

def _pick(columns: Sequence[str], options: Sequence[str], what: str, csv: Path) -> str:
    lower = {c.lower(): c for c in columns}
    for o in options:
        if o in lower:
            return lower[o]
    raise ValueError(f"{csv}: no {what} column (looked for {list(options)}, found {list(columns)})")


def load_scores_csv(csv: str | Path, image_root: str | Path | None = None) -> pd.DataFrame:
    """A CSV of human scores -> DataFrame(path, category, index, human_score).

    Image paths are taken relative to ``image_root`` (default: the CSV's folder) unless
    absolute. Without a ``category`` column every image is in category ``"all"``.
    """
    csv = Path(csv)
    table = pd.read_csv(csv)
    path_col = _pick(table.columns, ("path", "image", "file", "filename", "image_path"), "image", csv)
    score_col = _pick(table.columns, ("human_score", "score", "gt", "complexity"), "score", csv)
    root = Path(image_root) if image_root is not None else csv.parent
    paths = [str(p if Path(p).is_absolute() else root / p) for p in table[path_col].astype(str)]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {csv} are missing, e.g. {missing[0]}")
    cat_col = next((c for c in table.columns if c.lower() == "category"), None)
    return pd.DataFrame({"path": paths,
                         "category": table[cat_col].astype(str) if cat_col else "all",
                         "index": np.arange(len(table)),
                         "human_score": pd.to_numeric(table[score_col], errors="raise").astype(float)})


def load_human(path: str | Path, image_root: str | Path | None = None, strict: bool = False) -> pd.DataFrame:
    """A Savoias root folder (``strict``: missing images raise) or a scores CSV."""
    path = Path(path)
    if path.is_dir():
        return load_savoias(path, strict=strict)
    if path.suffix.lower() == ".csv":
        return load_scores_csv(path, image_root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    raise ValueError(f"{path}: expected a Savoias folder or a .csv of human scores")


def subsample_per_category(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows per category (a seeded subset), original order and attrs kept."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in df.groupby("category", sort=False).indices.items():
        keep.extend(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    out = df.iloc[np.sort(keep)].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


# ----------------------------------------------------------------------------- complexity measures

def compute_model_complexity(model, images: Tensor, epsilon: float = 0.05, batch_size: int = 64,
                             show_progress: bool = False) -> pd.DataFrame:
    """KC-hat and continuous KC (sum of 1 - halting prob) at ``epsilon`` -> DataFrame [N]."""
    sweep = sweep_many(model, images, [epsilon], batch_size=batch_size, show_progress=show_progress)
    return pd.DataFrame({"kc_hat": sweep.kc_hat[:, 0].numpy().astype(np.int64),
                         "continuous_kc": sweep.continuous_kc[:, 0].numpy()})


def _proxy_row(rgb: np.ndarray) -> tuple[float, float, float]:
    """rgb uint8 [H, W, 3] -> (JPEG bpp at quality 75, PNG bpp, Canny edge density).

    Both codecs encode the bare pixel array (no colour profile, EXIF or other metadata), so
    the sizes measure the pixels alone. PNG uses Pillow's default zlib level 6 (level 9 took
    116 ms instead of 13 ms on a smooth 256-px crop here, for a file 15% smaller).
    """
    from PIL import Image
    from skimage.feature import canny

    pil = Image.fromarray(rgb, mode="RGB")
    pixels = rgb.shape[0] * rgb.shape[1]
    sizes = []
    for fmt, kw in (("JPEG", dict(quality=75)), ("PNG", dict(compress_level=6))):
        buf = io.BytesIO()
        pil.save(buf, format=fmt, **kw)
        sizes.append(8.0 * buf.tell() / pixels)
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    edges = canny(gray, sigma=1.0)
    return sizes[0], sizes[1], float(edges.mean())


def _to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3] (exact for tensors made from uint8 pixels)."""
    return image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy()


def classic_proxies(images: Tensor | Sequence[str | Path], size: int | None = PROXY_SIZE,
                    show_progress: bool = False) -> pd.DataFrame:
    """Classic complexity proxies per image -> DataFrame(jpeg_bpp, png_bpp, edge_density).

    - jpeg_bpp: bits per pixel of the pixels saved as JPEG (quality 75);
    - png_bpp: bits per pixel as PNG (zlib level 6), a lossless compression ratio;
    - edge_density: share of Canny edge pixels (sigma 1) of the luma.

    ``images``: a tensor [N, 3, H, W] in [0, 1] (measured as given), or paths, measured on
    their ``size`` x ``size`` centre crop (shorter side resized, bicubic; None: native size).
    """
    from karl.data.images import load_image, preprocess

    if isinstance(images, Tensor):
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
        it = (_to_uint8(x) for x in images.detach().float().cpu())
    else:
        it = (np.asarray(load_image(p)) if size is None else _to_uint8(preprocess(load_image(p), size))
              for p in images)
    rows = [_proxy_row(np.ascontiguousarray(rgb))
            for rgb in progress(it, total=len(images), desc="proxies", enabled=show_progress)]
    return pd.DataFrame(rows, columns=list(PROXIES), dtype=np.float64)


def _load_batch(paths: Sequence[str], model_size: int | None, proxy_size: int | None
                ) -> tuple[list[int], Tensor | None, list[np.ndarray], list[str]]:
    """Decode a few images -> (ok positions, model inputs [n, 3, S, S], proxy crops, errors)."""
    from karl.data.images import ImageLoadError, load_image, preprocess

    ok, inputs, crops, errors = [], [], [], []
    for i, p in enumerate(paths):
        try:
            img = load_image(p)
        except ImageLoadError as err:
            errors.append(str(err))
            continue
        ok.append(i)
        if model_size is not None:
            inputs.append(preprocess(img, model_size))
        crops.append(np.asarray(img) if proxy_size is None else _to_uint8(preprocess(img, proxy_size)))
    return ok, (torch.stack(inputs) if inputs else None), crops, errors


def compute_human_measures(model, df: pd.DataFrame, epsilon: float = 0.05,
                           epsilons: Sequence[float] = DEFAULT_EPSILONS, proxy_size: int | None = PROXY_SIZE,
                           batch_size: int = 32, show_progress: bool = True,
                           on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Complexity measures of every image of ``df`` (columns ``path``, ...), streamed.

    Images are decoded ``batch_size`` at a time; only per-image numbers are kept, so memory
    does not grow with the data set. Adds the columns ``kc_hat``, ``continuous_kc`` (at
    ``epsilon``), ``kc_hat@<e>`` and ``continuous_kc@<e>`` for each of ``epsilons`` and the
    :data:`PROXIES`; with
    ``model=None`` only the proxies. The model sees each image at ``model.image_size``
    (shorter side resized, centre crop); the proxies use the ``proxy_size`` centre crop.
    Unreadable images are dropped and listed in one warning and in ``attrs["notes"]``.
    ``on_progress(done, total)`` is called after each batch (the app's progress bar).
    """
    assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
    eps_all = list(dict.fromkeys([float(epsilon), *map(float, epsilons)]))
    size = int(model.image_size) if model is not None else None
    paths = [str(p) for p in df["path"]]
    n = len(paths)
    kc = np.zeros((n, len(eps_all)), np.int64)
    ckc, px = np.zeros((n, len(eps_all))), np.full((n, len(PROXIES)), np.nan)
    good, errors = np.zeros(n, bool), []
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="human complexity", unit="img")
    for start in range(0, n, batch_size):
        ok, x, crops, errs = _load_batch(paths[start:start + batch_size], size, proxy_size)
        rows = np.asarray(ok, dtype=np.int64) + start
        errors += errs
        good[rows] = True
        if x is not None:
            sweep = sweep_many(model, x, eps_all, batch_size=max(batch_size, len(eps_all)))
            kc[rows] = sweep.kc_hat.numpy()
            ckc[rows] = sweep.continuous_kc.numpy()
        for r, rgb in zip(rows, crops):
            px[r] = _proxy_row(np.ascontiguousarray(rgb))
        del x, crops  # the next batch replaces them: peak memory is one batch
        done = min(n, start + batch_size)
        if bar is not None:
            bar.update(done - bar.n)
        if on_progress is not None:
            on_progress(done, n)
    if bar is not None:
        bar.close()
    out = df.reset_index(drop=True).copy()
    if model is not None:
        out["kc_hat"], out["continuous_kc"] = kc[:, 0], ckc[:, 0]
        for e in sorted(map(float, epsilons)):
            out[f"kc_hat@{e:g}"] = kc[:, eps_all.index(e)]
        for e in sorted(map(float, epsilons)):
            out[f"continuous_kc@{e:g}"] = ckc[:, eps_all.index(e)]
    for j, c in enumerate(PROXIES):
        out[c] = px[:, j]
    if n and not good.any():
        from karl.data.images import ImageLoadError
        raise ImageLoadError(f"none of the {n} images could be read: " + "; ".join(errors[:3]))
    out = out[good].reset_index(drop=True)
    notes = list(df.attrs.get("notes", []))
    if errors:
        msg = f"{len(errors)} unreadable images were skipped: " + "; ".join(errors[:10])
        warnings.warn(msg, UserWarning, stacklevel=2)
        notes.append(msg)
    out.attrs = {**df.attrs, "notes": notes, "model_input": size, "proxy_size": proxy_size,
                 "max_tokens": int(model.max_tokens) if model is not None else None,
                 "epsilon": float(epsilon), "epsilons": [float(e) for e in epsilons]}
    return out


# ----------------------------------------------------------------------------- correlations

def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of a, b [B, n]; NaN where a row is constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / den
    r = np.where(den > 1e-12, r, np.nan)
    return np.clip(r, -1.0, 1.0)


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(x, axis=-1)


def correlation_with_ci(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, ci: float = 0.95,
                        seed: int = 0) -> dict[str, float]:
    """Spearman and Pearson r of x, y with percentile bootstrap CIs (resampling image pairs)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"n": n}
    pear = float(_rowwise_pearson(x[None], y[None])[0]) if n >= 3 else np.nan
    spear = float(_rowwise_pearson(_rank(x)[None], _rank(y)[None])[0]) if n >= 3 else np.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n >= 3 and n_boot > 0 else None
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    for name, r, fn in (("spearman", spear, lambda a, b: _rowwise_pearson(_rank(a), _rank(b))),
                        ("pearson", pear, _rowwise_pearson)):
        out[name] = r
        low = high = np.nan
        if idx is not None and np.isfinite(r):
            boot = fn(x[idx], y[idx])
            boot = boot[np.isfinite(boot)]
            if len(boot):
                low, high = np.percentile(boot, [lo_q, hi_q])
        out[f"{name}_low"], out[f"{name}_high"] = float(low), float(high)
        p = np.nan
        if np.isfinite(r):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float((stats.spearmanr if name == "spearman" else stats.pearsonr)(x, y)[1])
        out[f"{name}_p"] = p
    return out


def _undefined_note(x: np.ndarray, y: np.ndarray) -> str:
    """Why a correlation is undefined ('' when it is defined)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return f"too few images ({len(x)})"
    if np.ptp(x) == 0:
        return f"constant ({x[0]:g})"
    if np.ptp(y) == 0:
        return "constant human score"
    return ""


def human_measures(df: pd.DataFrame) -> list[str]:
    """The measure columns of ``df`` in report order: for each epsilon, KC-hat and continuous
    KC side by side (``kc_hat@e``, ``continuous_kc@e``), then the proxies. The plain
    ``kc_hat`` / ``continuous_kc`` (at ``attrs["epsilon"]``) come first unless that epsilon
    has its own ``@`` columns, which hold the same numbers."""
    eps = [str(c).split("@", 1)[1] for c in df.columns if str(c).startswith("kc_hat@")]
    at = [c for e in eps for c in (f"kc_hat@{e}", f"continuous_kc@{e}") if c in df.columns]
    main = df.attrs.get("epsilon")
    plain = [] if main is not None and f"kc_hat@{main:g}" in df.columns else ["kc_hat", "continuous_kc"]
    return [m for m in plain if m in df.columns] + at + [m for m in PROXIES if m in df.columns]


def compute_human_correlations(df: pd.DataFrame, measures: Sequence[str] | None = None,
                               score_col: str = "human_score", group_col: str = "category",
                               n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per category and measure: Spearman / Pearson r with the human score and bootstrap CIs.

    ``measures`` default: :func:`human_measures` of ``df``. Returns columns category,
    measure, n, spearman, spearman_low, spearman_high, spearman_p, pearson, pearson_low,
    pearson_high, pearson_p, note. Where r is undefined it is NaN and ``note`` says why,
    e.g. ``"constant (32)"`` when every image of the category got 32 tokens.
    """
    measures = list(measures) if measures is not None else human_measures(df)
    assert measures, "no complexity measure columns in the frame"
    groups = df.groupby(group_col, sort=False) if group_col in df.columns else [("all", df)]
    rows = []
    for cat, g in groups:
        y = g[score_col].to_numpy(dtype=np.float64)
        for m in measures:
            x = g[m].to_numpy(dtype=np.float64)
            r = correlation_with_ci(x, y, n_boot, ci, seed)
            rows.append({"category": cat, "measure": m, **r, "note": _undefined_note(x, y)})
    return pd.DataFrame(rows)


def _cell(row: pd.Series, method: str) -> str:
    r = row[method]
    if not np.isfinite(r):
        return row["note"] or "n/a"
    lo, hi = row[f"{method}_low"], row[f"{method}_high"]
    return f"{r:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{r:.2f}"


def correlation_table(corr: pd.DataFrame, method: str = "spearman") -> pd.DataFrame:
    """Readable pivot of :func:`compute_human_correlations`: a row per category, a column per
    measure, cells ``"r [low, high]"``, or the reason r is undefined (``"constant (32)"``)."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    cells = corr.assign(cell=corr.apply(_cell, axis=1, method=method),
                        label=corr["measure"].map(measure_label))
    table = cells.pivot(index="category", columns="label", values="cell")
    table = table.loc[list(dict.fromkeys(corr["category"])),
                      [measure_label(m) for m in dict.fromkeys(corr["measure"])]]
    n = corr.groupby("category", sort=False)["n"].max()
    table.insert(0, "n", n.loc[table.index].to_numpy())
    return table.reset_index().rename_axis(columns=None)


def kc_by_epsilon(df: pd.DataFrame) -> pd.DataFrame:
    """Mean KC-hat per category (rows) at each reported epsilon (columns ``kc_hat@<e>``)."""
    cols = [c for c in df.columns if str(c).startswith("kc_hat@")]
    assert cols, "no kc_hat@<epsilon> columns (see compute_human_measures)"
    table = df.groupby("category", sort=False)[cols].mean()
    table.columns = [f"mean KC-hat @ {c.split('@')[1]}" for c in cols]
    return table.reset_index()


# ----------------------------------------------------------------------------- figures

def _bucket_labels(n: int, size: float) -> list[str]:
    def fmt(v: float) -> str:
        return f"{v:g}"
    return [f"{fmt(0)}-{fmt(size)}" if b == 0 else f"{fmt(b * size)}-{fmt((b + 1) * size)}" for b in range(n)]


def human_heatmap_table(df: pd.DataFrame, kc_col: str = "kc_hat", score_col: str = "human_score",
                        kc_bucket: float = 32, score_bucket: float = 10, max_tokens: int = 256,
                        max_score: float = 100) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts [score buckets, KC buckets] with right-closed buckets; returns (counts, rows, cols)."""
    nk = int(np.ceil(max_tokens / kc_bucket))
    ns = int(np.ceil(max_score / score_bucket))
    kb = np.clip(bucket_index(df[kc_col].to_numpy(), kc_bucket), 0, nk - 1)
    sb = np.clip(bucket_index(df[score_col].to_numpy(), score_bucket), 0, ns - 1)
    counts = np.zeros((ns, nk), dtype=np.int64)
    np.add.at(counts, (sb, kb), 1)
    return counts, _bucket_labels(ns, score_bucket), _bucket_labels(nk, kc_bucket)


def plot_human_heatmap(df: pd.DataFrame, kc_col: str = "kc_hat", score_col: str = "human_score",
                       kc_bucket: float | None = None, score_bucket: float = 10,
                       max_tokens: int = 256, category: str | None = None):
    """Human-score bucket (rows) x KC-hat bucket (columns): share of each score bucket's images
    in each KC bucket (rows sum to 1; text: counts). ``kc_bucket`` defaults to max_tokens / 8."""
    import plotly.graph_objects as go

    if category is not None:
        df = df[df["category"] == category]
    kc_bucket = kc_bucket or max(1, max_tokens // 8)
    counts, rows, cols = human_heatmap_table(df, kc_col, score_col, kc_bucket, score_bucket, max_tokens)
    with np.errstate(invalid="ignore"):
        share = counts / counts.sum(1, keepdims=True)
    fig = go.Figure(go.Heatmap(
        z=share, x=cols, y=rows, zmin=0, zmax=1, colorscale="Blues", colorbar_title="share of row",
        text=counts, texttemplate="%{text}",
        hovertemplate="human %{y}<br>KC %{x}<br>share %{z:.2f}<br>%{text} images<extra></extra>"))
    label = measure_label(kc_col)
    fig.update_layout(title=f"Human complexity vs {label} ({category or 'all categories'}, n = {len(df)})",
                      xaxis_title=f"{label} bucket (tokens)", yaxis_title="human score bucket",
                      xaxis_type="category", yaxis_type="category", **figure_style())
    return fig


def plot_human_correlations(corr: pd.DataFrame, method: str = "spearman"):
    """Grouped bars: correlation with the human score per category, one bar per measure,
    error bars = bootstrap CI."""
    import plotly.graph_objects as go

    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    fig = go.Figure()
    for i, m in enumerate(dict.fromkeys(corr["measure"])):
        c = corr[corr["measure"] == m]
        r = c[method].to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            x=c["category"].astype(str), y=r, name=measure_label(m),
            marker_color=PALETTE[i % len(PALETTE)],
            error_y=dict(type="data", symmetric=False, array=c[f"{method}_high"].to_numpy(float) - r,
                         arrayminus=r - c[f"{method}_low"].to_numpy(float)),
            customdata=c["n"], hovertemplate="%{x}: r = %{y:.2f} (n = %{customdata})<extra></extra>"))
    fig.update_layout(barmode="group", title=f"{method.title()} correlation with human complexity "
                      "(error bars: bootstrap CI)", yaxis_title=f"{method} r", yaxis_range=[-1, 1],
                      **figure_style(), legend_orientation="h", legend_y=-0.2)
    return fig


# ----------------------------------------------------------------------------- one call for the report and the app

def run_human_analysis(model, df: pd.DataFrame, epsilon: float = 0.05,
                       epsilons: Sequence[float] = DEFAULT_EPSILONS, proxy_size: int | None = PROXY_SIZE,
                       n_boot: int = 1000, seed: int = 0, batch_size: int = 32, show_progress: bool = True,
                       on_progress: Callable[[int, int], None] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measures (streamed; skipped when ``df`` already has them) and per-category correlations.

    Returns (per-image frame, :func:`compute_human_correlations` frame).
    """
    if not {"kc_hat", "continuous_kc", *PROXIES} <= set(df.columns):
        df = compute_human_measures(model, df, epsilon, epsilons, proxy_size, batch_size,
                                    show_progress, on_progress)
    return df, compute_human_correlations(df, n_boot=n_boot, seed=seed)


def input_size_note(df: pd.DataFrame) -> str:
    """One sentence: at which size the model and the proxies saw the images."""
    size, crop = df.attrs.get("model_input"), df.attrs.get("proxy_size", PROXY_SIZE)
    model_part = (f"the model saw every image at {size} x {size} pixels (shorter side resized, "
                  "bicubic, then centre crop)" if size else "the model input size was not recorded")
    crop_part = (f"the classic proxies were measured on the {crop} x {crop} centre crop"
                 if crop else "the classic proxies were measured on the original images")
    return f"Input size: {model_part}; {crop_part}."
