"""The Savoias data set (Saraee et al. 2018) in its published layout.

    <root>/Images/<Category>/<i>.<jpg|png>                 # i = 0, 1, 2, ...
    <root>/Ground truth/xlsx/global_ranking_<key>.xlsx     # one column "gt"
    <root>/Ground truth/npy/...                            # the same scores (not read)

Row i of a category's xlsx (0-based, under the header) is the human score of the file
whose stem is the integer i. Images are paired with scores by that number, never by
position: copies of the data set miss a few images, and pairing by sorted position would
hand every image after a gap its neighbour's score.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

# Category (as reported) -> key of its ground-truth file.
SAVOIAS_CATEGORIES: dict[str, str] = {
    "Advertisement": "ad", "Art": "art", "Interior Design": "interior_design", "Objects": "objects",
    "Scenes": "scenes", "Suprematism": "sup", "Visualizations": "vis",
}
# Folder spellings seen in copies of the data set (normalised: lower case, letters only).
_SPELLINGS: dict[str, str] = {
    "advertisement": "Advertisement", "advertisements": "Advertisement", "art": "Art",
    "interiordesign": "Interior Design", "objects": "Objects", "scenes": "Scenes",
    "suprematism": "Suprematism", "visualizations": "Visualizations", "visualization": "Visualizations",
}
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_LAYOUT = "Images/<Category>/<i>.<jpg|png> and Ground truth/xlsx/global_ranking_<key>.xlsx"


class SavoiasLayoutError(ValueError):
    """The folder is not (or not consistently) in the Savoias layout."""


def canonical_category(name: str) -> str | None:
    """A folder or category name in any accepted spelling -> the reported name (or None)."""
    return _SPELLINGS.get(re.sub(r"[^a-z]", "", name.lower()))


def _category_folders(images_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """{category: folder} of the known categories under Images/, and the unknown folder names."""
    found: dict[str, Path] = {}
    unknown = []
    for p in sorted(images_dir.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        cat = canonical_category(p.name)
        if cat is None:
            unknown.append(p.name)
        elif cat in found:
            raise SavoiasLayoutError(f"{images_dir}: both {found[cat].name!r} and {p.name!r} hold "
                                     f"the category {cat}; keep one")
        else:
            found[cat] = p
    return found, unknown


def _numbered_images(folder: Path) -> tuple[dict[int, Path], list[str]]:
    """{number: path} of the files named ``<int>.<image ext>``, and the other image files' names."""
    numbered: dict[int, Path] = {}
    others = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue  # Thumbs.db, .DS_Store, notes: not images
        if not re.fullmatch(r"\d+", p.stem):
            others.append(p.name)
            continue
        n = int(p.stem)
        if n in numbered:
            raise SavoiasLayoutError(f"{folder}: {numbered[n].name} and {p.name} share the number {n}")
        numbered[n] = p
    return numbered, others


def _ground_truth_file(root: Path, key: str) -> Path:
    path = root / "Ground truth" / "xlsx" / f"global_ranking_{key}.xlsx"
    if not path.is_file():
        raise SavoiasLayoutError(f"no scores for this category: {path} is missing (layout: {_LAYOUT})")
    return path


def read_scores(path: Path) -> np.ndarray:
    """The ``gt`` column of a ground-truth xlsx -> float array (row i = image i)."""
    table = pd.read_excel(path)
    if "gt" in table.columns:
        col = table["gt"]
    elif table.shape[1] == 1:
        col = table.iloc[:, 0]
    else:
        raise SavoiasLayoutError(f"{path}: no 'gt' column (columns: {list(table.columns)})")
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise SavoiasLayoutError(f"{path}: {int(np.isnan(values).sum())} empty or non-numeric scores")
    return values


