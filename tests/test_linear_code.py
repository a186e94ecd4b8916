"""The linear code (model.linear_code): a fitted PCA start of KARL's tokens."""

import dataclasses

import pytest
import torch

from karl.config import preset
from karl.model import KARL
from karl.model.linear_code import LinearCode


def _tiny_cfg():
    cfg = preset("tiny").model
    return dataclasses.replace(cfg, linear_code=True)


def test_fit_reconstructs_exactly_with_every_component():
    torch.manual_seed(0)
    code = LinearCode(latent_dim=2, grid_size=2, num_tokens=4, token_dim=2)   # 8 floats, 8 components
    x = torch.randn(64, 2, 2, 2) * torch.linspace(0.1, 3, 8).view(1, 2, 2, 2) + 5
    stats = code.fit(x)
    assert stats["components"] == 8 and stats["explained_variance"] == pytest.approx(1.0)
    z = code.encode(x, 4)
    assert z.shape == (64, 4, 2)
    assert torch.allclose(z.flatten(1).std(0), torch.ones(8), atol=1e-3)    # whitened
    keep = torch.ones(64, 4, dtype=torch.bool)
    assert torch.allclose(code.decode(z, keep, (2, 2, 2)), x, atol=1e-4)


def test_prefixes_are_ordered_by_variance():
    torch.manual_seed(0)
    code = LinearCode(latent_dim=4, grid_size=2, num_tokens=4, token_dim=4)
    x = torch.randn(256, 16) @ torch.randn(16, 16) * torch.logspace(1, -2, 16)
    x = x.view(256, 4, 2, 2)
    code.fit(x)
    z = code.encode(x, 4)
    errs = []
    for k in range(5):
        keep = torch.arange(4)[None].expand(256, 4) < k
        errs.append(float((code.decode(z, keep, (4, 2, 2)) - x).pow(2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-6 * errs[0]


def test_unfitted_code_refuses_and_model_needs_grid():
    model = KARL(_tiny_cfg()).eval()
    images = torch.rand(2, 3, model.image_size, model.image_size)
    with pytest.raises(RuntimeError, match="never fitted"):
        model.encode(images)
    grid = model.base_encode(images)
    model.linear_code.fit(torch.randn(40, *grid.features.shape[1:]))
    tokens2d = model.embed_grid(images, grid.features)
    with pytest.raises(ValueError, match="grid="):
        model.forward_encoder(tokens2d, model.bin_index(0.05, 2), model.max_tokens)


def test_model_with_linear_code_trains_saves_and_reloads(tmp_path):
    from karl.api import load_pretrained, save_pretrained
    torch.manual_seed(0)
    model = KARL(_tiny_cfg())
    images = torch.rand(8, 3, model.image_size, model.image_size)
    with torch.no_grad():
        model.linear_code.fit(model.base_encode(torch.rand(64, 3, model.image_size, model.image_size)).features)
    grid = model.base_encode(images)
    z, logits = model.forward_encoder(model.embed_grid(images, grid.features), model.bin_index(0.05, 8),
                                      model.max_tokens, grid.features)
    keep = torch.ones_like(logits, dtype=torch.bool)
    head = model.forward_decoder(z, keep)
    (head.float().pow(2).mean() + logits.float().mean()).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("base.")]
    assert all(model.get_parameter(n).grad is not None and model.get_parameter(n).grad.abs().sum() > 0
               for n in trainable if "quantize" not in n)
    model.eval()
    enc = model.encode(images, 0.05)
    path = save_pretrained(model, tmp_path / "rel")
    again = load_pretrained(path).eval()
    assert bool(again.linear_code.fitted)
    enc2 = again.encode(images, 0.05)
    assert torch.equal(enc.keep, enc2.keep) and torch.allclose(model.decode(enc), again.decode(enc2), atol=1e-6)
