"""Base tokenizers: official key layout, interface contracts, checkpoint loading."""

from __future__ import annotations

import argparse

import pytest
import torch

from karl.base_tokenizers import (
    BaseCheckpointError, BaseTokenizer, ConvAutoencoder, KLVAETokenizer, VQGANTokenizer,
    build_base_tokenizer, load_base_checkpoint, strip_prefix,
)
from conftest import fixture_dir, read_key_list
from karl.config import PRESETS, BaseTokenizerConfig

torch.set_num_threads(1)

KEYS_DIR = fixture_dir("official_state_dict")
OFFICIAL = {  # kind -> (preset, key file, prefix inside the KARL checkpoint)
    "vqgan": ("small", "karl_small_vqgan_quantized.keys.txt", "base_tokenizer.vqgan."),
    "kl_vae": ("small_vae", "karl_small_vae_continuous.keys.txt", "base_tokenizer.vae."),
}


def official_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """The official key list's base-tokenizer keys, prefix stripped: name -> shape."""
    _, fname, prefix = OFFICIAL[kind]
    path = KEYS_DIR / fname
    shapes = {name[len(prefix):]: shape for name, (shape, _) in read_key_list(path).items()
              if name.startswith(prefix)}
    assert shapes, f"no {prefix}* keys parsed from {path}"
    return shapes


@pytest.fixture(scope="module", params=["vqgan", "kl_vae"])
def full(request) -> tuple[str, BaseTokenizer]:
    torch.manual_seed(0)
    cfg = PRESETS[OFFICIAL[request.param][0]]().model.base
    return request.param, build_base_tokenizer(cfg).eval()


def small_cfg(kind: str, **kw) -> BaseTokenizerConfig:
    base = dict(kind=kind, channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, downsample=4)
    if kind == "vqgan":
        base.update(latent_dim=8, codebook_size=16)
    else:
        base.update(latent_dim=4, latent_scale=0.5)
    base.update(kw)
    return BaseTokenizerConfig(**base)


def small(kind: str, seed: int = 0) -> BaseTokenizer:
    torch.manual_seed(seed)
    return build_base_tokenizer(small_cfg(kind)).eval()


def images(b: int = 2, side: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- full configs

def test_full_keys_and_shapes_match_official(full):
    kind, tok = full
    ref = official_shapes(kind)
    mine = {k: tuple(v.shape) for k, v in tok.state_dict().items()}
    assert sorted(set(ref) - set(mine)) == [], "keys missing from our module"
    assert sorted(set(mine) - set(ref)) == [], "keys our module has and the release lacks"
    assert {k: v for k, v in mine.items() if ref[k] != v} == {}


def test_full_random_official_state_dict_loads_strictly(full):
    kind, tok = full
    gen = torch.Generator().manual_seed(2)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in official_shapes(kind).items()}
    tok.load_state_dict(sd, strict=True)
    name = next(iter(sd))
    assert torch.equal(tok.state_dict()[name], sd[name])


def test_full_param_counts_match_facts(full):
    kind, tok = full
    n = sum(p.numel() for p in tok.parameters()) / 1e6
    assert n == pytest.approx({"vqgan": 54.5, "kl_vae": 66.5}[kind], abs=0.1)


def test_full_forward_small_image(full):
    """One cheap forward of the full architecture (64x64 -> 4x4 grid)."""
    kind, tok = full
    with torch.no_grad():
        grid = tok.encode(images(1, 64))
        out = tok.decode(grid.features)
    assert grid.features.shape == (1, tok.latent_dim, 4, 4)
    assert out.shape == (1, 3, 64, 64) and 0 <= out.min() and out.max() <= 1


# --------------------------------------------------------------------------- contracts

