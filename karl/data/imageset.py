"""One image-source layer: a data spec -> a fixed, ordered set of images, the same in every tool.

    images = open_images("procedural:64", size=128)     # karl-eval, karl-complexity, the report, the app
    x = images.load(0)                                  # [3, 128, 128] in [0, 1]
    batch, ids, skipped = images.load_all()             # readable images, their ids, (id, why) of the rest

:func:`open_images` is the one function that turns a :class:`~karl.data.spec.DataSpec` into
images for evaluation, complexity scoring, the report and the app's analysis sets; training's
endless random crops come from :func:`karl.data.datasets.build_dataset` (a different need).

=====================  =====================================  ===========================================
spec kind              images (in this order)                 ids
=====================  =====================================  ===========================================
``procedural[:N]``     ``generate(seed=i)`` for i in 0..N-1    ``procedural/00000`` ...
                       (N: the count, else ``max_images``,
                       else 64)
``folder``, ``corpus``  the image files under it (recursive,   the path relative to the folder
                       sorted; ``corpus`` is built first)
``glob``               the matched files, sorted               the path as matched
``file``               that image; a non-image file (``.txt``) the file name; a list's paths as written
                       lists one image path a line
``imagefolder``, ``hf`` the rows of ``split`` (default:         ``<spec>/<split>/<row>``
                       ``DataSpec.default_split``)
=====================  =====================================  ===========================================

Every image is preprocessed the same way (:func:`karl.data.images.preprocess`: shorter side to
``size``, centre crop); procedural images are rendered at ``size``. With ``max_images`` smaller
than the set, a seeded subset (``seed``, kept in the set's order) is used, the same in every tool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from karl.data.spec import DataSpec, DataSpecError, ensure_corpus, load_hf_split, parse_data_spec

__all__ = ["ImageSet", "open_images", "subset_indices", "read_image_list", "DEFAULT_PROCEDURAL"]

DEFAULT_PROCEDURAL = 64  # images of a plain ``procedural`` spec without max_images


@dataclass(frozen=True)
class ProceduralSeed:
    """Procedural image ``seed``, rendered at the set's size when it is read."""
    seed: int


class ImageSet(Dataset):
    """A fixed, ordered set of images named by a data spec; item ``i`` is ``[3, size, size]`` in [0, 1].

    ``ids`` name the images (stable across runs: results files are keyed by them);
    :meth:`file` gives an image's file path where it has one (karl-complexity's ``path`` column).
    """

    def __init__(self, spec: DataSpec, size: int, ids: list[str], read: Callable[[int], Any],
                 description: str, files: Callable[[int], str | None] | None = None):
        self.spec, self.size, self.ids, self.description = spec, int(size), list(ids), description
        self._read, self._files = read, files

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tensor:
        return self.load(i)

    def load(self, i: int, size: int | None = None) -> Tensor:
        """Image ``i`` -> [3, S, S] with S = ``size`` or the set's. :class:`karl.data.images.ImageLoadError`
        (a ValueError) when it does not decode."""
        from karl.data.images import load_image, preprocess
        size, src = size or self.size, self._read(i)
        if isinstance(src, ProceduralSeed):
            from karl.data.procedural import generate
            return generate(seed=src.seed, size=size).image
        return preprocess(load_image(src), size)

    def file(self, i: int) -> str | None:
        """The file image ``i`` is read from (None for generated images and rows without a path)."""
        return self._files(i) if self._files is not None else None

    def load_all(self) -> tuple[Tensor, list[str], list[tuple[str, str]]]:
        """Every readable image -> (images [N, 3, size, size], their ids, [(id, why)] of the others)."""
        images, ids, skipped = [], [], []
        for i, name in enumerate(self.ids):
            try:
                images.append(self.load(i))
            except (ValueError, OSError) as err:  # ImageLoadError is a ValueError
                msg, path = str(err), self.file(i)  # ImageLoadError names the file first: say it once
                skipped.append((name, msg[len(path) + 2:] if path and msg.startswith(f"{path}: ") else msg))
                continue
            ids.append(name)
        stacked = torch.stack(images) if images else torch.empty(0, 3, self.size, self.size)
        return stacked, ids, skipped


