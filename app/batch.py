"""Many images at once: safe collection from files and zips, batched tokenization, CSV.

Zips are never extracted to disk: members are read into memory one by one, with limits
on their count, each member's size and the total, so a zip bomb or a ``../`` path cannot
hurt. Non-images and unreadable files are skipped and reported, never fatal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from app.inference import InputError, PreparedImage, check_request, prepare_image
from karl.data.images import IMAGE_EXTENSIONS

__all__ = ["BatchResult", "collect_inputs", "iter_inputs", "prepare_inputs", "no_readable_image", "iter_zip",
           "batch_tokenize", "write_csv", "csv_safe", "download_dir", "new_download_dir",
           "MAX_BATCH_IMAGES", "MAX_MEMBER_BYTES", "MAX_ZIP_TOTAL_BYTES"]

MAX_BATCH_IMAGES = 256                  # images per batch request (the rest are skipped)
MAX_MEMBER_BYTES = 25 * 2 ** 20         # one image inside a zip
MAX_ZIP_TOTAL_BYTES = 512 * 2 ** 20     # all members read from all zips of a request
THUMB_SIZE = 96                         # the gallery keeps thumbnails, not full images


@dataclass
class BatchResult:
    frame: pd.DataFrame         # one row per processed image
    skipped: list[tuple[str, str]]  # (name, reason)
    thumbs: Tensor              # [N, 3, t, t] in [0, 1] for the gallery
    epsilon: float
    epsilon_bin: float
    budget: int
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def _safe_member_name(name: str) -> str | None:
    """A display name for a zip member, or None for paths we refuse (absolute, ``..``)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or any(part == ".." for part in p.parts) or (p.parts and ":" in p.parts[0]):
        return None
    return str(p)


