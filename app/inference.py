"""Pure inference helpers behind the app: loading uploads, bounded caches, tokenize, JSON.

Nothing here imports gradio. The flow for one image::

    prepare_image(src, size)            -> PreparedImage (RGB, downscaled, cropped; keyed by hash)
    base_grid(model, prep)              -> the base tokenizer's grid, cached per image
    halting_sweep(model, prep, budget)  -> model.sweep: one batched encoder pass at all 19 loss
                                           bins (a karl.model.Sweep), cached
    tokenize(model, src, eps, budget)   -> TokenizeResult (decode of the sweep's encoding at eps)

so a new upload costs base encode + one encoder pass (19 rows) + one decoder pass, and
moving the epsilon slider costs one decoder pass plus metrics (a column of the cached sweep
is exactly the encoding at that epsilon). Epsilon and budget follow karl's one rule
(``karl.model.check_epsilon`` / ``check_budget``), as the command lines do. Every cache is a bounded LRU: memory stays flat
over any number of requests.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from karl.data.images import ImageLoadError, load_image, preprocess
from karl.model.encoding import (Encoding, RequestError, Sweep, check_budget, check_count,  # noqa: F401
                                 check_epsilon)
from karl.model.encoding import _finite_number  # noqa: F401 (app/human.py's images-per-category check)

__all__ = ["InputError", "PreparedImage", "TokenizeResult", "LRUCache",
           "prepare_image", "base_grid", "halting_sweep", "tokenize", "complexity_json",
           "error_heatmap", "to_display", "check_request", "check_count", "clear_caches",
           "MAX_SIDE", "MAX_UPLOAD_MB", "ERROR_VMAX", "DISPLAY_SIZE"]

MAX_SIDE = 2048          # longer side of an upload after loading (bigger ones are downscaled)
MAX_UPLOAD_MB = 25       # gradio's max_file_size for every upload
ERROR_VMAX = 0.25        # the error heatmap saturates at this per-pixel |error|
DISPLAY_SIZE = 256       # small model inputs are upscaled (nearest) to at least this for display
LPIPS_NET = "alex"


InputError = RequestError
"""A request the app refuses, with a message meant for the user (karl's ``RequestError``: a bad
epsilon, budget or cap, or here also an unreadable upload)."""


# ----------------------------------------------------------------------------- caches

class LRUCache:
    """A thread-safe least-recently-used cache holding at most ``maxsize`` entries."""

    def __init__(self, maxsize: int):
        assert maxsize >= 1, f"maxsize must be >= 1, got {maxsize}"
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> Any:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        value = self.get(key)
        return value if value is not None else self.put(key, compute())

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


_PREPARED = LRUCache(32)    # (path, size, mtime, model size) -> PreparedImage
# Per model (weakly keyed: a dropped model frees its entries).
_MODEL_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, LRUCache]]" = weakref.WeakKeyDictionary()
_MODEL_LOCK = threading.Lock()


def model_caches(model) -> dict[str, LRUCache]:
    """The bounded caches of ``model``: base grids, halting sweeps, results, UI figures."""
    with _MODEL_LOCK:
        if model not in _MODEL_CACHES:
            _MODEL_CACHES[model] = {"grid": LRUCache(16), "sweep": LRUCache(16), "result": LRUCache(24),
                                    "figures": LRUCache(24)}
        return _MODEL_CACHES[model]


def clear_caches() -> None:
    _PREPARED.clear()
    with _MODEL_LOCK:
        for caches in _MODEL_CACHES.values():
            for c in caches.values():
                c.clear()


# ----------------------------------------------------------------------------- loading

@dataclass
class PreparedImage:
    key: str                 # sha1 of the model-input tensor: identical pixels share caches
    tensor: Tensor           # [3, S, S] in [0, 1], what the model sees
    name: str
    notices: list[str] = field(default_factory=list)


_MODE_NOTES = {
    "L": "grayscale image converted to RGB", "I;16": "16-bit grayscale image converted to RGB",
    "I": "32-bit grayscale image converted to RGB", "F": "float grayscale image converted to RGB",
    "1": "1-bit image converted to RGB", "P": "palette image converted to RGB",
    "CMYK": "CMYK image converted to RGB", "YCbCr": "YCbCr image converted to RGB",
    "LA": "grayscale + alpha image: alpha composited on white",
    "RGBA": "alpha channel composited on white", "PA": "palette + alpha: composited on white",
}


def _peek(src: Any) -> tuple[str | None, tuple[int, int] | None, bool]:
    """(mode, size, has transparency) from the header only; (None, None, False) if unreadable."""
    import io
    import warnings
    try:
        with warnings.catch_warnings():  # load_image's own size guard words the refusal
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(src, Image.Image):
                return src.mode, src.size, "transparency" in src.info
            if isinstance(src, (str, Path, bytes, bytearray)):
                fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
                with Image.open(fp) as im:
                    return im.mode, im.size, "transparency" in im.info
    except Exception:  # load_image raises the clear error below
        pass
    return None, None, False


def _from_array(arr: np.ndarray) -> Image.Image:
    """A numpy image ([H, W], [H, W, 1|3|4]; uint8 or float in [0, 1]) -> PIL."""
    if arr.size == 0:
        raise InputError("empty image array")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        arr = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(f"cannot read an image array of shape {arr.shape}")
    return Image.fromarray(arr)


def _source_name(src: Any) -> str:
    if isinstance(src, (str, Path)):
        return Path(src).name
    return "image"


def prepare_image(src: Any, size: int, max_side: int = MAX_SIDE, name: str | None = None) -> PreparedImage:
    """Load any upload (path, bytes, PIL, numpy) -> the model's [3, size, size] input.

    Grayscale, alpha and palette images are converted (alpha over white); images longer
    than ``max_side`` are downscaled first; then the shorter side is resized to ``size``
    and the centre cropped. Each conversion adds a line to ``notices``.

    Raises:
        InputError: no input, or an unreadable, corrupt, empty or oversized image.
    """
    if src is None or (isinstance(src, str) and not src.strip()):
        raise InputError("No image: upload a file, paste one or pick an example.")
    path_key = None
    if isinstance(src, (str, Path)):
        p = Path(src)
        if p.is_file():
            st = p.stat()
            path_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, size, max_side)
            hit = _PREPARED.get(path_key)
            if hit is not None:
                return hit
    if isinstance(src, np.ndarray):
        src = _from_array(src)
    label = name or _source_name(src)
    mode, orig_size, transparent = _peek(src)
    try:
        pil = load_image(src, max_side=max_side)
    except ImageLoadError as err:
        msg = str(err)
        if isinstance(src, (str, Path)):  # do not show server paths: name the file only
            msg = msg.replace(str(src), "").lstrip(": ")
        raise InputError(f"Cannot read {label}: {msg}") from None
    notices = []
    if mode in _MODE_NOTES and mode != "RGB":
        notices.append(_MODE_NOTES[mode])
    elif transparent:
        notices.append("transparent palette colour composited on white")
    if orig_size is not None and max(orig_size) > max_side:
        notices.append(f"large image {orig_size[0]}x{orig_size[1]} downscaled to "
                       f"{pil.width}x{pil.height} (limit {max_side} px)")
    w, h = pil.size
    if (w, h) != (size, size):
        crop = "centre-cropped" if w != h else "resized"
        notices.append(f"{w}x{h} {crop} to the model's {size}x{size} input")
    tensor = preprocess(pil, size)
    key = hashlib.sha1(tensor.numpy().tobytes()).hexdigest()
    prep = PreparedImage(key=key, tensor=tensor, name=label, notices=notices)
    if path_key is not None:
        _PREPARED.put(path_key, prep)
    return prep


# ----------------------------------------------------------------------------- model passes

def check_request(model, epsilon: Any, budget: Any) -> tuple[float, int, list[str]]:
    """Validate epsilon and budget -> (epsilon, budget, notices); InputError if invalid.

    karl's one rule (``karl.model.check_epsilon`` / ``check_budget``, also behind
    ``karl-complexity``, ``karl-eval`` and the report) for every entry point (UI sliders,
    ``/tokenize``, ``/complexity``, Batch, Analysis, Tokens): a value above the trained range
    uses the end of that range and says so in a notice; a value below it, or anything that is
    not a finite number, is refused with a one-line message. Epsilon above the last loss bin
    conditions on the last bin; a budget above ``max_tokens`` uses ``max_tokens``.
    """
    eps, notices = check_epsilon(epsilon, model.config.loss_bins)
    k, more = check_budget(budget, model.max_tokens)
    return eps, k, notices + more


def base_grid(model, prep: PreparedImage):
    """The base tokenizer's encoding of ``prep`` ([1, ...] on the model's device), cached."""
    def compute():
        with torch.inference_mode():
            return model.base_encode(prep.tensor[None].to(model.device))
    return model_caches(model)["grid"].get_or_compute(prep.key, compute)


def halting_sweep(model, prep: PreparedImage, budget: int) -> Sweep:
    """``model.sweep`` of ``prep`` at every loss bin (column j = bin j), cached per image and budget."""
    def compute() -> Sweep:
        with torch.inference_mode():
            return model.sweep(prep.tensor[None], budget=budget, base_grid=base_grid(model, prep))
    return model_caches(model)["sweep"].get_or_compute((prep.key, budget), compute)


# ----------------------------------------------------------------------------- results

@dataclass
class TokenizeResult:
    name: str
    key: str
    original: Tensor            # [3, S, S] in [0, 1] (cpu)
    reconstruction: Tensor      # [3, S, S] in [0, 1] (cpu)
    epsilon: float              # requested
    epsilon_bin: float          # the loss bin the model conditioned on
    budget: int
    kc_hat: int
    continuous_kc: float
    halting_probs: np.ndarray   # [K]
    keep: np.ndarray            # [K] bool
    token_ids: list[int] | None  # codebook ids of the kept tokens (quantised models)
    l1: float
    psnr: float
    ssim: float
    notices: list[str] = field(default_factory=list)
    _lpips: list = field(default_factory=list, repr=False)  # [value] once computed (shared by copies)

    @property
    def kept_positions(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.keep)]

    @property
    def met_epsilon(self) -> bool:
        """Whether the reconstruction is within the epsilon asked (not the rounded-up bin)."""
        return self.l1 <= self.epsilon

    def lpips(self) -> float | None:
        """LPIPS (AlexNet) of this reconstruction, computed on first use only; None if unavailable."""
        if not self._lpips:
            from karl.metrics import lpips
            try:
                with torch.inference_mode():
                    value = float(lpips(self.reconstruction[None], self.original[None], net=LPIPS_NET)[0])
            except Exception as err:  # weights unavailable offline: report, do not fail
                self.notices.append(f"LPIPS unavailable: {err}")
                value = None
            self._lpips.append(value)
        return self._lpips[0]

    def error_map(self) -> np.ndarray:
        """Per-pixel mean |original - reconstruction| over channels: [S, S]."""
        return (self.original - self.reconstruction).abs().mean(0).numpy()


def tokenize(model, image: Any, epsilon: float = 0.05, budget: int | None = None,
             sweep: bool = True, name: str | None = None) -> TokenizeResult:
    """Tokenize one image at ``epsilon`` with ``budget`` tokens and decode it.

    ``image`` is a path, bytes, PIL, numpy array or a :class:`PreparedImage`. With
    ``sweep`` the encoding is a row of the cached all-bins sweep (what the UI needs for its
    curves anyway); without it, a single encoder pass (the ``/complexity`` endpoint). A
    result is cached per (image, loss bin, budget), its LPIPS computed at most once.
    """
    eps, k, notices = check_request(model, epsilon, budget)
    prep = image if isinstance(image, PreparedImage) else prepare_image(image, model.image_size, name=name)
    idx, bin_value = model.loss_bin(eps)
    cache = model_caches(model)["result"]
    hit = cache.get((prep.key, idx, k))
    if hit is None:
        hit = cache.put((prep.key, idx, k), _finish(model, prep, bin_value, _encoding(model, prep, k, idx, sweep)))
    # The cached object serves other epsilons of the same bin: copy the per-request fields.
    return replace(hit, epsilon=eps, name=prep.name, notices=prep.notices + notices + hit.notices,
                   _lpips=hit._lpips)


def _encoding(model, prep: PreparedImage, k: int, idx: int, sweep: bool) -> Encoding:
    """``prep``'s program at loss bin ``idx``: a column of the cached sweep, or one encoder pass."""
    if sweep:
        return halting_sweep(model, prep, k).encoding(idx)   # the sweep's columns are the loss bins
    with torch.inference_mode():
        return model.encode(prep.tensor[None].to(model.device), epsilon=model.config.loss_bins[idx],
                            budget=k, base_grid=base_grid(model, prep))


