"""The "minimal program" halting labels (issue 12): the rule, the search, the config guard."""

import pytest
import torch

from karl import build_model
from karl.config import ConfigError, load_config
from karl.losses import TokenReconLoss
from karl.metrics import l1
from karl.model import epsilon_to_bin
from karl.train.phases import (karl_iteration, ltc_phase, minimal_halting_labels, minimal_program_lengths,
                               prefix_grid)


def test_prefix_grid_is_dense_for_short_programs_and_ends_at_the_budget():
    cfg = load_config(preset_name="cpu").train
    assert prefix_grid(cfg, 32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert prefix_grid(cfg, 10) == [1, 2, 3, 4, 6, 8, 10]
    custom = load_config(preset_name="cpu", overrides=["train.label_prefix_grid=[2,5,40]"]).train
    assert prefix_grid(custom, 32) == [2, 5, 32]


def test_minimal_labels_keep_the_program_and_halt_the_rest():
    labels = minimal_halting_labels(torch.tensor([1, 3, 5]), max_tokens=5)
    assert labels.tolist() == [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]


def _encoded(model, images, cond):
    grid = model.base_encode(images)
    z, _ = model.forward_encoder(model.embed_grid(images, grid.features), cond, model.max_tokens)
    return model.quantize_latents(z)[0]


def test_minimal_program_length_is_the_shortest_prefix_within_the_bin():
    torch.manual_seed(0)
    model = build_model("tiny", seed=0).eval()
    images = torch.rand(4, 3, 32, 32)
    k = model.max_tokens
    grid = [1, 2, 4, 8, k]
    with torch.no_grad():
        latents = _encoded(model, images, torch.zeros(4, dtype=torch.long))
        errs = torch.stack([l1(model.base.decode_head(model.forward_decoder(
            latents, torch.arange(k)[None].expand(4, k) < n)).clamp(0, 1), images) for n in grid])
    # A bin each image's 4-token prefix meets, and one no prefix meets (stricter than all).
    loose = epsilon_to_bin(errs[2], model.loss_bins)
    lengths = minimal_program_lengths(model, latents, images, loose, grid)
    for i in range(4):
        meets = [bool(epsilon_to_bin(e, model.loss_bins) <= loose[i]) for e in errs[:, i]]
        j = grid.index(lengths[i].item())
        assert meets[j] and (j == 0 or not meets[j - 1]), (meets, j)   # meets; one shorter does not
        if meets == sorted(meets):                                    # error falls with k: the shortest
            assert j == meets.index(True)
    strict = torch.zeros(4, dtype=torch.long)                 # 0.005: out of reach for random weights
    assert (errs > 0.005).all()
    assert minimal_program_lengths(model, latents, images, strict, grid).tolist() == [k] * 4


def test_minimal_labels_train_every_parameter_and_log_the_program_length():
    cfg = load_config(preset_name="tiny", overrides=["train.halting_labels=minimal",
                                                     "train.ltc_free_condition_fraction=0.5"]).train
    model = build_model("tiny", seed=0).train()
    model.base.requires_grad_(False)
    images = torch.rand(4, 3, 32, 32)
    loss, parts, _ = karl_iteration(model, images, TokenReconLoss(model.base), cfg,
                                    torch.Generator().manual_seed(0), budget=8)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert 1 <= parts["ltc/label_len"] <= model.max_tokens


def test_achieved_bin_labels_never_exceed_the_budget():
    # Conditioned on the bin e_T fell in, T tokens are known to suffice: the label is capped at T.
    cfg = load_config(preset_name="tiny", overrides=["train.halting_labels=minimal"]).train
    model = build_model("tiny", seed=0).train()
    images = torch.rand(3, 3, 32, 32)
    grid = model.base_encode(images)
    tokens2d = model.embed_grid(images, grid.features)
    e_t = torch.full((3,), 0.004)            # a strict bin no prefix of random weights meets
    out = ltc_phase(model, images, tokens2d, 6, e_t, TokenReconLoss(model.base, grid.target),
                    cfg, torch.Generator().manual_seed(0))
    assert out.parts["ltc/label_len"] == 6


@pytest.mark.parametrize("override", ["train.halting_labels=minimum",
                                      "train.ltc_free_condition_fraction=1.5",
                                      "train.ltc_free_condition_fraction=0.5"])   # needs minimal labels
def test_label_options_are_checked_at_config_time(override):
    with pytest.raises(ConfigError):
        load_config(preset_name="tiny", overrides=[override])