def iter_zip(path: str | Path, budget: list[int], max_members: int = MAX_BATCH_IMAGES,
             max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterable[tuple[str, bytes | None, str]]:
    """Yield (name, bytes or None, reason) for each member; bytes None means skipped.

    ``budget`` is a one-element list of bytes still allowed (shared across zips).
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        yield Path(path).name, None, f"not a readable zip ({err})"
        return
    with zf:
        count = 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = _safe_member_name(info.filename)
            parts = PurePosixPath(info.filename).parts
            if name is None:
                yield info.filename, None, "unsafe path in zip (absolute or '..'): skipped"
                continue
            if any(x.startswith(".") for x in parts) or parts[0] == "__MACOSX":
                continue  # hidden files and macOS resource forks: silently ignored
            if PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
                yield name, None, "not an image file (by extension)"
                continue
            if info.flag_bits & 0x1:
                yield name, None, "encrypted zip member"
                continue
            if count >= max_members:
                yield name, None, f"over the limit of {max_members} images per request"
                continue
            if info.file_size > max_member_bytes:
                yield name, None, f"member larger than {max_member_bytes // 2 ** 20} MB"
                continue
            if info.file_size > budget[0]:
                yield name, None, "over the total size limit for zip contents"
                continue
            try:
                with zf.open(info) as fh:  # header sizes can lie: never read past the limit
                    data = fh.read(min(max_member_bytes, budget[0]) + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as err:
                yield name, None, f"cannot read member ({err})"
                continue
            if len(data) > min(max_member_bytes, budget[0]):
                yield name, None, "member larger than its declared size or the limit"
                continue
            budget[0] -= len(data)
            count += 1
            yield name, data, ""
            data = None  # the consumer has it: do not pin it here while reading the next member


def iter_inputs(files: Iterable[Any] | None, max_images: int = MAX_BATCH_IMAGES
                ) -> Iterator[tuple[str, Any, str]]:
    """Uploaded paths (images and zips) -> (name, path or bytes or None, reason skipped).

    A generator: zip members are read one at a time, so a caller that decodes each item
    before asking for the next holds at most one member's bytes (never the whole zip).
    """
    budget = [MAX_ZIP_TOTAL_BYTES]
    taken = 0
    for f in files or []:
        path = Path(getattr(f, "name", f))  # gradio passes paths; tests may pass file objects
        if path.suffix.lower() == ".zip" or (path.is_file() and zipfile.is_zipfile(path)
                                               and path.suffix.lower() not in IMAGE_EXTENSIONS):
            for name, data, reason in iter_zip(path, budget, max_members=max_images):
                if data is None:
                    yield f"{path.name}/{name}", None, reason
                elif taken >= max_images:
                    yield f"{path.name}/{name}", None, f"over the limit of {max_images} images"
                else:
                    taken += 1
                    yield f"{path.name}/{name}", data, ""
                del data  # do not keep the member alive while the caller decodes the next
        elif taken >= max_images:
            yield path.name, None, f"over the limit of {max_images} images"
        else:
            taken += 1
            yield path.name, str(path), ""


def collect_inputs(files: Iterable[Any] | None, max_images: int = MAX_BATCH_IMAGES
                   ) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """All of :func:`iter_inputs` as lists: ([(name, path or bytes)], [(name, reason skipped)]).

    Holds every member's bytes at once: for inspection and tests. The handlers use
    :func:`prepare_inputs`, which decodes while streaming.
    """
    items: list[tuple[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for name, src, reason in iter_inputs(files, max_images):
        (items.append((name, src)) if src is not None else skipped.append((name, reason)))
    return items, skipped


def prepare_inputs(files: Iterable[Any] | None, size: int, max_images: int = MAX_BATCH_IMAGES,
                   progress: Callable[[float, str], None] | None = None
                   ) -> tuple[list[PreparedImage], list[tuple[str, str]]]:
    """Decode every upload into the model's input as it streams in -> (prepared, skipped).

    Only the small [3, S, S] tensors are kept; each file's bytes are dropped as soon as it
    is decoded, and nothing large is referenced from this frame when it returns, so an
    error raised afterwards (and its traceback) cannot pin the uploads in memory.
    """
    prepared: list[PreparedImage] = []
    skipped: list[tuple[str, str]] = []
    for name, src, reason in iter_inputs(files, max_images):
        if src is None:
            skipped.append((name, reason))
            continue
        if progress:
            progress(0.0, f"reading {len(prepared) + len(skipped) + 1}: {name}")
        try:
            prepared.append(prepare_image(src, size, name=name))
        except InputError as err:
            skipped.append((name, str(err)))
        finally:
            del src
    return prepared, skipped


def no_readable_image(skipped: list[tuple[str, str]], what: str = "the uploaded files") -> InputError:
    """The error for a request where nothing decoded: says so and lists a few reasons."""
    if not skipped:
        return InputError("No files: upload images or a zip of images.")
    reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return InputError(f"None of {what} is a readable image ({len(skipped)} skipped: {reasons}{more})")


def _thumbs(x: Tensor, size: int = THUMB_SIZE) -> Tensor:
    if x.shape[-1] > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.cpu()


@torch.inference_mode()
def batch_tokenize(model, files: Iterable[Any] | None, epsilon: float = 0.05, budget: int | None = None,
                   with_lpips: bool = False, batch_size: int = 16,
                   progress: Callable[[float, str], None] | None = None) -> BatchResult:
    """KC-hat and metrics for every readable image among ``files`` (paths of images or zips).

    Raises InputError when nothing readable was uploaded.
    """
    from karl.metrics import compute_all

    start = time.perf_counter()
    eps, k, notices = check_request(model, epsilon, budget)
    _, bin_value = model.loss_bin(eps)
    prepared, skipped = prepare_inputs(files, model.image_size, progress=progress)
    if not prepared:
        raise no_readable_image(skipped)
    rows, thumbs = [], []
    for start_i in range(0, len(prepared), batch_size):
        chunk = prepared[start_i:start_i + batch_size]
        if progress:
            progress(0.3 + 0.7 * start_i / len(prepared), f"tokenizing {start_i + 1}-{start_i + len(chunk)}"
                     f" of {len(prepared)}")
        x = torch.stack([p.tensor for p in chunk]).to(model.device)
        enc = model.encode(x, epsilon=bin_value, budget=k)
        rec = model.decode(enc).float()
        metrics = {m: v.double().cpu().numpy() for m, v in
                   compute_all(rec, x.float(), lpips_net="alex", with_lpips=with_lpips).items()}
        kc, ckc = enc.kc_hat.cpu().numpy(), enc.continuous_kc.double().cpu().numpy()
        for j, p in enumerate(chunk):
            rows.append({"image": p.name, "kc_hat": int(kc[j]), "continuous_kc": round(float(ckc[j]), 3),
                         "l1": float(metrics["l1"][j]), "psnr": float(metrics["psnr"][j]),
                         "ssim": float(metrics["ssim"][j]),
                         "lpips": float(metrics["lpips"][j]) if with_lpips else np.nan,
                         "met_epsilon": bool(metrics["l1"][j] <= eps),
                         "notes": "; ".join(p.notices)})
        thumbs.append(_thumbs(x.float()))
    if progress:
        progress(1.0, "done")
    return BatchResult(frame=pd.DataFrame(rows), skipped=skipped, thumbs=torch.cat(thumbs),
                       epsilon=eps, epsilon_bin=bin_value, budget=k,
                       seconds=time.perf_counter() - start, notices=notices)


_OUT_DIR = Path(tempfile.gettempdir()) / "karl_app_downloads"
_MAX_DOWNLOADS = 50   # CSVs and report folders kept; older ones are deleted


def download_dir() -> Path:
    """The folder the app writes downloads to (allowed in ``launch(allowed_paths=...)``)."""
    _OUT_DIR.mkdir(parents=True, exist_ok=True)
    return _OUT_DIR


def _prune(keep: int = _MAX_DOWNLOADS - 1) -> None:
    entries = sorted(download_dir().iterdir(), key=lambda p: p.stat().st_mtime)
    for p in entries[:max(0, len(entries) - keep)]:
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


def new_download_dir(stem: str) -> Path:
    """A fresh folder for one download (old downloads pruned: disk use stays bounded)."""
    _prune()
    return Path(tempfile.mkdtemp(prefix=f"{stem}_", dir=download_dir()))


def write_csv(frame: pd.DataFrame, stem: str = "karl_batch") -> Path:
    """Write ``frame`` to a fresh CSV in the download folder."""
    _prune()
    fd, name = tempfile.mkstemp(prefix=f"{stem}_", suffix=".csv", dir=download_dir())
    os.close(fd)
    csv_safe(frame).to_csv(name, index=False)
    return Path(name)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot run as spreadsheet formulas.

    A file named ``=1+2.png`` would otherwise be evaluated by Excel or LibreOffice when the
    CSV is opened; such cells get a leading apostrophe (OWASP's CSV-injection advice).
    Numeric columns are untouched, so negative numbers stay numbers.
    """
    def escape(v: Any) -> Any:
        return "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v

    out = frame.copy()
    for col in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            out[col] = out[col].map(escape)
    return out
