"""The report's images from a data spec (``karl/data/spec.py``): ``--data`` of
``python -m analysis.report``, loaded whole into memory (at most ``max_images``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from karl.data.spec import DataSpec, ensure_corpus, load_hf_split, parse_data_spec

__all__ = ["load_data", "load_image_folder", "load_corpus"]


def _load_files(paths: Sequence[Path], name_of, size: int, max_images: int | None,
                seed: int) -> tuple[Tensor, list[str]]:
    """Decode ``paths`` (a seeded subset of ``max_images`` when more) -> ([N, 3, size, size], names)."""
    from karl.data.images import ImageLoadError, load_image, preprocess

    if max_images is not None and len(paths) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in keep]
    images, names = [], []
    for p in paths:
        try:
            images.append(preprocess(load_image(p), size))
        except ImageLoadError as err:
            warnings.warn(f"skipping {err}", stacklevel=3)
            continue
        names.append(name_of(p))
    if not images:
        raise FileNotFoundError(f"no readable images in {len(paths)} files")
    return torch.stack(images), names


def load_image_folder(root: str | Path, size: int, max_images: int | None = 64,
                      seed: int = 0) -> tuple[Tensor, list[str]]:
    """Images of a folder (recursive; a seeded subset of ``max_images`` when larger),
    preprocessed to ``size`` -> ([N, 3, size, size], relative names). Unreadable files are skipped."""
    from karl.data.images import list_images

    root = Path(root)
    paths = [root] if root.is_file() else list_images(root)
    try:
        return _load_files(paths, lambda p: str(p.relative_to(root)) if root.is_dir() else p.name,
                           size, max_images, seed)
    except FileNotFoundError:
        raise FileNotFoundError(f"no readable images under {root}") from None


def _load_hf(spec: DataSpec, size: int, max_images: int) -> tuple[Tensor, list[str], str]:
    """The first ``max_images`` of a Hugging Face data set (its default split, column ``image``)."""
    from karl.data.images import load_image, preprocess

    ds, split = load_hf_split(spec, [spec.default_split])
    n = min(max_images, len(ds))
    images = torch.stack([preprocess(load_image(ds[i]["image"]), size) for i in range(n)])
    return images, [f"{spec.text}/{split}/{i}" for i in range(n)], f"{n} images from {spec.text} [{split}]"


def load_data(spec: str | DataSpec, size: int, max_images: int = 64,
              seed: int = 0) -> tuple[Tensor, list[str], str]:
    """``--data``, any data spec (karl/data/spec.py) -> (images [N, 3, size, size], names, a
    one-line description). :class:`karl.data.spec.DataSpecError` when it names nothing."""
    data = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if data.kind == "procedural":
        from karl.data import procedural
        images, samples = procedural.batch(min(data.count or max_images, max_images), size, seed)
        names = [f"{s.family}-{s.seed}" for s in samples]
        return images, names, f"{len(names)} procedural images (seed {seed})"
    if data.kind == "corpus":
        return load_corpus(ensure_corpus(data.path), size, max_images, seed)
    if data.kind in ("hf", "imagefolder"):
        return _load_hf(data, size, max_images)
    if data.kind == "glob":
        images, names = _load_files(data.image_files(), str, size, max_images, seed)
        return images, names, f"{len(names)} images matching {data.text}"
    images, names = load_image_folder(data.path, size, max_images, seed)
    return images, names, f"{len(names)} images from {data.path}"


def load_corpus(root: Path, size: int, max_images: int = 64, seed: int = 0) -> tuple[Tensor, list[str], str]:
    """The corpus photos whole (centre-cropped); when there are fewer than ``max_images``,
    topped up with deterministic multi-scale crops of them (named ``<photo>@crop<i>``)."""
    from karl.data.corpus import FixedCropDataset

    images, names = load_image_folder(root, size, max_images, seed)
    extra = max_images - len(names)
    if extra > 0:
        crops = FixedCropDataset(root, size, crops_per_image=-(-extra // len(names)), seed=seed)
        step = max(1, len(crops) // extra)
        picks = list(range(0, len(crops), step))[:extra]
        images = torch.cat([images, torch.stack([crops[i] for i in picks])])
        names += [f"{Path(crops.entries[i // crops.k]['file']).name}@crop{i % crops.k}" for i in picks]
    n_whole = min(len(names), max_images) - max(extra, 0)
    return images, names, f"{len(names)} images from {root} ({n_whole} whole photos, the rest crops)"
