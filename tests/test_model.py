"""Contracts of the KARL model: shapes, ranges, batch independence, packing, API."""

from dataclasses import FrozenInstanceError, replace

import pytest
import torch

from karl import LOSS_BINS, build_model, epsilon_to_bin
from karl.model import pack_kept


def test_epsilon_to_bin_rounds_up():
    bins = torch.tensor(LOSS_BINS)
    got = [LOSS_BINS[int(epsilon_to_bin(e, bins))] for e in (0.0, 0.05, 0.051, 0.5, 0.005, 0.0051, 0.38)]
    assert got == [0.005, 0.05, 0.06, 0.38, 0.005, 0.01, 0.38]


def test_encode_shapes_and_ranges(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    k = tiny_model.max_tokens
    assert enc.latents.shape == (3, k, tiny_model.config.token_dim)
    assert enc.halting_probs.shape == (3, k) and enc.keep.dtype == torch.bool
    assert ((enc.halting_probs >= 0) & (enc.halting_probs <= 1)).all()
    assert torch.equal(enc.kc_hat, enc.keep.sum(-1))
    assert torch.equal(enc.keep, enc.halting_probs <= 0.75)
    assert enc.token_ids is None  # tiny is continuous
    out = tiny_model.decode(enc)
    assert out.shape == tiny_images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_budget_and_per_image_epsilon(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images, epsilon=torch.tensor([0.0, 0.05, 0.38]), budget=8)
    assert enc.keep.shape == (3, 8)
    assert torch.allclose(enc.epsilon, torch.tensor([0.005, 0.05, 0.38]))
    with pytest.raises(AssertionError):
        tiny_model.encode(tiny_images, epsilon=torch.tensor([0.1, 0.2]))


def test_quantized_model_returns_token_ids():
    from karl.config import preset
    cfg = replace(preset("tiny").model, quantize=True, codebook_size=64)
    model = build_model(cfg, seed=0).eval()
    enc = model.encode(torch.rand(2, 3, 32, 32))
    assert enc.token_ids.shape == (2, model.max_tokens) and enc.token_ids.dtype == torch.long
    assert int(enc.token_ids.max()) < 64
    # quantised latents are the (l2-normalised) codebook entries of the ids
    assert torch.allclose(enc.latents, model.quantize.lookup(enc.token_ids), atol=1e-6)


def test_batch_result_does_not_depend_on_batch(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images, epsilon=torch.tensor([0.01, 0.1, 0.3]))
    # A different keep-mask per image, including an empty program.
    keep = torch.zeros_like(enc.keep)
    keep[0, :3] = True
    keep[1, ::2] = True
    enc = replace(enc, keep=keep)
    batch = tiny_model.decode(enc)
    for i in range(3):
        single_enc = tiny_model.encode(tiny_images[i:i + 1], epsilon=enc.epsilon[i:i + 1])
        assert torch.allclose(single_enc.latents, enc.latents[i:i + 1], atol=1e-5)
        single = tiny_model.decode(replace(single_enc, keep=keep[i:i + 1]))
        assert torch.allclose(batch[i:i + 1], single, atol=1e-5), i


def test_packed_decoder_equals_masked_decoder(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(enc.keep.shape, generator=g) > 0.5
    with torch.no_grad():
        packed = tiny_model.forward_decoder(enc.latents, keep)
        masked = tiny_model.forward_decoder_masked(enc.latents, keep)
    assert torch.allclose(packed, masked, atol=1e-5)


def test_pack_kept_shortens_sequence():
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float).reshape(2, 5, 1)
    keep = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    packed, valid = pack_kept(tokens, keep)
    assert packed.shape == (2, 2, 1)
    assert packed[0, :, 0].tolist() == [0.0, 2.0] and packed[1, 0, 0].item() == 9.0
    assert valid.tolist() == [[True, True], [True, False]]


def test_reconstruct_fixed_tokens(tiny_model, tiny_images):
    out = tiny_model.reconstruct(tiny_images, num_tokens=4)
    assert out.shape == tiny_images.shape
    enc = tiny_model.encode(tiny_images, epsilon=0.0, budget=4)
    enc.keep[:] = True
    assert torch.allclose(out, tiny_model.decode(enc))


def test_wrong_image_size_raises_clear_error(tiny_model):
    with pytest.raises(AssertionError, match="expected images"):
        tiny_model.encode(torch.rand(1, 3, 48, 48))


def test_eval_is_deterministic(tiny_model, tiny_images):
    a = tiny_model.decode(tiny_model.encode(tiny_images))
    b = tiny_model.decode(tiny_model.encode(tiny_images))
    assert torch.equal(a, b)


def test_cpu_preset_builds():
    model = build_model("cpu", seed=0)
    assert model.image_size >= 64
    assert model.grid_size == 8


def test_keep_prefix_int_and_per_image(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images)
    assert tiny_model.keep_prefix(enc, 5).kc_hat.tolist() == [5, 5, 5]
    assert tiny_model.keep_prefix(enc, torch.tensor([1, 2, 3])).kc_hat.tolist() == [1, 2, 3]
    assert tiny_model.decode(tiny_model.keep_prefix(enc, 5)).shape == tiny_images.shape


def test_encoding_is_frozen_and_changes_by_replace(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images, budget=6)
    with pytest.raises(FrozenInstanceError):
        enc.keep = torch.ones_like(enc.keep)
    keep_before = enc.keep.clone()
    all_kept = replace(enc, keep=torch.ones_like(enc.keep))
    assert all_kept.kc_hat.tolist() == [6, 6, 6] and torch.equal(enc.keep, keep_before)
    assert all_kept.latents is enc.latents                 # the other fields are shared, not copied
    prefix = tiny_model.keep_prefix(enc, 2)
    assert prefix.kc_hat.tolist() == [2, 2, 2] and torch.equal(enc.keep, keep_before)
    moved = enc.to("cpu")
    assert moved is not enc and torch.equal(moved.keep, enc.keep) and moved.token_ids is None
    # reconstruct() keeps every token without touching an encoding anyone else holds
    assert torch.allclose(tiny_model.reconstruct(tiny_images, num_tokens=6), tiny_model.decode(all_kept))


def test_base_grid_is_checked_like_images(tiny_model, tiny_images):
    from karl.base_tokenizers import BaseGrid
    grid = tiny_model.base_encode(tiny_images)
    cached = tiny_model.encode(tiny_images, base_grid=grid)
    assert torch.equal(cached.keep, tiny_model.encode(tiny_images).keep)   # a good grid is used as is
    other = tiny_model.base_encode(tiny_images[:2])
    with pytest.raises(ValueError, match=r"base_grid.features must be \[B, latent_dim, g, g\] = \[3, "):
        tiny_model.encode(tiny_images, base_grid=other)                    # grid of other images
    with pytest.raises(ValueError, match="base_grid.features must be"):
        tiny_model.reconstruct(tiny_images, num_tokens=4, base_grid=BaseGrid(grid.features[:, :1], grid.target))
    with pytest.raises(ValueError, match="must be a float tensor, got torch.int64"):
        tiny_model.encode(tiny_images, base_grid=BaseGrid(grid.features.long(), grid.target))
    with pytest.raises(ValueError, match="must be a BaseGrid from model.base_encode"):
        tiny_model.reconstruct(tiny_images, num_tokens=4, base_grid=grid.features)
    with pytest.raises(AssertionError, match="expected images"):           # images are still checked
        tiny_model.encode(tiny_images[:, :, :16], base_grid=grid)
