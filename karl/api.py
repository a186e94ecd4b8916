"""The small public API: build, save and load KARL models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from karl.checkpoint import load_state_dict_strict, read_release, write_release
from karl.config import ModelConfig, model_config_from_dict, preset, to_dict
from karl.model import KARL


def build_model(config: str | ModelConfig = "tiny", seed: int | None = None) -> KARL:
    """A randomly initialised model from a preset name (``tiny``, ``cpu``, ``small``, ...) or config."""
    cfg = preset(config).model if isinstance(config, str) else config
    if seed is not None:
        torch.manual_seed(seed)
    return KARL(cfg)


def save_pretrained(model: KARL, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (base tokenizer included)."""
    return write_release(directory, to_dict(model.config), model.state_dict(), extra)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu",
                    revision: str | None = None, precision: str = "fp32") -> KARL:
    """Load a release directory strictly; raises CheckpointError naming any key mismatch.

    ``directory`` may also be a Hugging Face Hub id (``"org/name"`` or ``"org/name@rev"``)
    that is not an existing local path: it resolves to the local snapshot folder of that
    repo (downloaded, or from the cache when offline; see :mod:`karl.hub`), which then
    loads like any release directory.

    ``precision``: ``fp32`` (the reference), ``bf16``, ``fp16`` or ``auto`` for inference
    (:func:`karl.precision.set_precision`, which also changes it later).
    """
    from karl.hub import is_hub_id, snapshot_dir
    from karl.precision import set_precision
    if is_hub_id(directory):
        directory = snapshot_dir(str(directory), revision)
    meta, state = read_release(directory)
    cfg = model_config_from_dict(meta["model"])
    model = KARL(cfg)
    load_state_dict_strict(model, state)
    return set_precision(model.to(device).eval(), precision)
