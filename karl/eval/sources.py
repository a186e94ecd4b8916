"""Where karl-eval's images come from: ``--data``, any data spec, read through the one image-source
layer (:func:`karl.data.imageset.open_images`), so every tool sees the same images for a spec."""

from __future__ import annotations

from karl.data.imageset import ImageSet
from karl.data.spec import DataSpecError, HFLoadError
from karl.eval.regimes import EvalError

ImageSource = ImageSet  # ids, load(i), description: what the runner reads


def open_source(spec: str, size: int, max_images: int | None = None, split: str | None = None,
                image_key: str = "image") -> ImageSet:
    """``--data`` -> its images, preprocessed to ``size`` (paper protocol); ``--max-images`` N keeps
    the seeded subset every tool uses (:func:`karl.data.imageset.subset_indices`)."""
    from karl.data.imageset import open_images
    if max_images is not None and max_images < 1:
        raise EvalError(f"--max-images must be >= 1, got {max_images}")
    try:
        return open_images(spec, size, max_images, split=split, image_key=image_key)
    except HFLoadError as err:
        raise EvalError(f"{err}. Pass a local folder, an image file, 'imagefolder:PATH' or "
                        "'procedural[:N]' instead.") from None
    except DataSpecError as err:  # names nothing, no such column
        hint = "; pass --image-key" if "has no column" in str(err) else ""
        raise EvalError(f"--data {err}{hint}") from None
