"""Where the images come from: one data spec string, parsed once for every tool.

``karl-eval --data``, ``python -m analysis.report --data``, ``karl-complexity IMAGES`` and the
app's built-in image set all read the same strings, through one function,
:func:`karl.data.imageset.open_images` (the images a spec names):

==================  ============  =====================================================
spec                kind          meaning
==================  ============  =====================================================
``procedural``      procedural    generated images of known description length
``procedural:N``    procedural    N of them
``corpus``          corpus        the offline photo corpus (``data_cache/corpus``), built
                                  from installed packages on first use
``imagefolder:DIR`` imagefolder   a Hugging Face ``imagefolder`` data set in DIR
``path/to/dir``     folder        a folder of images (recursive)
``path/to/x.png``   file          one image file, or a text file listing image paths
``'data/*.jpg'``    glob          the files a glob matches (``**`` recurses)
``org/name``        hf            a Hugging Face data set (Hub or its local cache)
==================  ============  =====================================================

Keywords come first: write ``./corpus`` for a folder named ``corpus``. A string that looks
like a path (starts with ``.``, ``/`` or ``~``, has two or more ``/``, or an image suffix)
but names nothing is an error, not a data set name.

Training's ``DataConfig`` maps onto the same kinds with :func:`spec_from_config`.
"""

from __future__ import annotations

import glob as _glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

__all__ = ["DataSpec", "DataKind", "DataSpecError", "MissingPathError", "HFLoadError", "parse_data_spec",
           "spec_from_config", "hf_spec", "load_hf_split", "ensure_corpus", "DEFAULT_CORPUS", "SPEC_FORMS"]

DataKind = Literal["procedural", "corpus", "imagefolder", "folder", "file", "glob", "hf"]
DEFAULT_CORPUS = "data_cache/corpus"
SPEC_FORMS = "a folder, an image file, a glob, procedural[:N], corpus, imagefolder:DIR or a Hugging Face name"
GLOB_CHARS = frozenset("*?[")


class DataSpecError(ValueError):
    """A data spec that names nothing usable; the message is one line and names the spec."""


class MissingPathError(DataSpecError):
    """A spec that looks like a path but names no file, folder or glob match."""


class HFLoadError(DataSpecError):
    """``datasets`` could not load a split (offline and not cached, unknown name or split, ...)."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec. ``text`` is the canonical string (what ids and descriptions show)."""
    kind: DataKind
    text: str
    path: Path | None = None   # folder, file, glob pattern, imagefolder dir, corpus root
    count: int | None = None   # procedural:N (None: the consumer's default)
    name: str | None = None    # the ``datasets`` name: "imagefolder" or the Hub name

    def __post_init__(self) -> None:
        if self.kind not in get_args(DataKind):
            raise DataSpecError(f"data kind must be one of {', '.join(get_args(DataKind))}, got {self.kind!r}")

    @property
    def default_split(self) -> str:
        """An imagefolder has only ``train`` unless its folders say otherwise; Hub sets are evaluated
        on ``validation``."""
        return "train" if self.kind == "imagefolder" else "validation"

    def image_files(self) -> list[Path]:
        """The files of a folder (recursive, sorted), file or glob (sorted matches)."""
        from karl.data.images import list_images
        if self.kind == "folder":
            return list_images(self.path)
        if self.kind == "file":
            return [self.path]
        if self.kind == "glob":
            return _glob_files(str(self.path))
        raise DataSpecError(f"{self.text!r} is a {self.kind} spec, not files on disk")


def _glob_files(pattern: str) -> list[Path]:
    return [Path(m) for m in sorted(_glob.glob(os.path.expanduser(pattern), recursive=True))
            if Path(m).is_file()]


# A Hub data set id: "name" or "org/name" (letters, digits, "-", "_", "."), no empty part.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(text: str) -> bool:
    """Anything that cannot be a Hub id is a path: a mistyped folder (``nope/``) fails at once
    instead of turning into a Hub request."""
    from karl.data.images import IMAGE_EXTENSIONS
    return (text.startswith((".", "/", "~")) or text.count("/") > 1
            or Path(text).suffix.lower() in IMAGE_EXTENSIONS or not _HUB_ID.fullmatch(text))


