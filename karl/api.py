"""The small public API: build, save and load KARL models; what a model argument names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from karl.checkpoint import CheckpointError, load_state_dict_strict, read_release, save_pretrained
from karl.config import ModelConfig, model_config_from_dict, preset
from karl.hub import HUB_PREFIX, snapshot_dir, split_hub_id
from karl.model import KARL

__all__ = ["build_model", "save_pretrained", "load_pretrained", "load_model", "parse_model_ref", "ModelRef",
           "ModelNotFoundError", "MODEL_SPEC_HELP"]


def build_model(config: str | ModelConfig = "tiny", seed: int | None = None) -> KARL:
    """A randomly initialised model from a preset name (:data:`karl.config.PRESETS`) or a config."""
    cfg = preset(config).model if isinstance(config, str) else config
    if seed is not None:
        torch.manual_seed(seed)
    return KARL(cfg)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu",
                    revision: str | None = None, precision: str = "fp32") -> KARL:
    """Load a release directory strictly; raises CheckpointError naming any key mismatch.

    ``directory`` may also be a Hugging Face Hub repo written ``"hf:org/name"`` (or
    ``"hf:org/name@rev"``): it resolves to the local snapshot folder of that repo (downloaded,
    or from the cache when offline; see :mod:`karl.hub`), which then loads like any release
    directory. A bare ``org/name`` is always a local path.

    ``precision``: ``fp32`` (the reference), ``bf16``, ``fp16`` or ``auto`` for inference
    (:func:`karl.precision.set_precision`, which also changes it later).
    """
    from karl.precision import set_precision
    if isinstance(directory, str) and directory.startswith(HUB_PREFIX):
        ref = parse_model_ref(directory)
        directory = snapshot_dir(ref.target, revision or ref.revision)
    meta, state = read_release(directory)  # anything else is local: no network; a .pth says how to convert
    cfg = model_config_from_dict(meta["model"])
    model = KARL(cfg)
    load_state_dict_strict(model, state)
    return set_precision(model.to(device).eval(), precision)


# --------------------------------------------------------------------------- one model reference

OFFICIAL_SUFFIXES = (".pth", ".pt", ".ckpt")
MODEL_SPEC_HELP = ("a release directory (config.json + model.safetensors) or its model.safetensors, "
                   "hf:ORG/NAME[@REV] (a Hugging Face Hub repo), an authors' .pth (with "
                   "--trust-official), or random:PRESET")
RefKind = Literal["release", "hub", "official", "random"]


class ModelNotFoundError(CheckpointError):
    """The model reference names nothing loadable: no such local path, a malformed ``hf:`` id,
    or an empty ``random:``."""


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names, decided from its text and the local file system alone
    (never the network), so a mistyped folder fails at once instead of trying the Hub.

    ``kind``: ``release`` (``target`` is the directory), ``hub`` (``target`` is ``org/name``,
    ``revision`` the optional ``@rev``), ``official`` (``target`` is the ``.pth`` file) or
    ``random`` (``target`` is the preset name).
    """

    kind: RefKind
    target: str
    revision: str | None = None


def parse_model_ref(spec: str | Path) -> ModelRef:
    """Read a model argument: ``random:PRESET``, ``hf:org/name[@rev]``, an authors' ``.pth``
    (``.pt``, ``.ckpt``), a release directory or the ``model.safetensors`` inside one.

    Raises :class:`ModelNotFoundError` when the text names nothing: a path that does not
    exist (a bare ``org/name`` is a path; the message suggests ``hf:org/name``), a file that
    is not a checkpoint, a malformed Hub id.
    """
    text = str(spec)
    if isinstance(spec, str) and text.startswith("random:"):
        name = text.split(":", 1)[1]
        if not name:
            raise ModelNotFoundError("random: needs a preset name, e.g. random:tiny")
        return ModelRef("random", name)
    if isinstance(spec, str) and text.startswith(HUB_PREFIX):
        parsed = split_hub_id(text[len(HUB_PREFIX):])
        if parsed is None:
            raise ModelNotFoundError(f"{text!r} is not a Hub id of the form hf:org/name[@revision]")
        return ModelRef("hub", *parsed)
    path = Path(text).expanduser()
    if path.suffix in OFFICIAL_SUFFIXES:
        if not path.is_file():
            raise ModelNotFoundError(f"no such checkpoint file {path}")
        return ModelRef("official", str(path))
    if path.suffix == ".safetensors" and path.is_file():  # the weights file of a release dir
        path = path.parent
    if path.is_dir():
        return ModelRef("release", str(path))
    what = "does not exist" if not path.exists() else "is not a directory"
    hint = (f" (for the Hugging Face Hub repo {text} write {HUB_PREFIX}{text})"
            if isinstance(spec, str) and split_hub_id(text) else "")
    raise ModelNotFoundError(f"checkpoint {text} {what}{hint}: not a release directory; expected "
                             f"{MODEL_SPEC_HELP}")


def load_model(spec: str | Path | ModelRef, trust: bool = False, device: str | torch.device = "cpu",
               precision: str = "fp32") -> KARL:
    """The one model loader behind karl-eval, karl-complexity, the report and the app.

    ``spec`` is read by :func:`parse_model_ref`:

    - ``random:PRESET``: randomly initialised weights of a preset (seed 0), for smoke tests;
    - a release directory, or the ``model.safetensors`` inside one;
    - ``hf:org/name[@rev]``: a Hugging Face Hub repo (:mod:`karl.hub`);
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
    from karl.precision import set_precision
    ref = spec if isinstance(spec, ModelRef) else parse_model_ref(spec)
    if ref.kind == "random":
        return set_precision(build_model(ref.target, seed=0).to(device).eval(), precision)
    if ref.kind == "official":
        # Without ``trust`` only torch.load(weights_only=True) runs (it unpickles nothing but
        # tensors and plain containers), so the file gets the converter's diagnosis: empty,
        # truncated or not a checkpoint in one line; UntrustedCheckpointError (the opt-in) only
        # for a real checkpoint that needs unpickling, like the authors' files.
        from karl.official import load_official
        return load_official(ref.target, trust=trust, device=device, precision=precision).eval()
    if ref.kind == "hub":  # the Hub snapshot (or the Hub cache when offline)
        return load_pretrained(snapshot_dir(ref.target, ref.revision), device=device, precision=precision)
    return load_pretrained(ref.target, device=device, precision=precision)
