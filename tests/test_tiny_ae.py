"""The pretrained tiny-autoencoder base (``base.kind=tae``, TAEF2 bundled in the package)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from karl.base_tokenizers import TinyAECheckpointError, build_base_tokenizer
from karl.base_tokenizers.tiny_ae import BUNDLED, WEIGHTS_DIR, latent_channels
from karl.config import BaseTokenizerConfig, ConfigError, preset
from karl.data.procedural import generate


def _cfg(**kw) -> BaseTokenizerConfig:
    base = dict(kind="tae", latent_dim=32, downsample=8, latent_scale=1 / 3, checkpoint="taef2")
    return BaseTokenizerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tae():
    return build_base_tokenizer(_cfg()).eval()


def test_bundled_weights_ship_with_their_licence():
    assert (WEIGHTS_DIR / "LICENSE.taef2").read_text().startswith("MIT License")
    for name in BUNDLED["taef2"]:
        assert (WEIGHTS_DIR / name).stat().st_size > 1_000_000


def test_latent_grid_shape_and_range(tae):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        grid = tae.encode(x)
        out = tae.decode(grid.features)
    assert grid.features.shape == (2, 32, 8, 8) and grid.features.dtype == torch.float32
    assert torch.equal(grid.features, grid.target)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1


def test_pretrained_weights_reconstruct_structured_images(tae):
    """A random network would not: the pretrained base reconstructs smooth structure closely."""
    images = torch.stack([generate(7, 64, family=family).image for family in ("shapes", "gradient", "fractal")])
    with torch.no_grad():
        recon = tae.reconstruct(images)
    l1 = (recon - images).abs().mean(dim=(1, 2, 3))
    assert bool((l1 < 0.05).all()), l1


def test_latent_channels_are_read_from_the_weights():
    sd = load_file(str(WEIGHTS_DIR / BUNDLED["taef2"][0]))
    assert latent_channels(sd) == 32
    with pytest.raises(TinyAECheckpointError, match="32 latent channels"):
        build_base_tokenizer(_cfg(latent_dim=16))


def test_folder_of_weights_loads_strictly_and_reports_bad_keys(tmp_path):
    for part, name in zip(("encoder", "decoder"), BUNDLED["taef2"]):
        save_file(load_file(str(WEIGHTS_DIR / name)), str(tmp_path / f"my_{part}.safetensors"))
    build_base_tokenizer(_cfg(checkpoint=str(tmp_path)))
    bad = load_file(str(tmp_path / "my_decoder.safetensors"))
    bad.pop("1.bias")
    save_file(bad, str(tmp_path / "my_decoder.safetensors"))
    with pytest.raises(TinyAECheckpointError, match="missing \\['1.bias'\\]"):
        build_base_tokenizer(_cfg(checkpoint=str(tmp_path)))


def test_unknown_weights_name_is_a_one_line_error(tmp_path):
    with pytest.raises(TinyAECheckpointError, match="expected one of"):
        build_base_tokenizer(_cfg(checkpoint="taesd_missing"))
    (tmp_path / "decoder.pth").write_bytes(b"not a pickle")
    (tmp_path / "encoder.pth").write_bytes(b"not a pickle")
    with pytest.raises(TinyAECheckpointError, match="not a readable state dict"):
        build_base_tokenizer(_cfg(checkpoint=str(tmp_path)))


def test_wrong_downsample_and_unknown_kind():
    with pytest.raises(ValueError, match="downsamples by 8"):
        build_base_tokenizer(_cfg(downsample=16))
    with pytest.raises(ConfigError, match="tae"):
        BaseTokenizerConfig(kind="taef")


def test_cpu_tae_preset_forward_and_gradients_skip_the_frozen_base():
    """The preset builds; a KARL forward on it gives gradients to KARL, none to the frozen base
    in stage 1 (the trainer freezes ``base.*``)."""
    from karl import build_model
    from karl.losses import TokenReconLoss
    from karl.train.phases import karl_iteration
    cfg = preset("cpu_tae")
    model = build_model(cfg.model, seed=0)
    model.base.requires_grad_(False)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the trainer fits the preset's linear code before the first step
        model.linear_code.fit(model.base_encode(torch.rand(48, 3, 64, 64)).features)
    loss, parts, _ = karl_iteration(model, images, TokenReconLoss(model.base), cfg.train,
                                    torch.Generator().manual_seed(0), budget=8)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert all(p.grad is None for p in model.base.parameters())


def test_release_carries_the_base_weights_unchanged(tmp_path):
    """A saved release holds ``base.*``; loading it gives back the bundled TAEF2 tensors."""
    from karl import build_model, load_pretrained
    from karl.api import save_pretrained
    model = build_model(preset("cpu_tae").model, seed=0)
    save_pretrained(model, tmp_path / "rel")
    loaded = load_pretrained(tmp_path / "rel")
    ref = load_file(str(WEIGHTS_DIR / BUNDLED["taef2"][1]))
    got = {k[len("base.decoder."):]: v for k, v in loaded.state_dict().items() if k.startswith("base.decoder.")}
    assert torch.equal(got["1.weight"], ref["1.weight"].float())
    digest = hashlib.sha256((WEIGHTS_DIR / "LICENSE.taef2").read_bytes()).hexdigest()
    assert len(digest) == 64