def subset_indices(n: int, max_images: int | None, seed: int = 0) -> list[int]:
    """The indices every tool uses out of ``n`` images: all, or a seeded subset of ``max_images``
    in their original order."""
    if max_images is None or n <= max_images:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, max_images, replace=False))


def read_image_list(list_file: Path) -> list[Path]:
    """A text file with one image path a line; blank lines and '#' comments are ignored.

    Relative paths are taken relative to the list file's folder when they exist there,
    else relative to the working directory.
    """
    paths = []
    for line in list_file.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        if not p.is_absolute() and (list_file.parent / p).exists():
            p = list_file.parent / p
        paths.append(p)
    return paths


def _sized(text: str, keep: list[int], n: int) -> str:
    if len(keep) == n:
        return f"{text} ({n} image{'s' if n != 1 else ''})"
    return f"{text} ({len(keep)} of {n} images, a seeded subset)"


def _procedural(spec: DataSpec, size: int, max_images: int | None, seed: int) -> ImageSet:
    n = spec.count or max_images or DEFAULT_PROCEDURAL
    keep = subset_indices(n, max_images, seed)
    what = f"procedural, seeds 0..{n - 1}"
    return ImageSet(spec, size, [f"procedural/{i:05d}" for i in keep], lambda i: ProceduralSeed(keep[i]),
                    _sized(what, keep, n))


def _files(spec: DataSpec, files: list[Path], ids: list[str], size: int, max_images: int | None,
           seed: int, what: str) -> ImageSet:
    if not files:
        raise DataSpecError(f"{spec.text!r}: no image files in {what}")
    keep = subset_indices(len(files), max_images, seed)
    description = _sized(what, keep, len(files))
    files, ids = [files[i] for i in keep], [ids[i] for i in keep]
    return ImageSet(spec, size, ids, lambda i: files[i], description, lambda i: str(files[i]))


def _hf(spec: DataSpec, size: int, max_images: int | None, seed: int, split: str | None,
        image_key: str) -> ImageSet:
    import datasets
    ds, split = load_hf_split(spec, [split or spec.default_split], image_key)
    ds = ds.cast_column(image_key, datasets.Image(decode=False))  # a bad file is skipped, not fatal
    keep = subset_indices(len(ds), max_images, seed)

    def cell(i: int) -> dict:  # {"bytes": ..., "path": ...}: either may be None
        return ds[keep[i]][image_key]

    ids = [f"{spec.text}/{split}/{r}" for r in keep]
    return ImageSet(spec, size, ids, lambda i: cell(i)["bytes"] or cell(i)["path"],
                    _sized(f"{spec.text} [{split}]", keep, len(ds)), lambda i: cell(i).get("path") or None)


def open_images(spec: str | Path | DataSpec, size: int, max_images: int | None = None, seed: int = 0,
                split: str | None = None, image_key: str = "image") -> ImageSet:
    """The images a data spec names (see the module docstring), preprocessed to ``size``.

    Raises :class:`karl.data.spec.DataSpecError` (one line) when the spec names nothing usable:
    a missing path, an empty folder, a Hugging Face set that does not load (``HFLoadError``).
    """
    if max_images is not None and max_images < 1:
        raise DataSpecError(f"max_images must be >= 1, got {max_images}")
    data = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if data.kind == "procedural":
        return _procedural(data, size, max_images, seed)
    if data.kind in ("hf", "imagefolder"):
        return _hf(data, size, max_images, seed, split, image_key)
    if data.kind == "file":
        from karl.data.images import IMAGE_EXTENSIONS
        if data.path.suffix.lower() in IMAGE_EXTENSIONS:
            return _files(data, [data.path], [data.path.name], size, max_images, seed, f"file {data.path}")
        paths = read_image_list(data.path)
        return _files(data, paths, [str(p) for p in paths], size, max_images, seed, f"list {data.path}")
    if data.kind == "glob":
        files = data.image_files()
        return _files(data, files, [f.as_posix() for f in files], size, max_images, seed, f"glob {data.text}")
    root = ensure_corpus(data.path) if data.kind == "corpus" else data.path
    files = DataSpec("folder", str(root), path=root).image_files()
    return _files(data, files, [f.relative_to(root).as_posix() for f in files], size, max_images, seed,
                  f"{data.kind} {root}")
