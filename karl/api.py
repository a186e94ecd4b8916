"""The small public API: build, save and load KARL models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from karl.checkpoint import CheckpointError, load_state_dict_strict, read_release, write_release
from karl.config import ModelConfig, model_config_from_dict, preset, to_dict
from karl.model import KARL


def build_model(config: str | ModelConfig = "tiny", seed: int | None = None) -> KARL:
    """A randomly initialised model from a preset name (``tiny``, ``cpu``, ``gpu128``, ``small``,
    ``small_vae``: :data:`karl.config.PRESETS`) or a config."""
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


# --------------------------------------------------------------------------- one loader

OFFICIAL_SUFFIXES = (".pth", ".pt", ".ckpt")
MODEL_SPEC_HELP = ("a release directory (config.json + model.safetensors), its model.safetensors, "
                   "a Hub id (org/name), an authors' .pth (with --trust-official), or random:PRESET")


class ModelNotFoundError(CheckpointError):
    """The model spec names nothing loadable: no such path, and not a Hub id or ``random:``."""


def load_model(spec: str | Path, trust: bool = False, device: str | torch.device = "cpu",
               precision: str = "fp32") -> KARL:
    """The one model loader behind karl-eval, karl-complexity, the report and the app.

    ``spec`` is one of:

    - ``random:PRESET``: randomly initialised weights of a preset (seed 0), for smoke tests;
    - a release directory, or the ``model.safetensors`` inside one;
    - a Hugging Face Hub id ``org/name[@rev]`` that is not a local path (:mod:`karl.hub`);
    - an authors' ``.pth`` (or ``.pt``/``.ckpt``): read with ``torch.load(weights_only=True)``;
      one that needs full unpickling (the authors' files hold an argparse Namespace) is
      refused unless ``trust``, because that can run code (:mod:`karl.official`). A file
      that is empty, truncated or not a checkpoint says so, whatever ``trust``.

    Returns the model in eval mode on ``device`` at ``precision``. Raises
    :class:`ModelNotFoundError` when ``spec`` names nothing,
    :class:`karl.official.UntrustedCheckpointError` for a ``.pth`` that needs unpickling
    without ``trust``, and :class:`CheckpointError` (or a subclass) when the files do not
    load, including weights with NaN or infinity (:func:`karl.checkpoint.check_finite`).
    """
    from karl.hub import is_hub_id
    from karl.precision import set_precision
    text = str(spec)
    if text.startswith("random:"):
        model = build_model(text.split(":", 1)[1], seed=0).to(device).eval()
        return set_precision(model, precision)
    path = Path(text).expanduser()
    if path.suffix == ".safetensors" and path.is_file():  # the weights file of a release dir
        path = path.parent
    if path.suffix in OFFICIAL_SUFFIXES:
        return _load_official_file(path, trust, device, precision)
    if is_hub_id(spec):  # org/name: the Hub snapshot (or the Hub cache when offline)
        return load_pretrained(text, device=device, precision=precision).eval()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ModelNotFoundError(f"checkpoint {text} {what}: not a release directory; expected "
                                 f"{MODEL_SPEC_HELP}")
    return load_pretrained(path, device=device, precision=precision).eval()


def _load_official_file(path: Path, trust: bool, device: str | torch.device, precision: str) -> KARL:
    from karl.official import load_official
    if not path.is_file():
        raise ModelNotFoundError(f"no such checkpoint file {path}")
    # Without ``trust`` only torch.load(weights_only=True) runs (it unpickles nothing but
    # tensors and plain containers), so the file gets the converter's diagnosis: empty,
    # truncated or not a checkpoint in one line; UntrustedCheckpointError (the opt-in) only
    # for a real checkpoint that needs unpickling, like the authors' files.
    return load_official(path, trust=trust, device=device, precision=precision).eval()