def _finish(model, prep: PreparedImage, bin_value: float, enc: Encoding) -> TokenizeResult:
    """Decode ``enc`` (one image) and measure it against ``prep``."""
    from karl.metrics import l1, psnr, ssim

    with torch.inference_mode():
        rec = model.decode(enc)[0].float().cpu()
        x, y = rec[None], prep.tensor[None]
        l1_v, psnr_v, ssim_v = float(l1(x, y)[0]), float(psnr(x, y)[0]), float(ssim(x, y)[0])
    keep = enc.keep[0].cpu().numpy()
    kept_ids = None if enc.token_ids is None else [int(i) for i in enc.token_ids[0].cpu()[enc.keep[0].cpu()]]
    return TokenizeResult(name=prep.name, key=prep.key, original=prep.tensor, reconstruction=rec,
                          epsilon=bin_value, epsilon_bin=bin_value, budget=enc.budget, kc_hat=int(enc.kc_hat[0]),
                          continuous_kc=float(enc.continuous_kc[0]),
                          halting_probs=enc.halting_probs[0].double().cpu().numpy(), keep=keep,
                          token_ids=kept_ids, l1=l1_v, psnr=psnr_v, ssim=ssim_v)


def complexity_json(result: TokenizeResult, with_lpips: bool = True) -> dict[str, Any]:
    """The ``/complexity`` payload: plain JSON types only."""
    lp = result.lpips() if with_lpips else None
    return {"kc_hat": int(result.kc_hat), "continuous_kc": round(float(result.continuous_kc), 6),
            "l1": float(result.l1), "psnr": float(result.psnr), "ssim": float(result.ssim),
            "lpips": None if lp is None else float(lp), "epsilon": float(result.epsilon),
            "epsilon_bin": float(result.epsilon_bin), "budget": int(result.budget)}


