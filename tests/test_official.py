"""Authors' release checkpoints: key layout, conversion, trust opt-in, per-image decoder masks.

The key lists ``official_state_dict/*.keys.txt`` (``name (shape) dtype`` per line) were made by
instantiating the released architectures. Random state dicts built from them are saved the
way the authors save (``{'model', 'ema', 'epoch', 'args': argparse.Namespace}``), converted,
and run. Most checks use a width-reduced copy whose key *names* equal the release's (same
layer counts, narrower tensors); one smoke test converts and runs the full size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fixture_dir, read_key_list
from safetensors.torch import load_file
from torch import nn

from karl import load_model, load_official, load_pretrained
from karl.base_tokenizers import BaseGrid
from karl.checkpoint import CheckpointError
from karl.config import ModelConfig, preset
from karl.model import KARL
from karl.model.layers import Attention
from karl.official import (
    OFFICIAL_ROOTS, RELEASE_VAE_CONVENTIONS, UntrustedCheckpointError, convert_official,
    infer_config, main, map_official_keys, read_official, select_weights,
)

torch.set_num_threads(1)

VARIANTS = {  # kind -> (preset, key list, base prefix in the release)
    "vqgan": ("small", "karl_small_vqgan_quantized.keys.txt", "base_tokenizer.vqgan."),
    "kl_vae": ("small_vae", "karl_small_vae_continuous.keys.txt", "base_tokenizer.vae."),
}
Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


# --------------------------------------------------------------------------- helpers

def official_keys(kind: str) -> Shapes:
    """Parse a key list (tests/fixtures, the one parser in conftest): release name -> (shape, dtype)."""
    parsed = read_key_list(fixture_dir("official_state_dict") / VARIANTS[kind][1])
    return {name: (shape, getattr(torch, dtype)) for name, (shape, dtype) in parsed.items()}


def release_model_config(kind: str) -> ModelConfig:
    """The preset with the release's base-tokenizer conventions (the VQGAN's equal ours)."""
    cfg = preset(VARIANTS[kind][0]).model
    extra = RELEASE_VAE_CONVENTIONS if kind == "kl_vae" else {}
    return replace(cfg, base=replace(cfg.base, **extra))


def meta_state(kind: str) -> dict[str, torch.Tensor]:
    """The release's full state dict as meta tensors (shapes only)."""
    return {k: torch.empty(shape, dtype=dt, device="meta")
            for k, (shape, dt) in official_keys(kind).items()}


def our_keys_as_official(cfg: ModelConfig, kind: str) -> Shapes:
    """Our KARL's state-dict layout at ``cfg`` (meta device: no memory), in release names."""
    with torch.device("meta"):
        sd = KARL(cfg).state_dict()
    prefix = VARIANTS[kind][2]
    return {(prefix + k[5:] if k.startswith("base.") else k): (tuple(v.shape), v.dtype)
            for k, v in sd.items()}


def reduced_config(kind: str) -> ModelConfig:
    """Narrow tensors, same names: layer counts, levels and blocks as released."""
    full = release_model_config(kind)
    base = replace(full.base, channels=32,
                   **({"latent_dim": 16, "codebook_size": 64} if kind == "vqgan" else {}))
    return replace(full, width=64, num_latent_tokens=64, max_tokens=64, halting_hidden=32,
                   codebook_size=256 if full.quantize else full.codebook_size, base=base)


def reduced_keys(kind: str) -> Shapes:
    """The reduced layout, after checking that its names are exactly the release's.

    GAN keys (dropped by the converter) keep their names with tiny shapes.
    """
    ref = official_keys(kind)
    ours = our_keys_as_official(reduced_config(kind), kind)
    non_gan = {k for k in ref if not k.startswith("gan_losses.")}
    assert sorted(non_gan ^ set(ours)) == [], "reduced model names differ from the release"
    gan = {k: ((2,) if dt.is_floating_point else (), dt)
           for k, (shape, dt) in ref.items() if k.startswith("gan_losses.")}
    return {**ours, **gan}


