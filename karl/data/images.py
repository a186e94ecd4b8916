"""Loading, converting and preprocessing single images.

- :func:`load_image`: any path / bytes / PIL image -> RGB PIL image, with clear errors.
- :func:`preprocess`: the paper's eval protocol, shorter side -> ``size`` (bicubic,
  antialiased), then a centre crop -> tensor ``[3, size, size]`` in [0, 1].
- :func:`to_pil`, :func:`to_tensor`: tensor <-> PIL.
- :func:`list_images`: image files under a folder, recursive, sorted.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["ImageLoadError", "load_image", "preprocess", "random_resized_crop", "to_pil", "to_tensor",
           "list_images", "IMAGE_EXTENSIONS", "MAX_PIXELS"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga"})
MAX_PIXELS = 100_000_000  # decompression-bomb guard: refuse larger images (100 MP)

# What load_image accepts: one image. (karl.eval's ImageSource is a set of images with ids.)
ImageInput = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageLoadError(ValueError):
    """The input is missing, empty, not an image, corrupt or too large."""


def _open(src: ImageInput, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Open (lazily) and name the source for error messages."""
    if isinstance(src, Image.Image):
        return src, "PIL image"
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), f"{len(src)} bytes"
        if not data:
            raise ImageLoadError("empty input: 0 bytes")
        fp: BinaryIO | Path = io.BytesIO(data)
    elif isinstance(src, (str, Path)):
        path, name = Path(src), str(src)
        if not path.is_file():
            raise ImageLoadError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{name}: empty file")
        fp = path  # PIL opens and closes the file itself
    elif hasattr(src, "read"):
        fp, name = src, getattr(src, "name", "file object")
    else:
        raise ImageLoadError(f"cannot read an image from {type(src).__name__}")
    try:
        with warnings.catch_warnings():  # we apply our own size limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp), name
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as err:  # PIL's own guard (> 179 MP), in our words
        hit = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageLoadError(_too_large(name, f"{_megapixels(int(hit.group(1)))}" if hit else "the image",
                                        max_pixels)) from None
    except OSError as err:
        raise ImageLoadError(f"{name}: cannot open image ({err})") from None


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.0f} MP" if n >= 1e6 else f"{n:,} pixels"


def _too_large(name: str, size: str, max_pixels: int) -> str:
    """The one refusal of both guards (ours at ``max_pixels``, PIL's at open)."""
    # No "pass max_pixels=" hint: this message reaches app users, who cannot pass it.
    return (f"{name}: {size} exceeds the limit of {_megapixels(max_pixels)} "
            "(a guard against decompression bombs)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on white; 16-bit and float are rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode != "I" or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(src: ImageInput, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load an image as an RGB PIL image.

    Args:
        src: a path, raw bytes, a binary file object or a PIL image.
        max_side: if given, downscale (antialiased) so the longer side is at most this.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageLoadError: missing, empty, unrecognised, corrupt or oversized input.
    """
    img, name = _open(src, max_pixels)
    w, h = img.size
    if w * h > max_pixels:
        raise ImageLoadError(_too_large(name, f"{w}x{h} = {_megapixels(w * h)}", max_pixels))
    if w == 0 or h == 0:
        raise ImageLoadError(f"{name}: image has zero size {w}x{h}")
    try:
        if max_side is not None and max(w, h) > max_side:
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale (fast)
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from None
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(image: Tensor) -> Image.Image:
    """Float tensor [3, H, W] in [0, 1] (any device) -> RGB PIL image (clamped, rounded)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W], got {tuple(image.shape)}")
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def preprocess(img: Image.Image, size: int) -> Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased), centre-crop -> [3, size, size]."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    img = _to_rgb(img)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return to_tensor(img.crop((left, top, left + size, top + size)))


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        min_scale: float = 0.15, flip: bool = True) -> Tensor:
    """A random square crop, side in [min_scale, 1] x shorter side, resized -> [3, size, size].

    The side is drawn log-uniformly (each octave of scale equally often); the position
    uniformly; a horizontal flip with probability 1/2.
    """
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    w, h = img.size
    short = min(w, h)
    lo = max(min_scale * short, min(short, 8))
    side = int(round(float(np.exp(rng.uniform(np.log(lo), np.log(short))))))
    side = min(max(side, 1), short)
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    crop = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if flip and rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(crop)


def list_images(root: str | Path) -> list[Path]:
    """Image files (by extension, case-insensitive) under ``root``, recursive, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))
