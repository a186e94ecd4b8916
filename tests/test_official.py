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
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from karl import load_official, load_pretrained
from karl.base_tokenizers import BaseGrid
from karl.checkpoint import CheckpointError
from karl.config import ModelConfig, preset
from karl.model import KARL
from karl.model.layers import Attention
from karl.official import (
    OFFICIAL_ROOTS, UntrustedCheckpointError, convert_official, infer_config, load_any, main,
    map_official_keys, read_official, select_weights,
)

torch.set_num_threads(1)

KEYS_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dict"
VARIANTS = {  # kind -> (preset, key list, base prefix in the release)
    "vqgan": ("small", "karl_small_vqgan_quantized.keys.txt", "base_tokenizer.vqgan."),
    "kl_vae": ("small_vae", "karl_small_vae_continuous.keys.txt", "base_tokenizer.vae."),
}
LINE = re.compile(r"^(\S+) \(([\d, ]*)\) (\S+)$")
Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


# --------------------------------------------------------------------------- helpers

def official_keys(kind: str) -> Shapes:
    """Parse a key list: release name -> (shape, dtype)."""
    path = KEYS_DIR / VARIANTS[kind][1]
    if not path.exists():
        pytest.skip(f"official key list not available: {path}")
    out = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line.strip())
        assert m, f"unparsable line in {path.name}: {line!r}"
        shape = tuple(int(s) for s in m.group(2).split(",") if s.strip())
        out[m.group(1)] = (shape, getattr(torch, m.group(3)))
    return out


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
    full = preset(VARIANTS[kind][0]).model
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
    # The config read from shapes alone is the preset itself.
    assert infer_config(meta_state(kind)) == preset(VARIANTS[kind][0]).model
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
    assert infer_config(vae) == replace(preset("small_vae").model, quantize=True)
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
    assert "next:" in capsys.readouterr().out

    # Every non-GAN tensor was used, unchanged, under our name.
    tensors = load_file(str(out / "model.safetensors"))
    prefix = VARIANTS[kind][2]
    expected = {("base." + k[len(prefix):] if k.startswith(prefix) else k): v
                for k, v in ema.items() if not k.startswith("gan_losses.")}
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    meta = json.loads((out / "config.json").read_text())
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
    assert load_any(out).config == model.config

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
    """What the release does wrong (KARL_FACTS section 5), shown on one attention layer.

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