@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
def test_small_shapes_and_range(kind):
    tok = small(kind)
    x = images()
    grid = tok.encode(x)
    assert grid.features.shape == (2, tok.latent_dim, 8, 8)
    if kind == "vqgan":
        assert tok.head_dim == 16 and grid.target.shape == (2, 8, 8)
        assert grid.target.dtype == torch.long
    else:
        assert tok.head_dim == tok.latent_dim == 4 and torch.equal(grid.target, grid.features)
    for rec in (tok.decode(grid.features),
                tok.decode_head(torch.randn(2, tok.head_dim, 8, 8))):
        assert rec.shape == (2, 3, 32, 32)
        assert rec.min() >= 0 and rec.max() <= 1


@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
def test_batch_equals_per_image(kind):
    tok = small(kind)
    x = images(3)
    with torch.no_grad():
        batch = tok.encode(x)
        for i in range(3):
            one = tok.encode(x[i:i + 1])
            torch.testing.assert_close(one.features, batch.features[i:i + 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tok.decode(batch.features)[1:2],
                                   tok.decode(batch.features[1:2]), atol=1e-5, rtol=1e-4)


def test_vqgan_target_is_l2_nearest_code():
    tok = small("vqgan")
    grid = tok.encode(images())
    z = grid.features.detach().permute(0, 2, 3, 1).reshape(-1, tok.latent_dim)
    brute = torch.cdist(z, tok.quantize.embedding.weight).argmin(1)
    assert torch.equal(grid.target.flatten(), brute)
    assert tok.code_of(grid.target).shape == grid.features.shape


def test_vqgan_soft_code_of_peaked_logits_is_the_code():
    tok = small("vqgan")
    ids = torch.randint(0, 16, (2, 8, 8))
    logits = torch.nn.functional.one_hot(ids, 16).permute(0, 3, 1, 2).float() * 100
    torch.testing.assert_close(tok.soft_code(logits), tok.code_of(ids))
    torch.testing.assert_close(tok.decode_head(logits), tok.decode_code(tok.code_of(ids)))


def test_kl_vae_mean_in_eval_sample_in_train():
    tok = small("kl_vae")
    x = images()
    with torch.no_grad():
        a, b = tok.encode(x).features, tok.encode(x).features
        mean, _ = tok.posterior(x)
        tok.train()
        c = tok.encode(x).features
    assert torch.equal(a, b)
    torch.testing.assert_close(a, mean * 0.5)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
def test_token_loss_backprops(kind):
    tok = small(kind)
    grid = tok.encode(images())
    out = torch.randn(2, tok.head_dim, 8, 8, requires_grad=True)
    loss, parts = tok.token_loss(out, grid.target.detach())
    loss.backward()
    assert torch.isfinite(loss) and out.grad is not None and out.grad.abs().sum() > 0
    assert set(parts) == ({"token_ce", "token_mse"} if kind == "vqgan" else {"token_mse"})


@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
def test_every_parameter_gets_a_gradient(kind):
    """Stage 2 fine-tunes the base tokenizer: pixels -> encode -> decode reaches every weight."""
    tok = small(kind).train()
    rec = tok.decode(tok.encode(images()).features)
    pred = torch.randn(2, tok.head_dim, 8, 8)
    (rec.mean() + tok.decode_head(pred).mean()).backward()
    allowed = set()  # the codebook gets its gradient through soft_code (decode_head)
    no_grad = [n for n, p in tok.named_parameters() if p.grad is None and n not in allowed]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in tok.parameters())


def test_downsample_must_match_levels():
    with pytest.raises(ValueError, match="downsample"):
        VQGANTokenizer(small_cfg("vqgan", downsample=8))
    with pytest.raises(ValueError, match="downsample"):
        KLVAETokenizer(small_cfg("kl_vae", downsample=16))


def test_build_dispatch():
    assert isinstance(small("vqgan"), VQGANTokenizer)
    assert isinstance(small("kl_vae"), KLVAETokenizer)
    cae = build_base_tokenizer(BaseTokenizerConfig(kind="conv_ae", latent_dim=4, downsample=4,
                                                   channels=8, channel_mult=(1, 2, 2),
                                                   num_res_blocks=1))
    assert isinstance(cae, ConvAutoencoder)
    with pytest.raises(ValueError, match="unknown base tokenizer kind"):
        build_base_tokenizer(BaseTokenizerConfig(kind="vq_gan"))


