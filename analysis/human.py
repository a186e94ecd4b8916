"""Analysis 5: KC-hat vs human visual-complexity scores (Savoias, the paper's Fig. 10).

Savoias (Saraee et al. 2018) layout, as published::

    <root>/Images/<Category>/<i>.<ext>                       # jpg / png / ...
    <root>/Ground truth/xlsx/global_ranking_<key>.xlsx       # one column "gt"

Row i (0-based data row, under the header) of the xlsx scores the i-th image of the
category folder in numeric order of the file stems. Whether the files are numbered from
0 or from 1 does not matter: only the order is used, and the number of images must equal
the number of rows. Scores are 0-100, rescaled within each category, so correlations are
computed within a category.

Any other data set: a CSV with an image column (``path``, ``image``, ``file`` or
``filename``), a score column (``human_score``, ``score`` or ``gt``) and optionally
``category`` (:func:`load_scores_csv`).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from analysis._common import PALETTE, encode_many, progress
from analysis.gallery import bucket_index

# Savoias category folder -> key of its ground-truth file.
SAVOIAS_CATEGORIES: dict[str, str] = {
    "Scenes": "scenes", "Advertisement": "ad", "Visualization": "vis", "Objects": "objects",
    "Interior Design": "interior_design", "Art": "art", "Suprematism": "sup",
}
PROXIES = ("jpeg_bpp", "png_bpp", "edge_density")
MEASURE_LABELS = {"kc_hat": "KC-hat", "continuous_kc": "sum(1 - p)", "jpeg_bpp": "JPEG bpp",
                  "png_bpp": "PNG bpp", "edge_density": "edge density"}
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# ----------------------------------------------------------------------------- loaders

def _numbered_images(folder: Path) -> list[tuple[int, Path]]:
    """(number, path) of the files named ``<int>.<image ext>``, sorted by number."""
    items = []
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in _IMAGE_EXTS and re.fullmatch(r"\d+", p.stem):
            items.append((int(p.stem), p))
    items.sort()
    numbers = [n for n, _ in items]
    dup = sorted({n for n in numbers if numbers.count(n) > 1})
    if dup:
        raise ValueError(f"{folder}: several files share the numbers {dup[:5]} (different extensions?)")
    return items


def _ground_truth_file(root: Path, key: str) -> Path | None:
    path = root / "Ground truth" / "xlsx" / f"global_ranking_{key}.xlsx"
    if path.is_file():
        return path
    found = [p for p in root.rglob(f"global_ranking_{key}.xlsx") if "old" not in p.parts[-2].lower()]
    return found[0] if len(found) == 1 else None


def _read_gt(path: Path) -> np.ndarray:
    table = pd.read_excel(path)
    if "gt" in table.columns:
        col = table["gt"]
    elif table.shape[1] == 1:
        col = table.iloc[:, 0]
    else:
        raise ValueError(f"{path}: no 'gt' column (columns: {list(table.columns)})")
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"{path}: {int(np.isnan(values).sum())} non-numeric values in the score column")
    return values


def load_savoias(root: str | Path, categories: Sequence[str] | None = None,
                 strict: bool = True) -> pd.DataFrame:
    """Savoias in its published layout -> DataFrame(path, category, index, human_score).

    Args:
        root: the folder holding ``Images/`` and ``Ground truth/``.
        categories: folder names to load (default: every category present).
        strict: raise when a category's image count differs from its number of scores;
            with ``strict=False`` warn and pair the first min(images, rows).

    ``index`` is the number in the file name; rows are paired with images in numeric order.
    """
    root = Path(root)
    images_dir = root / "Images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{root} has no Images/ folder: not the Savoias layout "
                                "(Images/<Category>/<i>.<ext>, Ground truth/xlsx/global_ranking_<key>.xlsx)")
    wanted = list(categories) if categories is not None else list(SAVOIAS_CATEGORIES)
    frames = []
    for cat in wanted:
        if cat not in SAVOIAS_CATEGORIES:
            raise ValueError(f"unknown Savoias category {cat!r}; choose from {list(SAVOIAS_CATEGORIES)}")
        folder = images_dir / cat
        if not folder.is_dir():
            if categories is not None:
                raise FileNotFoundError(f"{folder} does not exist")
            continue
        gt_path = _ground_truth_file(root, SAVOIAS_CATEGORIES[cat])
        if gt_path is None:
            raise FileNotFoundError(f"no ground truth for {cat}: expected {root}/Ground truth/xlsx/"
                                    f"global_ranking_{SAVOIAS_CATEGORIES[cat]}.xlsx")
        scores, items = _read_gt(gt_path), _numbered_images(folder)
        if len(scores) != len(items):
            msg = f"{cat}: {len(items)} numbered images in {folder} but {len(scores)} scores in {gt_path}"
            if strict:
                raise ValueError(msg + " (pass strict=False to pair the first min of the two)")
            warnings.warn(msg + "; pairing the first min of the two in numeric order", stacklevel=2)
        m = min(len(scores), len(items))
        frames.append(pd.DataFrame({"path": [str(p) for _, p in items[:m]], "category": cat,
                                    "index": [n for n, _ in items[:m]], "human_score": scores[:m]}))
    if not frames:
        raise FileNotFoundError(f"no Savoias category folder found under {images_dir} "
                                f"(expected some of {list(SAVOIAS_CATEGORIES)})")
    return pd.concat(frames, ignore_index=True)


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


def load_human(path: str | Path, image_root: str | Path | None = None) -> pd.DataFrame:
    """A Savoias root folder or a scores CSV (see the two loaders)."""
    path = Path(path)
    if path.is_dir():
        return load_savoias(path)
    if path.suffix.lower() == ".csv":
        return load_scores_csv(path, image_root)
    raise ValueError(f"{path}: expected a Savoias folder or a .csv of human scores")


def subsample_per_category(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows per category (a seeded subset), original order kept."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in df.groupby("category", sort=False).indices.items():
        keep.extend(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    return df.iloc[np.sort(keep)].reset_index(drop=True)


# ----------------------------------------------------------------------------- complexity measures

def compute_model_complexity(model, images: Tensor, epsilon: float = 0.05, batch_size: int = 64,
                             show_progress: bool = False) -> pd.DataFrame:
    """KC-hat and continuous KC (sum of 1 - halting prob) at ``epsilon`` -> DataFrame [N]."""
    probs, keep = encode_many(model, images, [epsilon], batch_size=batch_size, show_progress=show_progress)
    return pd.DataFrame({"kc_hat": keep[:, 0].sum(-1).astype(np.int64),
                         "continuous_kc": (1.0 - probs[:, 0]).sum(-1)})


def _proxy_row(rgb: np.ndarray) -> tuple[float, float, float]:
    """rgb uint8 [H, W, 3] -> (JPEG bpp at quality 75, PNG bpp, Canny edge density)."""
    from PIL import Image
    from skimage.feature import canny

    pil = Image.fromarray(rgb)
    pixels = rgb.shape[0] * rgb.shape[1]
    sizes = []
    for fmt, kw in (("JPEG", dict(quality=75)), ("PNG", dict(compress_level=9))):
        buf = io.BytesIO()
        pil.save(buf, format=fmt, **kw)
        sizes.append(8.0 * buf.tell() / pixels)
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    edges = canny(gray, sigma=1.0)
    return sizes[0], sizes[1], float(edges.mean())


def classic_proxies(images: Tensor | Sequence[str | Path], max_side: int | None = 512,
                    show_progress: bool = False) -> pd.DataFrame:
    """Classic complexity proxies per image -> DataFrame(jpeg_bpp, png_bpp, edge_density).

    - jpeg_bpp: bits per pixel of the image saved as JPEG (quality 75);
    - png_bpp: bits per pixel as PNG (compression level 9), a lossless compression ratio;
    - edge_density: share of Canny edge pixels (sigma 1) of the luma.

    ``images``: a tensor [N, 3, H, W] in [0, 1] (measured as given), or paths (measured at
    their own resolution, downscaled so the longer side is <= ``max_side``; None: native).
    """
    from karl.data.images import load_image

    rows = []
    if isinstance(images, Tensor):
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
        arrays = (images.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        it = iter(arrays)
    else:
        it = (np.asarray(load_image(p, max_side=max_side)) for p in images)
    for rgb in progress(it, total=len(images), desc="proxies", enabled=show_progress):
        rows.append(_proxy_row(np.ascontiguousarray(rgb)))
    return pd.DataFrame(rows, columns=list(PROXIES), dtype=np.float64)


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


def compute_human_correlations(df: pd.DataFrame, measures: Sequence[str] | None = None,
                               score_col: str = "human_score", group_col: str = "category",
                               n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per category and measure: Spearman / Pearson r with the human score and bootstrap CIs.

    ``measures`` default: those of kc_hat, continuous_kc, jpeg_bpp, png_bpp, edge_density
    present in ``df``. A constant measure (e.g. every image at the full budget) gives NaN.
    Returns columns category, measure, n, spearman, spearman_low, spearman_high, spearman_p,
    pearson, pearson_low, pearson_high, pearson_p.
    """
    measures = list(measures) if measures is not None else [
        m for m in ("kc_hat", "continuous_kc", *PROXIES) if m in df.columns]
    assert measures, "no complexity measure columns in the frame"
    groups = df.groupby(group_col, sort=False) if group_col in df.columns else [("all", df)]
    rows = []
    for cat, g in groups:
        for m in measures:
            r = correlation_with_ci(g[m].to_numpy(), g[score_col].to_numpy(), n_boot, ci, seed)
            rows.append({"category": cat, "measure": m, **r})
    return pd.DataFrame(rows)


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
    label = MEASURE_LABELS.get(kc_col, kc_col)
    fig.update_layout(title=f"Human complexity vs {label} ({category or 'all categories'}, n = {len(df)})",
                      xaxis_title=f"{label} bucket (tokens)", yaxis_title="human score bucket",
                      xaxis_type="category", yaxis_type="category", template="plotly_white")
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
            x=c["category"].astype(str), y=r, name=MEASURE_LABELS.get(m, m),
            marker_color=PALETTE[i % len(PALETTE)],
            error_y=dict(type="data", symmetric=False, array=c[f"{method}_high"].to_numpy(float) - r,
                         arrayminus=r - c[f"{method}_low"].to_numpy(float)),
            customdata=c["n"], hovertemplate="%{x}: r = %{y:.2f} (n = %{customdata})<extra></extra>"))
    fig.update_layout(barmode="group", title=f"{method.title()} correlation with human complexity "
                      "(error bars: bootstrap CI)", yaxis_title=f"{method} r", yaxis_range=[-1, 1],
                      template="plotly_white", legend_orientation="h", legend_y=-0.2)
    return fig
