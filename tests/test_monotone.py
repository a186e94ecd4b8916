"""``encode(..., monotone=True)``: the shortest program of the requested and stricter bins."""

import numpy as np
import torch

from karl import LOSS_BINS, build_model


def _model_that_halts_by_bin():
    """A tiny model whose halting logits get a fixed random offset per (bin, token, image
    brightness): kept counts then vary with the bin, and not monotonically."""
    model = build_model("tiny", seed=0).eval()
    offsets = torch.randn(len(LOSS_BINS), model.config.num_latent_tokens,
                          generator=torch.Generator().manual_seed(0)) * 3
    encoder = model.forward_encoder

    def forward_encoder(tokens2d, bin_idx, budget, grid=None):
        z, logits = encoder(tokens2d, bin_idx, budget, grid)
        shift = 2 * tokens2d.mean(dim=(1, 2))[:, None]
        return z, logits + offsets[bin_idx, :budget] + shift

    model.forward_encoder = forward_encoder
    return model


def test_monotone_programs_are_the_shortest_of_the_stricter_bins():
    model = _model_that_halts_by_bin()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = np.stack([model.encode(images, epsilon=e).kc_hat.numpy() for e in LOSS_BINS], 1)
    mono = np.stack([model.encode(images, epsilon=e, monotone=True).kc_hat.numpy() for e in LOSS_BINS], 1)
    assert len(np.unique(plain)) > 2 and (np.diff(plain, axis=1) > 0).any()  # the case is not trivial
    assert (mono == np.minimum.accumulate(plain, axis=1)).all()
    assert (np.diff(mono, axis=1) <= 0).all()


def test_monotone_encoding_decodes_the_chosen_program():
    model = _model_that_halts_by_bin()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    enc = model.encode(images, epsilon=0.2, monotone=True)
    assert torch.allclose(enc.epsilon, torch.full((4,), 0.2))
    for i in range(4):
        # The same program re-encoded alone at the bin it came from decodes to the same image.
        source = [b for b in LOSS_BINS if b <= 0.2 + 1e-9
                  and torch.equal(model.encode(images[i:i + 1], epsilon=b).keep[0], enc.keep[i])]
        assert source, i
        single = model.encode(images[i:i + 1], epsilon=source[-1])
        assert torch.allclose(model.decode(single), model.decode(enc)[i:i + 1], atol=1e-5)