def random_state(shapes: Shapes, seed: int = 0, pool: int | None = None) -> dict[str, torch.Tensor]:
    """Random weights: norms' weights near 1, everything else N(0, 0.02); integers 0.

    ``pool``: take every float tensor as a slice of one shared random buffer of this many
    values (fast for the full size; the converter must then un-share them).
    """
    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(pool, generator=gen) * 0.02 if pool else None
    out, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        n = 1
        for s in shape:
            n *= s
        if not dtype.is_floating_point:
            out[name] = torch.zeros(shape, dtype=dtype)
            continue
        if buf is not None:
            offset = (offset + 7919) % max(1, pool - n)
            t = buf[offset:offset + n].view(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        if len(shape) == 1 and name.endswith(".weight"):
            t = t + 1.0                    # LayerNorm / GroupNorm scales
        out[name] = t.to(dtype)
    return out


def save_like_authors(path: Path, ema: dict, model: dict | None = None, ddp: bool = False,
                      **args) -> Path:
    """``torch.save`` as the release does: the Namespace makes weights_only=True fail."""
    wrap = (lambda sd: {f"module.{k}": v for k, v in sd.items()}) if ddp else (lambda sd: sd)
    ckpt = {"model": wrap(model if model is not None else ema), "ema": wrap(ema),
            "optimizer": {}, "epoch": 199,
            "args": argparse.Namespace(num_heads=8, batch_size=64, lr=1e-4, **args)}
    torch.save(ckpt, path)
    return path


def images(b: int, side: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def roundtrip(model: KARL, x: torch.Tensor, eps) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.encode(x, epsilon=eps)
    return enc.keep, model.decode(enc)


# --------------------------------------------------------------------------- trust opt-in

def test_namespace_makes_weights_only_fail_and_we_refuse(tmp_path, capsys):
    path = save_like_authors(tmp_path / "k.pth", {"latent_tokens": torch.zeros(2, 2)})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)                  # what the Namespace causes
    with pytest.raises(UntrustedCheckpointError, match=r"weights_only=False.*arbitrary code"):
        read_official(path)
    with pytest.raises(UntrustedCheckpointError, match="trust=True"):
        load_official(path)
    out = tmp_path / "out"
    assert main([str(path), str(out)]) == 2
    assert "--trust" in capsys.readouterr().err and not out.exists()
    assert read_official(path, trust=True)["epoch"] == 199


def test_plain_tensor_file_needs_no_trust(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"ema": {"latent_tokens": torch.zeros(2, 2)}, "epoch": 3}, path)
    assert read_official(path)["epoch"] == 3


# --------------------------------------------------------------------------- full-size layout

@pytest.mark.parametrize("kind", list(VARIANTS))
def test_full_size_layout_equals_release(kind):
    """Our preset, at full size, has every release key with its shape and dtype (no forward)."""
    ref = {k: v for k, v in official_keys(kind).items() if not k.startswith("gan_losses.")}
    ours = our_keys_as_official(preset(VARIANTS[kind][0]).model, kind)
    assert sorted(set(ref) - set(ours)) == [], "release keys our model lacks"
    assert sorted(set(ours) - set(ref)) == [], "our keys the release lacks"
    assert {k: (v, ref[k]) for k, v in ours.items() if ref[k] != v} == {}
    # The config read from shapes alone is the preset, with the release's conventions.
    assert infer_config(meta_state(kind)) == release_model_config(kind)
    roots = {k.split(".")[0] for k in ref if not k.startswith("base_tokenizer.")}
    assert roots <= OFFICIAL_ROOTS and (kind != "vqgan" or roots == OFFICIAL_ROOTS)


