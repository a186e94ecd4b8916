"""The report's images from a data spec: ``--data`` of ``python -m analysis.report``, read through
the one image-source layer (:func:`karl.data.imageset.open_images`, the same images as karl-eval
and karl-complexity) and loaded whole into memory (at most ``max_images``)."""

from __future__ import annotations

import warnings

from torch import Tensor

from karl.data.imageset import open_images
from karl.data.spec import DataSpec

__all__ = ["load_data"]


def load_data(spec: str | DataSpec, size: int, max_images: int | None = 64,
              seed: int = 0) -> tuple[Tensor, list[str], str]:
    """``--data``, any data spec -> (images [N, 3, size, size], their ids, a one-line description).

    More than ``max_images`` images: the seeded subset every tool uses. Unreadable files are
    skipped with a warning. :class:`karl.data.spec.DataSpecError` when the spec names nothing,
    ``FileNotFoundError`` when none of its images is readable.
    """
    images = open_images(spec, size, max_images, seed)
    x, names, skipped = images.load_all()
    for name, why in skipped:
        warnings.warn(f"skipping {name}: {why}", stacklevel=2)
    if not names:
        raise FileNotFoundError(f"no readable images in {images.description}")
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return x, names, images.description + note
