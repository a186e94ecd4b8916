"""Every preset builds and runs forward, as timm tests its whole registry: a preset nobody
trains any more must not rot unnoticed (issue 24).

The CPU-sized presets run for real on two images at their own input size; the 256-px ones
(``small``, ``small_vae``: a full VQGAN / KL-VAE base) run on the meta device, which checks
every shape of the encoder and decoder without allocating their weights.
"""

import pytest
import torch

from karl import build_model
from karl.config import PRESETS, preset
from karl.model import KARL

REAL = ("tiny", "cpu", "cpu_tae", "gpu128")
META = ("small", "small_vae")


def test_every_preset_has_a_forward_test():
    assert sorted(REAL + META) == sorted(PRESETS), "a new preset needs a place in REAL or META"


def _fit_linear_code(model: KARL, size: int) -> None:
    """``cpu_tae`` tokens start from a PCA of base latents, fitted when training starts."""
    fit_images = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    model.linear_code.fit(model.base_encode(fit_images).features.float())


@pytest.mark.parametrize("name", REAL)
@torch.no_grad()
def test_preset_encodes_and_decodes(name):
    model = build_model(name, seed=0).eval()
    s, k = model.image_size, model.max_tokens
    assert model.config == preset(name).model
    if model.config.linear_code:
        with pytest.raises(RuntimeError, match="never fitted"):
            model.encode(torch.rand(1, 3, s, s))
        _fit_linear_code(model, s)
    images = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    enc = model.encode(images, epsilon=0.05)
    assert enc.keep.shape == enc.halting_probs.shape == (2, k)
    assert enc.latents.shape == (2, k, model.config.token_dim)
    assert bool(((enc.halting_probs >= 0) & (enc.halting_probs <= 1)).all())
    assert torch.equal(enc.kc_hat, enc.keep.sum(-1))
    recon = model.decode(enc)
    assert recon.shape == images.shape and bool(torch.isfinite(recon).all())
    assert float(recon.min()) >= 0 and float(recon.max()) <= 1


@pytest.mark.parametrize("name", META)
@torch.no_grad()
def test_large_preset_runs_forward_on_the_meta_device(name):
    cfg = preset(name).model
    with torch.device("meta"):
        model = KARL(cfg).eval()
        images = torch.empty(2, 3, cfg.image_size, cfg.image_size)
        enc = model.encode(images, epsilon=0.05)
        # decode() packs each image's kept tokens (a data-dependent length the meta device cannot
        # know); the masked decoder is the same network on the unpacked program.
        head = model.forward_decoder_masked(enc.latents, enc.keep)
        recon = model.base.decode_head(head)
    assert enc.keep.shape == (2, cfg.max_tokens) and enc.latents.shape == (2, cfg.max_tokens, cfg.token_dim)
    assert (enc.token_ids is not None) == cfg.quantize
    assert recon.shape == (2, 3, cfg.image_size, cfg.image_size)