def test_infer_config_other_variants_and_args():
    """VQGAN-continuous and VAE-quantized files; heads and image size from args or overrides."""
    vq = meta_state("vqgan")
    del vq["quantize.embedding.weight"]
    cfg = infer_config({f"module.{k}": v for k, v in vq.items()})
    assert cfg == replace(preset("small").model, quantize=False)
    vae = meta_state("kl_vae")
    vae["quantize.embedding.weight"] = torch.empty(4096, 12, device="meta")
    assert infer_config(vae) == replace(release_model_config("kl_vae"), quantize=True)
    args = argparse.Namespace(num_heads=16, img_size=512)
    assert (infer_config(vae, args).heads, infer_config(vae, args).image_size) == (16, 512)
    assert infer_config(vae, args, heads=4).heads == 4
    with pytest.raises(CheckpointError, match="not divisible by 24 heads"):
        infer_config(vae, heads=24)


# --------------------------------------------------------------------------- reduced conversion

@pytest.mark.parametrize("kind,ddp", [("vqgan", False), ("kl_vae", True)])
def test_convert_reduced_and_run(kind, ddp, tmp_path, capsys):
    shapes = reduced_keys(kind)
    ema = random_state(shapes, seed=0)
    model_w = {k: v + 1 for k, v in ema.items()}            # must not be the one used
    src = save_like_authors(tmp_path / f"karl_small_{kind}.pth", ema, model_w, ddp=ddp)
    out = tmp_path / "converted"
    assert main([str(src), str(out), "--trust"]) == 0
    printed = capsys.readouterr().out
    assert "next:" in printed
    if kind == "kl_vae":   # the summary says which posterior the file got, and how to get the release's
        assert "posterior: mean (deterministic; the release samples it: convert with --posterior sample" in printed
    else:
        assert "posterior" not in printed

    # Every non-GAN tensor was used, unchanged, under our name.
    tensors = load_file(str(out / "model.safetensors"))
    prefix = VARIANTS[kind][2]
    expected = {("base." + k[len(prefix):] if k.startswith(prefix) else k): v
                for k, v in ema.items() if not k.startswith("gan_losses.")}
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    meta = json.loads((out / "config.json").read_text())
    vae_only = {"input_range", "output_range", "decode_scale", "posterior"} & set(meta["model"]["base"])
    assert vae_only == (set() if kind == "vqgan" else {"input_range", "output_range", "decode_scale",
                                                        "posterior"})
    src_info = meta["source"]
    assert src_info["file"] == src.name and src_info["weights"] == "ema"
    assert src_info["epoch"] == 199 and src_info["heads_from"] == "args.num_heads"
    assert src_info["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert src_info["dropped"] == ["gan_losses"] and src_info["args"]["batch_size"] == 64

    model = load_pretrained(out)
    assert model.config == reduced_config(kind)
    direct = load_official(src, trust=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 direct.state_dict().values()))
    assert load_model(out).config == model.config

    # 256x256 at batch 3 (different epsilons, so different programs) equals batch 1.
    x, eps = images(3), torch.tensor([0.005, 0.05, 0.38])
    keep3, y3 = roundtrip(model, x, eps)
    assert y3.shape == (3, 3, 256, 256) and torch.isfinite(y3).all()
    assert 0 <= y3.min() and y3.max() <= 1
    for i in range(3):
        keep1, y1 = roundtrip(model, x[i:i + 1], eps[i:i + 1])
        assert torch.equal(keep1[0], keep3[i])
        torch.testing.assert_close(y1[0], y3[i], atol=2e-4, rtol=0)   # float noise only


def test_model_weights_when_no_ema_or_asked(tmp_path):
    ema = random_state(reduced_keys("vqgan"), seed=0)
    model_w = {k: v + 1 for k, v in ema.items()}
    path = tmp_path / "k.pth"
    torch.save({"model": model_w, "epoch": 5, "args": argparse.Namespace()}, path)
    m = load_official(path, trust=True)
    assert m.provenance["weights"] == "model" and m.provenance["heads_from"] == "default (8)"
    assert torch.equal(m.latent_tokens, model_w["latent_tokens"])
    both = save_like_authors(tmp_path / "both.pth", ema, model_w)
    m = load_official(both, trust=True, weights="model")
    assert torch.equal(m.latent_tokens, model_w["latent_tokens"])
    assert select_weights({"ema": {}, "model": model_w})[1] == "model"
    with pytest.raises(CheckpointError, match="--weights model"):
        select_weights({"ema": [torch.zeros(1)], "model": model_w})


