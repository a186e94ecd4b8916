"""Training and evaluation data sets built from a :class:`karl.config.DataConfig`.

:func:`build_dataset` returns a torch data set whose items are float tensors
``[3, S, S]`` in [0, 1]:

========== ======================================= ===================================
source     split="train"                            split="eval"
========== ======================================= ===================================
synthetic  endless procedural images (Iterable)     256 fixed procedural images
folder     random multi-scale crops of the files    resize shorter side + centre crop
hf         random crops of a Hugging Face split     centre crops of its validation split
corpus     endless crops of the training photos     fixed crops of the held-out photos
mixed      corpus crops + procedural_fraction       the same mixture, fixed
           procedural images (Iterable)
========== ======================================= ===================================

Map-style sets work with any sampler (``DistributedSampler`` shards them); the
Iterable ones are endless random streams seeded by (seed, rank), so shards never repeat
each other. All work with ``DataLoader(num_workers=0)``.

Resuming a run continues its data exactly where it stopped. In the endless streams
(:class:`ResumableStream`) item i of a rank's stream depends only on (seed, rank, i), and
worker w of W produces global batches w, w + W, ... (the order in which ``DataLoader``
collects them), so ``stream.resume_at(step, batch_size)`` makes batch ``step`` come next,
for any number of workers. Folder and Hugging Face sets also take keys
``(index, epoch, position)`` whose random crop depends only on those (see
``karl.train.loop.infinite_batches``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, IterableDataset

from karl.data.corpus import FixedCropDataset, RandomCropDataset, load_manifest, shard_seed, split_sources
from karl.data.images import ImageLoadError, list_images, load_image, preprocess, random_resized_crop
from karl.data.procedural import generate
from karl.data.spec import (DEFAULT_CORPUS, DataSpecError, HFLoadError, ensure_corpus, hf_spec, load_hf_split,
                            spec_from_config)

__all__ = ["build_dataset", "ResumableStream", "ProceduralDataset", "ProceduralEvalDataset", "MixedDataset", "ImageFolderDataset",
           "HFImageDataset", "SOURCES", "DEFAULT_CORPUS"]

SOURCES = ("synthetic", "folder", "hf", "corpus", "mixed")
EVAL_PROCEDURAL = 256  # images in the synthetic eval set


def _split(split: str) -> str:
    aliases = {"train": "train", "eval": "eval", "val": "eval", "validation": "eval", "test": "eval",
               "holdout": "eval"}
    if split not in aliases:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return aliases[split]


def _seed_of(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] >> 1)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _keyed_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, rank, keys): the same draw after a resume."""
    return np.random.default_rng(np.random.SeedSequence([seed, _rank(), *keys]))


class ResumableStream(IterableDataset):
    """An endless stream whose item i depends only on (seed, rank, i): resumable exactly.

    Subclasses implement ``item(rng)``. Worker w of W (``DataLoader(num_workers=W)``)
    makes global batches start + w, start + w + W, ...; the loader takes batches from its
    workers in turn, so the sequence of batches is the same for any W, and after
    :meth:`resume_at` it starts at batch ``start``.
    """

    seed: int = 0
    _start_batch: int = 0
    _batch_size: int = 1

    def resume_at(self, batches_done: int, batch_size: int) -> "ResumableStream":
        """Continue after ``batches_done`` batches of ``batch_size`` items (per rank)."""
        if batches_done < 0 or batch_size < 1:
            raise ValueError(f"resume_at({batches_done}, {batch_size}): need batches >= 0 and size >= 1")
        self._start_batch, self._batch_size = int(batches_done), int(batch_size)
        return self

    def item(self, rng: np.random.Generator) -> Tensor:
        raise NotImplementedError

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self._batch_size
        batch = self._start_batch + worker
        while True:
            for i in range(batch * b, (batch + 1) * b):
                yield self.item(_keyed_rng(self.seed, i))
            batch += workers


# ----------------------------------------------------------------------------- procedural

class ProceduralDataset(ResumableStream):
    """Endless procedural images (all families, random complexity) -> [3, S, S]."""

    def __init__(self, image_size: int, seed: int = 0, families: tuple[str, ...] | None = None):
        self.image_size, self.seed, self.families = image_size, seed, families

    def item(self, rng: np.random.Generator) -> Tensor:
        fam = None if not self.families else self.families[int(rng.integers(0, len(self.families)))]
        return generate(int(rng.integers(0, 2 ** 31)), self.image_size, fam).image