# ----------------------------------------------------------------------------- rendering

def to_display(image: Tensor, min_size: int = DISPLAY_SIZE) -> np.ndarray:
    """[3, S, S] in [0, 1] -> uint8 [H, W, 3], upscaled (nearest, integer factor) to >= min_size."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    factor = max(1, math.ceil(min_size / max(arr.shape[:2])))
    return np.repeat(np.repeat(arr, factor, 0), factor, 1) if factor > 1 else arr


_LUT: list[np.ndarray] = []


def _colormap() -> np.ndarray:
    """256 x 3 uint8 'inferno' lookup table (grey ramp if matplotlib is missing)."""
    if not _LUT:
        try:
            from matplotlib import colormaps
            lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
        except Exception:  # pragma: no cover - matplotlib is a requirement
            lut = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
        _LUT.append(lut)
    return _LUT[0]


def error_heatmap(err: np.ndarray, vmax: float = ERROR_VMAX, min_size: int = DISPLAY_SIZE) -> np.ndarray:
    """Per-pixel error [S, S] -> uint8 RGB [H, W, 3] (inferno, 0 -> black, >= vmax -> yellow)."""
    idx = np.clip(np.asarray(err, dtype=np.float64) / vmax, 0, 1) * 255
    rgb = _colormap()[idx.round().astype(np.uint8)]
    factor = max(1, math.ceil(min_size / max(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, factor, 0), factor, 1) if factor > 1 else rgb