def test_unmapped_missing_and_mismatched_keys_are_listed(tmp_path, capsys):
    ema = random_state(reduced_keys("vqgan"), seed=0)
    extra = {**ema, "lpips.net.w": torch.zeros(1), "base_tokenizer.vq.x": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"no place in KARL \(2\).*vq\.x.*lpips\.net\.w"):
        map_official_keys(extra)

    broken = dict(ema)
    del broken["decoder_embed.bias"]
    broken["decoder.ffn.2.weight"] = torch.zeros(7, 128)
    path = save_like_authors(tmp_path / "b.pth", broken)
    with pytest.raises(CheckpointError) as err:
        load_official(path, trust=True)
    assert "missing (1): decoder_embed.bias" in str(err.value)
    assert "decoder.ffn.2.weight: checkpoint (7, 128) vs model (64, 128)" in str(err.value)
    assert main([str(path), str(tmp_path / "o"), "--trust"]) == 1
    assert "decoder_embed.bias" in capsys.readouterr().err


# --------------------------------------------------------------------------- per-image masks

def test_decoder_masks_are_per_image():
    """Batch decoding with different keep-masks equals decoding each image alone."""
    torch.manual_seed(0)
    model = KARL(preset("tiny").model).eval()
    b, k, e = 3, 12, model.config.token_dim
    latents = torch.randn(b, k, e)
    keep = torch.zeros(b, k, dtype=torch.bool)
    keep[0, :3] = True                       # a short program
    keep[1] = True                           # everything
    keep[2, ::2] = True                      # scattered
    with torch.no_grad():
        batch = model.forward_decoder(latents, keep)
        masked = model.forward_decoder_masked(latents, keep)
        for i in range(b):
            alone = model.forward_decoder(latents[i:i + 1], keep[i:i + 1])
            torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch, masked, atol=1e-5, rtol=1e-5)


def test_release_head_major_mask_repeat_mixes_images():
    """What the release does wrong (docs/OFFICIAL.md, "How our model differs", 1), on one layer.

    ``nn.MultiheadAttention`` reads a 3D mask as [B * H, L, L] with row ``b * H + h``
    (batch-major, ``repeat_interleave``). The release builds it with ``repeat(H, 1, 1)``
    (head-major: row ``h * B + b``), so head h of image b gets image ``(b*H + h) % B``'s mask.
    """
    torch.manual_seed(0)
    width, heads, b, n = 16, 4, 3, 5
    ours = Attention(width, heads).eval()
    mha = nn.MultiheadAttention(width, heads, batch_first=True).eval()
    mha.load_state_dict(ours.state_dict())
    x = torch.randn(b, n + 4, width)
    key_mask = torch.ones(b, n + 4, dtype=torch.bool)
    key_mask[0, n + 1:] = False
    key_mask[2, n:] = False
    blocked = torch.zeros(b, n + 4, n + 4).masked_fill(~key_mask[:, None, :], float("-inf"))
    with torch.no_grad():
        ref = ours(x, key_mask)
        batch_major = mha(x, x, x, attn_mask=blocked.repeat_interleave(heads, 0),
                          need_weights=False)[0]
        head_major = mha(x, x, x, attn_mask=blocked.repeat(heads, 1, 1), need_weights=False)[0]
        single = mha(x[:1], x[:1], x[:1], attn_mask=blocked[:1].repeat(heads, 1, 1),
                     need_weights=False)[0]
    torch.testing.assert_close(batch_major, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single, ref[:1], atol=1e-5, rtol=1e-5)     # batch 1 is fine
    assert not torch.allclose(head_major, ref, atol=1e-3)                 # batch 3 is not


# --------------------------------------------------------------------------- full-size smoke

