"""Where karl-eval's images come from: any data spec (:mod:`karl.data.spec`): a folder, a file,
a glob, procedural[:N], corpus, imagefolder:PATH or a Hugging Face data set name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from karl.data.spec import DataSpec, DataSpecError, HFLoadError, ensure_corpus, load_hf_split, parse_data_spec
from karl.eval.regimes import EvalError


@dataclass
class ImageSource:
    ids: list[str]
    load: Callable[[int], Tensor]  # index -> [3, S, S] in [0, 1]; ImageLoadError on a bad file
    description: str


def _hf_source(spec: DataSpec, size: int, max_images: int | None, split: str, image_key: str) -> ImageSource:
    from karl.data.images import load_image, preprocess
    try:
        ds, split = load_hf_split(spec, [split], image_key)
    except HFLoadError as err:
        raise EvalError(f"{err}. Pass a local folder, an image file, 'imagefolder:PATH' or "
                        "'procedural[:N]' instead.") from None
    except DataSpecError as err:  # no such column
        raise EvalError(f"{err}; pass --image-key") from None
    if max_images is not None:
        ds = ds.select(range(min(max_images, len(ds))))
    tag = spec.text
    return ImageSource([f"{tag}/{split}/{i}" for i in range(len(ds))],
                       lambda i: preprocess(load_image(ds[i][image_key]), size), f"{tag} [{split}]")


def _files_source(spec: DataSpec, files: list[Path], size: int, max_images: int | None,
                  root: Path | None) -> ImageSource:
    """Files named relative to ``root`` (a folder) or as matched (a glob)."""
    from karl.data.images import load_image, preprocess
    if not files:
        raise EvalError(f"no image files under {spec.path}")
    files = files[:max_images] if max_images is not None else files
    ids = [f.relative_to(root).as_posix() if root is not None else f.as_posix() for f in files]
    what = f"folder {spec.path}" if spec.kind == "folder" else f"{spec.kind} {spec.text}"
    return ImageSource(ids, lambda i: preprocess(load_image(files[i]), size), f"{what} ({len(files)} images)")


def open_source(spec: str, size: int, max_images: int | None = None, split: str | None = None,
                image_key: str = "image") -> ImageSource:
    """``--data``: any data spec (:func:`karl.data.spec.parse_data_spec`). Images are
    preprocessed to ``size`` (paper protocol)."""
    from karl.data.images import load_image, preprocess
    if max_images is not None and max_images < 1:
        raise EvalError(f"--max-images must be >= 1, got {max_images}")
    try:
        data = parse_data_spec(spec)
        if data.kind == "corpus":
            data = parse_data_spec(ensure_corpus(data.path))  # its photos, as a folder
    except DataSpecError as err:
        raise EvalError(f"--data {err}") from None
    if data.kind == "procedural":
        from karl.data.procedural import generate
        n = data.count or max_images or 64
        n = n if max_images is None else min(n, max_images)
        return ImageSource([f"procedural/{i:05d}" for i in range(n)],
                           lambda i: generate(seed=i, size=size).image, f"procedural ({n} images, seeds 0..{n - 1})")
    if data.kind in ("imagefolder", "hf"):
        return _hf_source(data, size, max_images, split or data.default_split, image_key)
    if data.kind == "file":
        path = data.path
        return ImageSource([path.name], lambda i: preprocess(load_image(path), size), f"file {path}")
    return _files_source(data, data.image_files(), size, max_images, data.path if data.kind == "folder" else None)