class ProceduralEvalDataset(Dataset):
    """``n`` fixed procedural images; item i depends only on (seed, i)."""

    def __init__(self, image_size: int, n: int = EVAL_PROCEDURAL, seed: int = 0):
        self.image_size, self.n, self.seed = image_size, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return generate(_seed_of(self.seed, 1, index), self.image_size).image


class MixedDataset(ResumableStream):
    """Corpus crops with a share ``procedural_fraction`` of procedural images interleaved
    (``procedural_fraction=0``: the corpus crops alone, as a resumable stream)."""

    def __init__(self, crops: RandomCropDataset, procedural_fraction: float, seed: int = 0):
        if not 0 <= procedural_fraction <= 1:
            raise ValueError(f"procedural_fraction must be in [0, 1], got {procedural_fraction}")
        self.crops, self.fraction, self.seed = crops, procedural_fraction, seed

    def item(self, rng: np.random.Generator) -> Tensor:
        if self.fraction > 0 and rng.random() < self.fraction:
            return generate(int(rng.integers(0, 2 ** 31)), self.crops.image_size).image
        return self.crops.crop(rng)


# ----------------------------------------------------------------------------- folders

class _PerWorkerRng:
    """A numpy Generator per (rank, DataLoader worker), seeded from ``seed``."""

    def __init__(self, seed: int):
        self.seed, self._rngs = seed, {}

    def __call__(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = info.id if info else -1
        if key not in self._rngs:
            self._rngs[key] = np.random.default_rng(shard_seed(self.seed))
        return self._rngs[key]


class ImageFolderDataset(Dataset):
    """Images under a folder (recursive): random crops (train) or centre crops (eval).

    Unreadable files are skipped: those found by the header check at construction are
    reported in one warning; a file that fails later to decode is replaced by the next one
    (also with a warning).
    """

    accepts_draw_keys = True  # __getitem__((index, epoch, position)): a crop that survives a resume

    def __init__(self, root: str | Path, image_size: int, train: bool = True, min_scale: float = 0.15,
                 seed: int = 0, check_files: bool = True):
        self.root = Path(root)
        files = list_images(self.root)
        if not files:
            raise FileNotFoundError(f"no image files under {self.root}")
        bad = [f for f in files if not _readable_header(f)] if check_files else []
        if bad:
            shown = ", ".join(str(f.relative_to(self.root)) for f in bad[:20])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            warnings.warn(f"skipping {len(bad)} unreadable image file(s) under {self.root}: {shown}{more}",
                          stacklevel=2)
        self.files = [f for f in files if f not in set(bad)]
        if not self.files:
            raise FileNotFoundError(f"none of the {len(files)} image files under {self.root} can be read")
        self.image_size, self.train, self.min_scale, self.seed = image_size, train, min_scale, seed
        self._rng = _PerWorkerRng(seed)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Image.Image:
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                return load_image(path)
            except ImageLoadError as err:
                warnings.warn(f"skipping unreadable image: {err}", stacklevel=3)
        raise RuntimeError(f"no readable image under {self.root}")

    def __getitem__(self, index: int | tuple[int, int, int]) -> Tensor:
        index, rng = _split_key(index, self.seed, self._rng)
        img = self._load(index)
        if self.train:
            return random_resized_crop(img, self.image_size, rng(), self.min_scale)
        return preprocess(img, self.image_size)

    def undecodable(self, limit: int | None = None) -> list[tuple[Path, str]]:
        """Fully decode the first ``limit`` files (all by default) -> [(file, why it fails)].

        The constructor only reads headers (cheap on a big folder); a set too small to train
        on is checked this way so that its error can say the images do not decode.
        """
        bad = []
        for f in self.files[:limit]:
            try:
                load_image(f)
            except ImageLoadError as err:
                bad.append((f, str(err).replace(str(f), "").lstrip(": ")))
        return bad


def _split_key(key, seed: int, fallback: "_PerWorkerRng"):
    """``index`` or ``(index, epoch, position)`` -> (index, function giving the crop's rng)."""
    if isinstance(key, (tuple, list)):
        index, epoch, position = (int(k) for k in key)
        return index, lambda: _keyed_rng(seed, epoch, position)
    return int(key), fallback


def _readable_header(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.width > 0 and im.height > 0
    except Exception:  # any PIL failure means "not readable"
        return False


# ----------------------------------------------------------------------------- Hugging Face

class HFImageDataset(Dataset):
    """A Hugging Face ``datasets`` split (hub name or an ``imagefolder`` directory)."""

    accepts_draw_keys = True

    def __init__(self, image_size: int, hf_name: str | None = None, hf_split: str = "train",
                 image_key: str = "image", data_dir: str | None = None, train: bool = True,
                 min_scale: float = 0.15, seed: int = 0, cache_dir: str | None = None):
        spec = hf_spec(hf_name, data_dir)
        splits = [hf_split] if train else ["validation", "test", hf_split]
        try:
            self.ds, _ = load_hf_split(spec, splits, image_key, cache_dir)
        except HFLoadError as err:
            raise RuntimeError(f"{err}. {_HF_ADVICE}") from err
        except DataSpecError as err:  # no such column
            raise KeyError(f"{err}; set data.hf_image_key") from None
        self.image_key, self.image_size, self.train, self.min_scale = image_key, image_size, train, min_scale
        self.seed, self._rng = seed, _PerWorkerRng(seed)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int | tuple[int, int, int]) -> Tensor:
        index, rng = _split_key(index, self.seed, self._rng)
        img = load_image(self.ds[index][self.image_key])
        if self.train:
            return random_resized_crop(img, self.image_size, rng(), self.min_scale)
        return preprocess(img, self.image_size)


_HF_ADVICE = ("With HF_DATASETS_OFFLINE=1 (or HF_HUB_OFFLINE=1) `datasets` reads only data sets already in "
              "its cache (~/.cache/huggingface): download it once where the Hub is reachable, or put the "
              "images in a folder and use data.source=folder data.path=<dir> (or data.source=corpus for "
              "the offline photo corpus).")


# ----------------------------------------------------------------------------- entry point

def build_dataset(data_cfg, image_size: int, split: str = "train") -> Dataset:
    """The data set described by ``data_cfg`` (a DataConfig), yielding [3, S, S] in [0, 1]."""
    split = _split(split)
    train, seed = split == "train", int(data_cfg.seed)
    spec = spec_from_config(data_cfg)  # the same kinds as karl-eval's --data (karl/data/spec.py)
    if spec.kind == "procedural":
        return ProceduralDataset(image_size, seed) if train else ProceduralEvalDataset(image_size, seed=seed)
    if spec.kind == "folder":
        return ImageFolderDataset(spec.path, image_size, train, data_cfg.min_crop_scale, seed)
    if spec.kind in ("hf", "imagefolder"):
        return HFImageDataset(image_size, data_cfg.hf_name, data_cfg.hf_split, data_cfg.hf_image_key,
                              data_cfg.path, train, data_cfg.min_crop_scale, seed)
    if spec.kind == "corpus":  # data.source corpus or mixed
        root = ensure_corpus(spec.path)
        entries_train, entries_hold = split_sources(load_manifest(root), data_cfg.holdout_fraction, seed,
                                                    data_cfg.holdout_names)
        frac = float(data_cfg.procedural_fraction) if data_cfg.source == "mixed" else 0.0
        if train:
            crops = RandomCropDataset(root, image_size, entries_train, data_cfg.min_crop_scale, seed)
            return MixedDataset(crops, frac, seed)  # a resumable stream, with or without procedural
        if not entries_hold:
            warnings.warn("data.holdout_fraction is 0: evaluating on crops of the training photos", stacklevel=2)
            entries_hold = entries_train
        fixed = FixedCropDataset(root, image_size, entries_hold, min_scale=data_cfg.min_crop_scale, seed=seed)
        if frac <= 0:
            return fixed
        n_proc = round(len(fixed) * frac / max(1e-9, 1 - frac)) if frac < 1 else len(fixed)
        return ConcatDataset([fixed, ProceduralEvalDataset(image_size, n_proc, seed)])
    raise AssertionError(f"unhandled data kind {spec.kind!r}")  # spec_from_config rejects the rest