@pytest.mark.slow
def test_full_size_vqgan_converts_and_runs(tmp_path):
    """The released VQGAN architecture end to end: .pth -> release dir -> 256x256 image."""
    shapes = official_keys("vqgan")
    ema = random_state(shapes, seed=0, pool=1 << 22)
    src = save_like_authors(tmp_path / "karl_small_vqgan_quantized_latents.pth", ema)
    del ema
    out = convert_official(src, tmp_path / "converted", trust=True)
    model = load_pretrained(out)
    assert model.config == preset("small").model
    # Budget 32 of 512 latent tokens keeps the CPU time down; the layers are full size.
    x, eps, budget = images(1), torch.tensor([0.005, 0.05, 0.38]), 32
    grid = model.base_encode(x)
    enc1 = model.encode(x, epsilon=eps[1:2], budget=budget, base_grid=grid)
    y1 = model.decode(enc1)
    assert y1.shape == (1, 3, 256, 256) and torch.isfinite(y1).all()
    # Batch 3 (one image, three epsilons; the cached base grid reused, as the app does):
    # the decoder's prediction for the middle row equals the batch-1 one.
    grid3 = BaseGrid(grid.features.expand(3, -1, -1, -1), grid.target.expand(3, -1, -1))
    enc3 = model.encode(x.expand(3, -1, -1, -1), epsilon=eps, budget=budget, base_grid=grid3)
    assert torch.equal(enc3.keep[1], enc1.keep[0])
    with torch.no_grad():
        head3 = model.forward_decoder(enc3.latents, enc3.keep)
        head1 = model.forward_decoder(enc1.latents, enc1.keep)
    assert head3.shape == (3, 1024, 16, 16)
    torch.testing.assert_close(head3[1], head1[0], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- VAE conventions

def small_vae(seed: int = 0, **conventions) -> "KLVAETokenizer":
    from karl.base_tokenizers import build_base_tokenizer
    from karl.config import BaseTokenizerConfig
    cfg = BaseTokenizerConfig(kind="kl_vae", channels=32, channel_mult=(1, 1, 2), num_res_blocks=1,
                              downsample=4, latent_dim=4, latent_scale=0.5, **conventions)
    torch.manual_seed(seed)
    return build_base_tokenizer(cfg).eval()


def raw_moments(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MAR's arithmetic by hand: encoder -> quant_conv -> (mean, clamped logvar)."""
    mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


@torch.no_grad()
def test_vae_default_conventions_are_ldm_mar():
    """Defaults (our trained models, the small_vae preset): [-1, 1] in and out, mean, /scale."""
    vae, x = small_vae(), images(2, side=16)
    mean, _ = raw_moments(vae, x * 2 - 1)
    grid = vae.encode(x)
    assert torch.equal(grid.features, mean * 0.5)
    f = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    out = vae.decoder(vae.post_quant_conv(f / 0.5))
    assert torch.equal(vae.decode(f), ((out + 1) / 2).clamp(0, 1))


@torch.no_grad()
def test_vae_each_convention():
    x = images(2, side=16)
    f = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    vae = small_vae(input_range=(0.0, 1.0))                      # the image goes in as it is
    assert torch.equal(vae.encode(x).features, raw_moments(vae, x)[0] * 0.5)
    vae = small_vae(input_range=(-2.0, 2.0))
    assert torch.equal(vae.encode(x).features, raw_moments(vae, -2.0 + 4.0 * x)[0] * 0.5)
    vae = small_vae(decode_scale=1.0)                            # no division before decoding
    out = vae.decoder(vae.post_quant_conv(f))
    assert torch.equal(vae.decode(f), ((out + 1) / 2).clamp(0, 1))
    vae = small_vae(decode_scale=0.25)
    out = vae.decoder(vae.post_quant_conv(f / 0.25))
    assert torch.equal(vae.decode(f), ((out + 1) / 2).clamp(0, 1))
    vae = small_vae(output_range=(0.0, 1.0))                     # the raw output is the image
    out = vae.decoder(vae.post_quant_conv(f / 0.5))
    assert torch.equal(vae.decode(f), out.clamp(0, 1))
    assert not torch.equal(vae.decode(f), ((out + 1) / 2).clamp(0, 1))


@torch.no_grad()
def test_vae_posterior_sample_is_seeded_and_mean_is_deterministic():
    x = images(2, side=16)
    vae = small_vae(posterior="sample")
    mean, logvar = raw_moments(vae, x * 2 - 1)
    vae.generator = torch.Generator().manual_seed(7)
    a = vae.encode(x).features
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, (mean + torch.exp(0.5 * logvar) * noise) * 0.5)
    assert not torch.equal(vae.encode(x).features, a)            # the generator moved on
    torch.manual_seed(11)                                        # no generator: the global RNG
    vae.generator = None
    b = vae.encode(x).features
    torch.manual_seed(11)
    assert torch.equal(vae.encode(x).features, b)
    det = small_vae()                                            # "mean": same every call
    assert torch.equal(det.encode(x).features, det.encode(x).features)


def test_conventions_are_validated_and_kl_vae_only():
    from karl.base_tokenizers import build_base_tokenizer
    from karl.config import BaseTokenizerConfig, ConfigError, model_config_from_dict, to_dict
    with pytest.raises(ConfigError, match="posterior"):
        BaseTokenizerConfig(kind="kl_vae", posterior="mode")
    with pytest.raises(ConfigError, match="low < high"):
        BaseTokenizerConfig(kind="kl_vae", input_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="positive"):
        BaseTokenizerConfig(kind="kl_vae", decode_scale=0.0)
    with pytest.raises(ValueError, match="apply to kl_vae only"):
        build_base_tokenizer(BaseTokenizerConfig(kind="conv_ae", latent_dim=4, downsample=4,
                                                 channels=8, channel_mult=(1, 2, 2),
                                                 num_res_blocks=1, output_range=(0.0, 1.0)))
    cfg = release_model_config("kl_vae")                         # survives config.json
    assert model_config_from_dict(to_dict(cfg)) == cfg
    old = to_dict(preset("small_vae").model)                     # a config.json from before
    for key in ("input_range", "output_range", "decode_scale", "posterior"):
        del old["base"][key]
    assert model_config_from_dict(old) == preset("small_vae").model


@torch.no_grad()
def release_vae_reference(model: KARL, x: torch.Tensor, eps: torch.Tensor,
                          sample_seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's VAE path written out (docs/OFFICIAL.md section 7), from our KARL's layers.

    [0, 1] image into the VAE encoder as it is; base part of the 2D token = posterior
    sample (MAR's ``mean + std * torch.randn(mean.shape)``; the mean when ``sample_seed`` is
    None) x 0.2325; the decoder head's 16-d output into post_quant_conv + the VAE decoder
    without dividing by 0.2325; the raw output is the image.
    """
    vae = model.base
    mean, logvar = raw_moments(vae, x)
    z = mean
    if sample_seed is not None:
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(sample_seed))
        z = mean + torch.exp(0.5 * logvar) * noise
    tokens = model.embed_grid(x, z * 0.2325)
    latents, logits = model.forward_encoder(tokens, model.bin_index(eps, x.shape[0]), model.max_tokens)
    keep = logits.sigmoid() <= 0.75
    head = model.forward_decoder(latents, keep)
    return keep, vae.decoder(vae.post_quant_conv(head)).clamp(0, 1)


@pytest.fixture(scope="module")
def converted_vae(tmp_path_factory) -> tuple[Path, dict]:
    """A release-layout VAE .pth (reduced widths) whose halting head drops some tokens."""
    tmp = tmp_path_factory.mktemp("vae")
    ema = random_state(reduced_keys("kl_vae"), seed=0)
    ema["halting_mlp.2.weight"] = ema["halting_mlp.2.weight"] * 50   # confident, varied decisions
    src = save_like_authors(tmp / "karl_small_vae_continuous_latents.pth", ema)
    return src, ema


def test_converted_vae_reconstructs_with_the_release_arithmetic(converted_vae, tmp_path, capsys):
    src, _ = converted_vae
    x, eps = images(1, seed=4), torch.tensor([0.05])
    out = convert_official(src, tmp_path / "mean", trust=True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"]["base"]["input_range"] == [0.0, 1.0]
    assert meta["model"]["base"]["decode_scale"] == 1.0 and meta["model"]["base"]["posterior"] == "mean"
    model = load_pretrained(out)
    keep_ref, ref = release_vae_reference(model, x, eps, sample_seed=None)
    assert 0 < int(keep_ref.sum()) < keep_ref.numel(), "the test needs some halted tokens"
    keep, y = roundtrip(model, x, eps)
    assert torch.equal(keep, keep_ref) and torch.equal(y, ref)

    # The release samples the posterior: --posterior sample with the same noise is equal too.
    assert main([str(src), str(tmp_path / "sample"), "--trust", "--posterior", "sample"]) == 0
    assert "posterior: sample (as the release computes" in capsys.readouterr().out
    sampled = load_pretrained(tmp_path / "sample")
    sampled.base.generator = torch.Generator().manual_seed(5)
    keep_s, y_s = roundtrip(sampled, x, eps)
    keep_sref, ref_s = release_vae_reference(sampled, x, eps, sample_seed=5)
    assert torch.equal(keep_s, keep_sref) and torch.equal(y_s, ref_s)
    assert not torch.equal(y_s, y)                               # the noise does reach the image

    # Our old conventions on the same weights give other images (what the issue found).
    old_cfg = replace(model.config, base=replace(
        model.config.base, input_range=(-1.0, 1.0), output_range=(-1.0, 1.0), decode_scale=None))
    old = KARL(old_cfg).eval()
    old.load_state_dict(model.state_dict())
    assert (roundtrip(old, x, eps)[1] - ref).abs().max() > 0.05


def test_vqgan_keeps_our_conventions_and_refuses_sampling(tmp_path):
    ema = random_state(reduced_keys("vqgan"), seed=0)
    src = save_like_authors(tmp_path / "vq.pth", ema)
    assert load_official(src, trust=True).config.base == reduced_config("vqgan").base
    with pytest.raises(CheckpointError, match="VAE release only"):
        load_official(src, trust=True, posterior="sample")


# --------------------------------------------------------------------------- damaged files

def _damaged(tmp_path: Path) -> dict[str, Path]:
    good = save_like_authors(tmp_path / "good.pth", {"latent_tokens": torch.zeros(64, 64)})
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "random": torch.randint(
        0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes(),
        "empty": b"", "html": b"<html>404 Not Found</html>"}
    out = {}
    for name, blob in files.items():
        (tmp_path / f"{name}.pth").write_bytes(blob)
        out[name] = tmp_path / f"{name}.pth"
    return out


@pytest.mark.parametrize("trust", [True, False])
def test_damaged_files_give_one_line_naming_the_file(tmp_path, capsys, trust):
    expected = {"truncated": "truncated or corrupt", "random": "not a PyTorch checkpoint",
                "empty": "empty", "html": "not a PyTorch checkpoint"}
    for name, path in _damaged(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            read_official(path, trust=trust)
        msg = str(err.value)
        assert not isinstance(err.value, UntrustedCheckpointError), name
        assert str(path) in msg and expected[name] in msg and "\n" not in msg, msg
        assert "Namespace" not in msg
        argv = [str(path), str(tmp_path / f"out_{name}")] + ["--trust"] * trust
        assert main(argv) == 1
        err_text = capsys.readouterr().err.strip()
        assert err_text.count("\n") == 0 and str(path) in err_text and "Traceback" not in err_text


def test_refusal_names_what_the_pickle_holds(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"ema": {"x": torch.zeros(1)}, "when": __import__("datetime").date(2025, 1, 1)}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        read_official(path)
    assert "datetime.date" in str(err.value) and "Namespace" in str(err.value)  # the release hint
    with pytest.raises(UntrustedCheckpointError, match="references argparse.Namespace"):
        read_official(save_like_authors(tmp_path / "k.pth", {"latent_tokens": torch.zeros(1)}))
