"""Inference precision (karl/precision.py): selection, autocast, wrapped model methods."""

from __future__ import annotations

import warnings

import pytest
import torch

from karl import build_model, load_pretrained, save_pretrained
from karl.precision import (
    autocast, cpu_has_fast_bf16, resolve_precision, set_precision,
)

torch.set_num_threads(1)


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ValueError, match="not one of fp32, bf16, fp16, auto"):
        resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="not meta"):
        resolve_precision("bf16", "meta")


def test_autocast_context_and_onednn_flag_restored():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with autocast("cpu", "fp32"):
            assert (a @ b).dtype == torch.float32 and not torch.backends.mkldnn.enabled
        with autocast("cpu", "bf16"):
            assert (a @ b).dtype == torch.bfloat16
            assert torch.backends.mkldnn.enabled or not torch.backends.mkldnn.is_available()
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = before


def _pin_halting_at_threshold(model):
    """Halting logits at the threshold for every token (every decision at risk under bf16)."""
    with torch.no_grad():
        last = model.halting_mlp[2]
        last.weight.mul_(1e-3)
        last.bias.fill_(torch.logit(torch.tensor(model.config.halt_threshold)).item())


def test_bf16_path_close_to_fp32_and_fp32_restored(tiny_model, tiny_images):
    enc32 = tiny_model.encode(tiny_images, epsilon=0.05)
    rec32 = tiny_model.decode(enc32)
    set_precision(tiny_model, "bf16")
    conv = next(m for m in tiny_model.base.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    enc16 = tiny_model.encode(tiny_images, epsilon=0.05)
    rec16 = tiny_model.decode(enc16)
    assert rec16.dtype == enc16.latents.dtype == enc16.halting_probs.dtype == torch.float32
    assert rec16.is_contiguous() and 0 < (rec16 - rec32).abs().max() < 0.1
    assert torch.equal(enc16.keep, enc32.keep)                   # the re-check's promise
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)   # restored after it
    assert tiny_model.precision_stats["images"] == len(tiny_images)
    # Reconstruct and a cached grid go through the same path.
    grid = tiny_model.base_encode(tiny_images)
    assert grid.features.dtype == torch.float32
    assert tiny_model.reconstruct(tiny_images, num_tokens=4, base_grid=grid).dtype == torch.float32

    set_precision(tiny_model, "fp32")
    assert "encode" not in vars(tiny_model) and conv.weight.is_contiguous()
    assert torch.equal(tiny_model.decode(tiny_model.encode(tiny_images, epsilon=0.05)), rec32)


def test_recheck_gives_fp32_programs_for_images_near_the_threshold(tiny_model, tiny_images):
    """Every decision pinned near the threshold: every image is re-encoded in fp32, so the
    encoding is bitwise fp32's, also with per-image epsilons and a cached (bf16) base grid."""
    _pin_halting_at_threshold(tiny_model)
    eps = torch.tensor([0.02, 0.05, 0.1, 0.2])[: len(tiny_images)]
    enc32 = tiny_model.encode(tiny_images, epsilon=eps)
    mono32 = tiny_model.encode(tiny_images, epsilon=eps, monotone=True)
    set_precision(tiny_model, "bf16")
    grid16 = tiny_model.base_encode(tiny_images)
    for kwargs, ref in (({}, enc32), ({"base_grid": grid16}, enc32), ({"monotone": True}, mono32)):
        enc = tiny_model.encode(tiny_images, epsilon=eps, **kwargs)
        for name in ("latents", "halting_probs", "keep", "epsilon"):
            assert torch.equal(getattr(enc, name), getattr(ref, name)), (name, kwargs)
    stats = tiny_model.precision_stats
    assert stats["rechecked_images"] == stats["images"] == 3 * len(tiny_images)
    assert stats["near_threshold_tokens"] == 3 * enc32.keep.numel()


def test_recheck_only_touches_images_near_the_threshold(tiny_model, tiny_images):
    """Halting far from the threshold: no image is re-encoded; the bf16 values are kept."""
    with torch.no_grad():
        tiny_model.halting_mlp[2].weight.zero_()
        tiny_model.halting_mlp[2].bias.fill_(-8.0)                # prob 3e-4: keep everything
    set_precision(tiny_model, "bf16")
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert bool(enc.keep.all()) and tiny_model.precision_stats["rechecked_images"] == 0
    set_precision(tiny_model, "fp32")
    assert not torch.equal(enc.latents, tiny_model.encode(tiny_images, epsilon=0.05).latents)


def test_guarded_encode_runs_the_karl_encoder_in_fp32_on_the_reduced_grid(tiny_model, tiny_images):
    """Far from the threshold (no re-check): the program is the fp32 KARL encoder's on the
    bf16 base grid, bitwise; without the guard the encoder runs under autocast instead."""
    with torch.no_grad():
        tiny_model.halting_mlp[2].weight.zero_()
        tiny_model.halting_mlp[2].bias.fill_(-8.0)
    set_precision(tiny_model, "bf16")
    grid16 = tiny_model.base_encode(tiny_images)
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    set_precision(tiny_model, "bf16", recheck=False)
    unguarded = tiny_model.encode(tiny_images, epsilon=0.05)
    set_precision(tiny_model, "fp32")
    ref = tiny_model.encode(tiny_images, epsilon=0.05, base_grid=grid16)
    assert torch.equal(enc.latents, ref.latents) and torch.equal(enc.halting_probs, ref.halting_probs)
    assert not torch.equal(unguarded.latents, ref.latents)


def test_near_threshold_decisions_warn_once_without_recheck(tiny_model, tiny_images):
    _pin_halting_at_threshold(tiny_model)
    set_precision(tiny_model, "bf16", recheck=False)
    with pytest.warns(UserWarning, match="within 0.02 of the threshold under bf16 with the fp32 "
                                         "re-check off"):
        enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert tiny_model.precision_stats["near_threshold_tokens"] == enc.keep.numel()
    assert tiny_model.precision_stats["rechecked_images"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the second call does not warn again
        tiny_model.encode(tiny_images, epsilon=0.05)


def test_load_pretrained_precision(tmp_path, tiny_images):
    out = save_pretrained(build_model("tiny", seed=0), tmp_path / "m")
    model = load_pretrained(out, precision="auto")
    assert model.precision == "auto"
    assert model.decode(model.encode(tiny_images)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'half'"):
        load_pretrained(out, precision="half")


def test_karl_eval_precision_recorded_and_not_mixed(tmp_path):
    """--precision bf16 runs, is recorded, and a rerun at fp32 refuses to append to it."""
    import json

    from karl.evaluate import main
    release = save_pretrained(build_model("tiny", seed=0), tmp_path / "m")
    out = tmp_path / "res"
    base = ["--checkpoint", str(release), "--data", "procedural:2", "--out", str(out), "--fixed", "4",
            "--epsilon", "0.05", "--search", "none", "--lpips-net", "none", "--no-progress"]
    assert main([*base, "--precision", "bf16"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["precision"] == "bf16" and config["near_threshold_tokens"] >= 0
    assert main([*base, "--precision", "fp32"]) == 2            # fingerprint mismatch