# --------------------------------------------------------------------------- checkpoints

def test_strip_prefix():
    sd = {"a.x": torch.zeros(1), "a.y": torch.ones(1), "b": torch.zeros(2)}
    assert set(strip_prefix(sd, "a.")) == {"x", "y", "b"}
    assert set(strip_prefix(sd, "a.", only=True)) == {"x", "y"}


def _assert_same(a: BaseTokenizer, b: BaseTokenizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _wrap_maskgit(sd):
    """TiTok's .bin: a plain state dict, mid blocks as ``mid.{j}``, ``upsample_conv``."""
    out = {}
    for k, v in sd.items():
        k = k.replace("mid.block_1.", "mid.0.").replace("mid.block_2.", "mid.1.")
        out[k.replace("upsample.conv.", "upsample_conv.")] = v
    return out


def _wrap_mar(sd):
    d = {f"module.{k}": v for k, v in sd.items()}
    d["loss.discriminator.main.0.weight"] = torch.zeros(3)
    return {"model": d, "epoch": 3}


def _wrap_ldm(sd):
    d = {f"first_stage_model.{k}": v for k, v in sd.items()}
    d["model.diffusion_model.input.weight"] = torch.zeros(3)
    return {"state_dict": d}


def _wrap_karl(sd):
    prefix = "base_tokenizer.vae." if "quant_conv.weight" in sd else "base_tokenizer.vqgan."
    d = {prefix + k: v for k, v in sd.items()}
    d["encoder.transformer.0.attn.in_proj_weight"] = torch.zeros(3)
    return {"ema": d, "model": {k: torch.zeros_like(v) for k, v in d.items()}}


@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
@pytest.mark.parametrize("wrap", [_wrap_maskgit, _wrap_mar, _wrap_ldm, _wrap_karl])
def test_checkpoint_round_trip(kind, wrap, tmp_path):
    src, dst = small(kind, seed=1), small(kind, seed=2)
    path = tmp_path / "ckpt.bin"
    torch.save(wrap(src.state_dict()), path)
    assert load_base_checkpoint(dst, path) is dst
    _assert_same(src, dst)


@pytest.mark.parametrize("kind", ["vqgan", "kl_vae"])
def test_safetensors_and_config_checkpoint(kind, tmp_path):
    from safetensors.torch import save_file
    src = small(kind, seed=1)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(5)
    dst = build_base_tokenizer(small_cfg(kind, checkpoint=str(path)))
    _assert_same(src, dst)


def test_mismatched_checkpoint_error_is_clear(tmp_path):
    src = build_base_tokenizer(small_cfg("vqgan", codebook_size=32))
    sd = src.state_dict()
    sd.pop("decoder.conv_out.bias")
    sd["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.bin"
    torch.save(sd, path)
    with pytest.raises(BaseCheckpointError) as err:
        load_base_checkpoint(small("vqgan"), path)
    msg = str(err.value)
    assert "1 missing: decoder.conv_out.bias" in msg
    assert "1 unexpected: decoder.extra.weight" in msg
    assert "quantize.embedding.weight: checkpoint (32, 8) vs model (16, 8)" in msg
    # a VAE checkpoint into a VQGAN
    torch.save({"model": small("kl_vae").state_dict()}, path)
    with pytest.raises(BaseCheckpointError, match="missing"):
        load_base_checkpoint(small("vqgan"), path)


def test_pickled_objects_need_opt_in(tmp_path):
    src, dst = small("vqgan", seed=1), small("vqgan", seed=2)
    path = tmp_path / "release.pth"
    torch.save({"ema": src.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(BaseCheckpointError, match="trust_pickle=True"):
        load_base_checkpoint(dst, path)
    load_base_checkpoint(dst, path, trust_pickle=True)
    _assert_same(src, dst)


def test_missing_file_error(tmp_path):
    with pytest.raises(BaseCheckpointError, match="not found"):
        load_base_checkpoint(small("vqgan"), tmp_path / "nope.bin")

