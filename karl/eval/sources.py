"""Where karl-eval's images come from: a folder, a file, procedural[:N], imagefolder:PATH or a
Hugging Face data set name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from karl.eval.regimes import EvalError


@dataclass
class ImageSource:
    ids: list[str]
    load: Callable[[int], Tensor]  # index -> [3, S, S] in [0, 1]; ImageLoadError on a bad file
    description: str


def _hf_source(name: str, size: int, max_images: int | None, split: str, image_key: str,
               **kwargs: Any) -> ImageSource:
    from karl.data.images import load_image, preprocess
    tag = name if "data_dir" not in kwargs else f"imagefolder:{kwargs['data_dir']}"
    try:
        import datasets
        ds = datasets.load_dataset(name, split=split, **kwargs)
    except Exception as err:  # offline, unknown name, missing split, ...
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: only cached data sets load)" if offline else ""
        raise EvalError(f"could not load Hugging Face data set {tag!r} split {split!r}{hint}: "
                        f"{type(err).__name__}: {err}. Pass a local folder, an image file, "
                        "'imagefolder:PATH' or 'procedural[:N]' instead.") from None
    if image_key not in ds.column_names:
        raise EvalError(f"data set {name!r} has no column {image_key!r} (columns: {ds.column_names}); "
                        "pass --image-key")
    if max_images is not None:
        ds = ds.select(range(min(max_images, len(ds))))
    return ImageSource([f"{tag}/{split}/{i}" for i in range(len(ds))],
                       lambda i: preprocess(load_image(ds[i][image_key]), size), f"{tag} [{split}]")


def open_source(spec: str, size: int, max_images: int | None = None, split: str | None = None,
                image_key: str = "image") -> ImageSource:
    """``--data``: a folder (recursive), an image file, ``procedural[:N]``, ``imagefolder:PATH``
    or a Hugging Face data set name. Images are preprocessed to ``size`` (paper protocol)."""
    from karl.data.images import IMAGE_EXTENSIONS, list_images, load_image, preprocess
    path = Path(spec).expanduser()
    if max_images is not None and max_images < 1:
        raise EvalError(f"--max-images must be >= 1, got {max_images}")
    if spec == "procedural" or spec.startswith("procedural:"):
        from karl.data.procedural import generate
        try:
            n = int(spec.split(":", 1)[1]) if ":" in spec else (max_images or 64)
        except ValueError:
            raise EvalError(f"--data {spec!r}: expected procedural or procedural:N") from None
        n = n if max_images is None else min(n, max_images)
        return ImageSource([f"procedural/{i:05d}" for i in range(n)],
                           lambda i: generate(seed=i, size=size).image, f"procedural ({n} images, seeds 0..{n - 1})")
    if spec.startswith("imagefolder:"):
        return _hf_source("imagefolder", size, max_images, split or "train", image_key,
                          data_dir=spec.split(":", 1)[1])
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise EvalError(f"no image files under {path}")
        files = files[:max_images] if max_images is not None else files
        return ImageSource([f.relative_to(path).as_posix() for f in files],
                           lambda i: preprocess(load_image(files[i]), size), f"folder {path} ({len(files)} images)")
    if path.is_file():
        return ImageSource([path.name], lambda i: preprocess(load_image(path), size), f"file {path}")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix.lower() in IMAGE_EXTENSIONS:
        raise EvalError(f"--data {spec!r}: no such file or folder")  # a path, not a Hub name
    return _hf_source(spec, size, max_images, split or "validation", image_key)