def _procedural(text: str) -> DataSpec:
    if text == "procedural":
        return DataSpec("procedural", text)
    try:
        n = int(text.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise DataSpecError(f"{text!r}: expected procedural or procedural:N with N >= 1")
    return DataSpec("procedural", text, count=n)


def parse_data_spec(text: str | Path) -> DataSpec:
    """``text`` -> :class:`DataSpec`; :class:`DataSpecError` (one line) when it names nothing.

    Checks that folders, files and glob matches exist; a Hugging Face name is only checked when
    it is loaded (:func:`load_hf_split`).
    """
    text = str(text).strip()
    if not text:
        raise DataSpecError(f"empty data spec: expected {SPEC_FORMS}")
    if text == "procedural" or text.startswith("procedural:"):
        return _procedural(text)
    if text == "corpus":
        return DataSpec("corpus", text, path=Path(DEFAULT_CORPUS))
    if text.startswith("imagefolder:"):
        root = Path(text.split(":", 1)[1]).expanduser()
        if not root.is_dir():
            raise MissingPathError(f"{text!r}: no such folder {root}")
        return DataSpec("imagefolder", text, path=root, name="imagefolder")
    path = Path(text).expanduser()
    if path.is_dir():
        return DataSpec("folder", text, path=path)
    if path.is_file():
        return DataSpec("file", text, path=path)
    if GLOB_CHARS & set(text):
        if not _glob_files(text):
            raise MissingPathError(f"{text!r}: the glob matches no file")
        return DataSpec("glob", text, path=Path(text))
    if _looks_like_path(text):
        raise MissingPathError(f"{text!r}: no such file or folder")
    return DataSpec("hf", text, name=text)


def spec_from_config(data_cfg) -> DataSpec:
    """Training's :class:`karl.config.DataConfig` as a spec: synthetic -> procedural, folder,
    hf (a Hub name, or an imagefolder in ``data.path``), corpus and mixed -> corpus."""
    source, path = data_cfg.source, data_cfg.path
    if source == "synthetic":
        return DataSpec("procedural", "procedural")
    if source == "folder":
        if not path:
            raise ValueError("data.source=folder needs data.path")
        return DataSpec("folder", str(path), path=Path(path))
    if source == "hf":
        return hf_spec(data_cfg.hf_name, path)
    if source in ("corpus", "mixed"):
        return DataSpec("corpus", "corpus", path=Path(path or DEFAULT_CORPUS))
    raise ValueError(f"data.source must be one of synthetic, folder, hf, corpus, mixed, got {source!r}")


def hf_spec(name: str | None, data_dir: str | Path | None = None) -> DataSpec:
    """A Hub data set ``name`` (``data_dir``: its ``data_dir`` argument), or without a name the
    ``imagefolder`` in ``data_dir`` (training's data.source=hf with data.hf_name / data.path)."""
    if name:
        return DataSpec("hf", name, path=Path(data_dir) if data_dir else None, name=name)
    if not data_dir:
        raise ValueError("data.source=hf needs data.hf_name, or data.path for an imagefolder")
    return DataSpec("imagefolder", f"imagefolder:{data_dir}", path=Path(data_dir), name="imagefolder")


# ----------------------------------------------------------------------------- loaders

def _offline() -> bool:
    return any(os.environ.get(k) == "1" for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (DNS or a TCP connect within HUB_PROBE_TIMEOUT_S), or None.

    ``datasets`` retries an unreachable Hub for about half a minute before it gives up; a
    mistyped folder name that parses as a data set name should fail at once instead.
    """
    import socket
    from urllib.parse import urlparse

    from karl.hub import hub_endpoint
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"cannot reach {host}:{port} ({type(err).__name__}: {err})"
    return None


def load_hf_split(spec: DataSpec, splits: Sequence[str], image_key: str = "image",
                  cache_dir: str | None = None) -> tuple[Any, str]:
    """The first of ``splits`` that ``datasets`` loads -> (data set, split).

    An unknown split name moves on to the next; any other failure (offline and not cached,
    unknown data set, ...) stops at once with :class:`HFLoadError`, whose message says when
    HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set. A missing ``image_key`` column is a
    :class:`DataSpecError`.
    """
    if spec.kind not in ("hf", "imagefolder"):
        raise DataSpecError(f"{spec.text!r} is a {spec.kind} spec, not a Hugging Face data set")
    kwargs = {"data_dir": str(spec.path)} if spec.path is not None else {}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    try:
        import datasets
    except ImportError as e:
        raise HFLoadError(f"{spec.text!r} needs the `datasets` package (pip install datasets)") from e
    if spec.kind == "hf" and not _offline():
        why = _hub_unreachable()
        if why:
            raise HFLoadError(f"could not load Hugging Face data set {spec.text!r}: {why}; set "
                              f"HF_DATASETS_OFFLINE=1 to read it from the local cache, or pass a "
                              f"local folder ({SPEC_FORMS})")
    last: Exception | None = None
    for split in splits:
        try:
            ds = datasets.load_dataset(spec.name, split=split, **kwargs)
        except ValueError as e:  # unknown split name: try the next
            last = e
            continue
        except Exception as e:  # offline, unknown data set, ...: no point in other splits
            last = e
            break
        if image_key not in ds.column_names:
            raise DataSpecError(f"data set {spec.text!r} has no column {image_key!r} "
                                f"(columns: {ds.column_names})")
        return ds, split
    hint = " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: only cached data sets load)" if _offline() else ""
    raise HFLoadError(f"could not load Hugging Face data set {spec.text!r} split {split!r}{hint}: "
                      f"{type(last).__name__}: {' '.join(str(last).split())}")  # one line


def ensure_corpus(root: str | Path | None = None) -> Path:
    """The offline photo corpus in ``root`` (default ``data_cache/corpus``); built from installed
    packages (:func:`karl.data.corpus.build_corpus`) when its manifest is missing."""
    from karl.data.corpus import MANIFEST, build_corpus
    root = Path(root or DEFAULT_CORPUS)
    if not (root / MANIFEST).is_file():
        print(f"karl.data: no photo corpus at {root}; building it from installed packages (once)",
              file=sys.stderr)
        if not build_corpus(root, verbose=True):
            raise DataSpecError(f"no photo corpus at {root} and no corpus photos are installed "
                                "(needs scikit-image at least); use a folder or procedural instead")
    return root
