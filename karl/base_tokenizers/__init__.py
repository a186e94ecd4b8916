"""2D base tokenizers (VQGAN, KL-VAE, our conv AE), a builder, and user-checkpoint loading.

Checkpoints accepted by :func:`load_base_checkpoint`:

- MaskGIT-pytorch VQGAN as used by TiTok (``maskgit-vqgan-imagenet-f16-256.bin``): a plain
  state dict; its ``mid.0`` / ``mid.1`` / ``upsample_conv`` names are mapped to ours;
- LDM/MAR KL-16 (``kl16.ckpt``): ``{"model": state_dict}`` (or ``"state_dict"``), keys with or
  without ``module.`` / ``model.`` / ``first_stage_model.`` prefixes; ``loss.*`` is dropped;
- ``.safetensors`` files (or a directory holding ``model.safetensors``);
- a KARL state dict: only the ``base_tokenizer.vqgan.`` / ``base_tokenizer.vae.`` /
  ``base_tokenizer.`` subtree is used.

Pickles are opened with ``torch.load(weights_only=True)``; files that need more (the authors'
release stores an ``argparse.Namespace``) require ``trust_pickle=True``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from karl.base_tokenizers.base import BaseGrid, BaseTokenizer
from karl.base_tokenizers.conv_ae import ConvAutoencoder
from karl.base_tokenizers.kl_vae import KLVAETokenizer
from karl.base_tokenizers.tiny_ae import TinyAECheckpointError, TinyAutoencoder
from karl.base_tokenizers.vqgan import VQGANTokenizer
from karl.config import BaseTokenizerConfig

__all__ = [
    "BaseGrid", "BaseTokenizer", "BaseCheckpointError", "ConvAutoencoder", "KLVAETokenizer",
    "VQGANTokenizer", "TinyAutoencoder", "TinyAECheckpointError", "TOKENIZERS", "build_base_tokenizer", "canonical_state_dict",
    "load_base_checkpoint", "strip_prefix",
]

TOKENIZERS: dict[str, type[BaseTokenizer]] = {
    "conv_ae": ConvAutoencoder,
    "vqgan": VQGANTokenizer,
    "kl_vae": KLVAETokenizer,
    "tae": TinyAutoencoder,
}

# A key with one of these prefixes selects a subtree: everything else is dropped.
_SUBTREES = ("base_tokenizer.vqgan.", "base_tokenizer.vae.", "first_stage_model.", "base_tokenizer.")
# Wrappers (DDP, torch.compile, Lightning) stripped from any key that has them.
_WRAPPERS = ("module.", "_orig_mod.", "model.")
# Nested containers, most preferred first (inference uses the EMA weights).
_CONTAINERS = ("ema", "state_dict", "model")
_TRAINING_ONLY = ("loss.",)
# TiTok's MaskGIT-VQGAN port (open-muse lineage) names the mid blocks ``mid.0`` / ``mid.1`` and
# the upsampling conv ``upsample_conv``; the KARL release (and our module) say ``mid.block_1`` /
# ``mid.block_2`` and ``upsample.conv``.
_RENAMES = (
    (re.compile(r"^(encoder|decoder)\.mid\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.1\."), r"\1.mid.block_2."),
    (re.compile(r"^decoder\.up\.(\d+)\.upsample_conv\."), r"decoder.up.\1.upsample.conv."),
)


class BaseCheckpointError(ValueError):
    """A base-tokenizer checkpoint cannot be read or does not match the architecture."""


def build_base_tokenizer(cfg: BaseTokenizerConfig) -> BaseTokenizer:
    """Instantiate the tokenizer named by ``cfg.kind``; load ``cfg.checkpoint`` if set."""
    if cfg.kind not in TOKENIZERS:
        raise ValueError(f"unknown base tokenizer kind {cfg.kind!r}; valid: {sorted(TOKENIZERS)}")
    _check_conventions(cfg)
    tokenizer = TOKENIZERS[cfg.kind](cfg)
    if cfg.checkpoint and cfg.kind != "tae":  # the tiny AE reads its own weights (base.checkpoint)
        load_base_checkpoint(tokenizer, cfg.checkpoint)
    return tokenizer


# Arithmetic conventions only the KL-VAE reads (BaseTokenizerConfig); the other kinds have
# fixed ones, so a non-default value there would be silently ignored: refuse it instead.
_KL_VAE_CONVENTIONS = ("input_range", "output_range", "decode_scale", "posterior")


def _check_conventions(cfg: BaseTokenizerConfig) -> None:
    if cfg.kind == "kl_vae":
        return
    default = BaseTokenizerConfig()
    changed = [n for n in _KL_VAE_CONVENTIONS if getattr(cfg, n) != getattr(default, n)]
    if changed:
        raise ValueError(f"base tokenizer {cfg.kind!r} has fixed conventions; "
                         f"{', '.join(changed)} apply to kl_vae only")


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str, *,
                 only: bool = False) -> dict[str, Tensor]:
    """Remove ``prefix`` from the keys that start with it.

    Args:
        state_dict: name -> tensor.
        prefix: e.g. ``"base_tokenizer.vqgan."``.
        only: drop the keys without ``prefix`` instead of keeping them unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
        elif not only:
            out[key] = value
    return out


def _read(path: Path, trust_pickle: bool) -> object:
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise BaseCheckpointError(f"base tokenizer checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise BaseCheckpointError(
            f"{path} holds objects other than tensors, so torch.load(weights_only=True) refused "
            f"it. If you trust the file, pass trust_pickle=True. ({str(err).splitlines()[0]})"
        ) from err


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """Descend into ``ema`` / ``state_dict`` / ``model`` until a flat name -> tensor dict."""
    while isinstance(obj, Mapping) and any(isinstance(v, Mapping) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise BaseCheckpointError(
                f"{path}: nested checkpoint without any of {_CONTAINERS}; top keys: "
                f"{sorted(obj)[:10]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise BaseCheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def canonical_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Select the base-tokenizer subtree, strip wrapper prefixes, rename TiTok-port names,
    drop training-only keys."""
    sd = dict(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in _SUBTREES:
            if any(k.startswith(prefix) for k in sd):
                sd, changed = strip_prefix(sd, prefix, only=True), True
                break
        for prefix in _WRAPPERS:
            if any(k.startswith(prefix) for k in sd):
                sd, changed = strip_prefix(sd, prefix), True
    out = {}
    for key, value in sd.items():
        if key.startswith(_TRAINING_ONLY):
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _mismatch_report(tokenizer: BaseTokenizer, sd: Mapping[str, Tensor]) -> str | None:
    expected = tokenizer.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
            parts.append(f"  {len(items)} {title}: {', '.join(items[:8])}{more}")
    return "\n".join(parts)


def load_base_checkpoint(tokenizer: BaseTokenizer, path: str | Path, *,
                         trust_pickle: bool = False) -> BaseTokenizer:
    """Load user weights into ``tokenizer`` strictly; raise :class:`BaseCheckpointError` listing
    missing / unexpected / mis-shaped keys when the file does not fit the architecture.

    Returns the same tokenizer, for chaining.
    """
    path = Path(path)
    sd = canonical_state_dict(_unwrap(_read(path, trust_pickle), path))
    report = _mismatch_report(tokenizer, sd)
    if report is not None:
        raise BaseCheckpointError(
            f"{path} does not match {type(tokenizer).__name__} "
            f"(after prefix stripping):\n{report}")
    tokenizer.load_state_dict(sd, strict=True)
    return tokenizer
