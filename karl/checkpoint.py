"""Checkpoints: release directories and resumable training state.

- Release dir: ``config.json`` (model config + provenance) and ``model.safetensors``,
  loaded strictly; missing/unexpected/mismatched keys are reported by name.
  Non-finite weights (NaN, inf) are refused (:func:`check_finite`).
- Training state: ``state.pt`` holding only tensors and plain Python types, so it loads
  with ``torch.load(weights_only=True)``; written atomically (tmp file + rename) so an
  interrupted save never corrupts the last good checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, untrusted, or does not match the model."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file or pickled objects we refuse to run
        raise CheckpointError(f"cannot load {path} as plain training state: {e}") from e


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise with every missing, unexpected and shape-mismatched key before loading."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def fmt(name: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f" ... (+{len(items) - 20} more)" if len(items) > 20 else ""
            return f"\n  {name} ({len(items)}): " + ", ".join(items[:20]) + more
        raise CheckpointError("checkpoint does not match the model:" + fmt("missing", missing)
                              + fmt("unexpected", unexpected) + fmt("shape mismatch", mismatched))


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)


def check_finite(state: dict[str, torch.Tensor], source: str | Path, limit: int = 3) -> None:
    """Raise :class:`CheckpointError` in one line if a floating-point tensor of ``state`` holds
    NaN or infinity, naming ``source`` and the first ``limit`` bad tensors (in file order).

    A damaged release must not load: a NaN weight makes every halting probability NaN, so
    every token is "kept" and every metric is NaN, which reads as a result.
    """
    bad = []
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum())
            what = ", ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
            bad.append(f"{name} ({what})")
    if bad:
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        raise CheckpointError(f"{source}: non-finite weights in {len(bad)} of {len(state)} tensors, first "
                              f"{', '.join(bad[:limit])}{more}; the file is damaged, refusing to load it")


def write_release(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor],
                  extra: dict[str, Any] | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "model": config, **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = d / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def save_pretrained(model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a KARL model as a release directory: ``config.json`` + ``model.safetensors``
    (base tokenizer included). Load it with :func:`karl.load_pretrained`."""
    from karl.config import to_dict
    return write_release(directory, to_dict(model.config), model.state_dict(), extra)


def read_release(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    d = Path(directory)
    if d.is_file() and d.suffix == ".pth":
        raise CheckpointError(
            f"{d} is an authors' .pth checkpoint: convert it with "
            "`karl-convert-official IN.pth OUT_DIR --trust` (or karl.load_official(path, trust=True))")
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{d} is not a KARL release directory (needs config.json + model.safetensors)")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    if "model" not in meta:
        raise CheckpointError(f"{cfg_path} has no 'model' section")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from e
    check_finite(state, weights)
    return meta, state