def _short_list(items: Sequence[str], n: int = 40) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _load_category(root: Path, cat: str, folder: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One category -> (frame, missing image ids, ignored file names)."""
    gt_path = _ground_truth_file(root, SAVOIAS_CATEGORIES[cat])
    scores = read_scores(gt_path)
    numbered, others = _numbered_images(folder)
    beyond = sorted(n for n in numbered if n >= len(scores))
    if beyond:  # numbering from 1, or the wrong xlsx: every pair would be off, so refuse
        raise SavoiasLayoutError(
            f"{cat}: files numbered {beyond[:5]} but {gt_path.name} has only {len(scores)} scores "
            f"(rows 0..{len(scores) - 1}); Savoias numbers its images from 0")
    present = sorted(numbered)
    missing = [f"{folder.name}/{n}" for n in range(len(scores)) if n not in numbered]
    frame = pd.DataFrame({"path": [str(numbered[n]) for n in present], "category": cat,
                          "index": np.asarray(present, dtype=np.int64), "human_score": scores[present]})
    return frame, missing, [f"{folder.name}/{o}" for o in others]


def load_savoias(root: str | Path, categories: Sequence[str] | None = None,
                 strict: bool = False) -> pd.DataFrame:
    """Savoias in its published layout -> DataFrame(path, category, index, human_score).

    Args:
        root: the folder holding ``Images/`` and ``Ground truth/``.
        categories: categories to load, in any accepted spelling (default: all seven; absent
            folders are then reported in the warning).
        strict: raise when an image is missing instead of skipping it.

    ``index`` is the number in the file name and the row of the score. Missing images,
    absent category folders and ignored files are listed in ONE ``UserWarning`` and kept in
    ``df.attrs["notes"]`` (``df.attrs["missing"]``: the missing images as ``<folder>/<i>``).

    Raises:
        SavoiasLayoutError: not the Savoias layout (no ``Images/``, no category folder, a
            missing xlsx, numbering that does not start at 0, two files with one number).
    """
    root = Path(root)
    images_dir = root / "Images"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if not images_dir.is_dir():
        raise SavoiasLayoutError(f"{root} is not a Savoias folder: it has no Images/ subfolder "
                                 f"(expected {_LAYOUT})")
    found, unknown = _category_folders(images_dir)
    if not found:
        raise SavoiasLayoutError(f"{images_dir} holds none of the Savoias categories "
                                 f"{list(SAVOIAS_CATEGORIES)} (found {unknown[:10]}); expected {_LAYOUT}")
    wanted = list(SAVOIAS_CATEGORIES)
    if categories is not None:
        wanted = []
        for c in categories:
            cat = canonical_category(c)
            if cat is None:
                raise ValueError(f"unknown Savoias category {c!r}; choose from {list(SAVOIAS_CATEGORIES)}")
            if cat not in found:
                raise SavoiasLayoutError(f"{images_dir} has no folder for the category {cat}")
            wanted.append(cat)
    frames, missing, ignored = [], [], []
    for cat in wanted:
        if cat in found:
            frame, miss, other = _load_category(root, cat, found[cat])
            frames.append(frame)
            missing += miss
            ignored += other
    if strict and missing:
        raise SavoiasLayoutError(f"{len(missing)} images are missing (strict): {_short_list(missing)}")
    df = pd.concat(frames, ignore_index=True)
    notes = []
    if missing:
        notes.append(f"{len(missing)} of {len(df) + len(missing)} images are missing and were skipped: "
                     f"{_short_list(missing)}")
    absent = [c for c in wanted if c not in found]
    if absent:
        notes.append(f"no folder for the categories {absent}")
    if unknown:
        notes.append(f"ignored folders that are not Savoias categories: {unknown[:10]}")
    if ignored:
        notes.append(f"ignored image files not named <number>.<ext>: {_short_list(ignored, 10)}")
    if notes:
        warnings.warn(f"Savoias ({root}): " + "; ".join(notes), UserWarning, stacklevel=2)
    df.attrs["notes"], df.attrs["missing"] = notes, missing
    return df


def make_fake_savoias(root: str | Path, n_per_category: int | Mapping[str, int] = 6, size: int = 32,
                      missing: Sequence[str] = (), vis_folder: str = "Visualizations",
                      seed: int = 0) -> Path:
    """A generated tree in the real Savoias layout, for tests and memory benchmarks.

    Image i of a category is grey noise whose amplitude is a random (seeded) function of i;
    its score (row i of the xlsx) is that amplitude x 100, so any complexity proxy ranks the
    images like the scores exactly when images and scores are paired correctly. Even numbers
    are written as .png, odd ones as .jpg (quality 95). ``missing``: ``"<folder>/<i>"`` ids
    not written. ``n_per_category``: one count, or a count per category. Returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    xlsx = root / "Ground truth" / "xlsx"
    xlsx.mkdir(parents=True, exist_ok=True)
    (root / "Ground truth" / "npy").mkdir(parents=True, exist_ok=True)
    for cat, key in SAVOIAS_CATEGORIES.items():
        folder = root / "Images" / (vis_folder if cat == "Visualizations" else cat)
        folder.mkdir(parents=True, exist_ok=True)
        n = n_per_category[cat] if isinstance(n_per_category, Mapping) else n_per_category
        amp = rng.permutation(np.linspace(0.02, 1.0, n))
        for i, a in enumerate(amp):
            if f"{folder.name}/{i}" in missing:
                continue
            noise = rng.uniform(-1, 1, (size, size, 1)) * a * 120
            arr = np.clip(128 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
            img = Image.fromarray(arr)
            if i % 2:
                img.save(folder / f"{i}.jpg", quality=95)
            else:
                img.save(folder / f"{i}.png")
        pd.DataFrame({"gt": np.round(amp * 100, 3)}).to_excel(xlsx / f"global_ranking_{key}.xlsx", index=False)
        np.save(root / "Ground truth" / "npy" / f"global_ranking_{key}.npy", amp * 100)
    return root
