"""Which model the app serves: the bundled checkpoint, a user's, or a demo model.

Nothing here imports gradio; :func:`app.cli.main` calls :func:`load_app_model` once at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karl.model_args import BUNDLED_CHECKPOINT

__all__ = ["ModelLoadError", "LoadedModel", "load_app_model", "DEFAULT_CHECKPOINT"]


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    model: Any
    source: str                # what was loaded, for the header
    warning: str | None = None  # shown as a banner (random weights, fallback, ...)


DEFAULT_CHECKPOINT = BUNDLED_CHECKPOINT


def load_app_model(checkpoint: str | Path | None = None, trust_official: bool = False,
                   demo_model: str | None = None, device: str = "cpu") -> LoadedModel:
    """The model the app serves.

    - ``demo_model="tiny-monotone"``: the deterministic test model (app.demo_model).
    - ``checkpoint``: any model reference of :func:`karl.api.parse_model_ref`: a release
      directory (or its ``model.safetensors``), ``hf:org/name``, ``random:PRESET`` or, with
      ``trust_official``, an authors' ``.pth``.
      Failure raises :class:`ModelLoadError` with the reason.
    - neither: the bundled ``assets/checkpoints/karl_cpu_tae``; if it is missing or broken, a
      randomly initialised ``cpu`` model with a warning banner.
    """
    if demo_model is not None:
        if demo_model != "tiny-monotone":
            raise ModelLoadError(f"unknown demo model {demo_model!r} (only 'tiny-monotone')")
        from app.demo_model import build_monotone_model
        return LoadedModel(build_monotone_model("tiny").to(device), "demo model tiny-monotone",
                           "Demo model **tiny-monotone**: hand-set weights for tests; token counts "
                           "fall with epsilon by construction, reconstructions are meaningless.")
    if checkpoint is not None:
        from karl.model_args import describe_ref
        spec = str(checkpoint)
        model = _load(spec, trust_official, device, f"checkpoint {spec}")
        warning = (f"**Random weights** ({spec}): token counts and reconstructions are meaningless."
                   if spec.startswith("random:") else None)
        return LoadedModel(model, describe_ref(spec), warning)
    if (DEFAULT_CHECKPOINT / "config.json").is_file():
        try:
            return LoadedModel(_load(str(DEFAULT_CHECKPOINT), False, device, f"checkpoint {DEFAULT_CHECKPOINT}"),
                               str(DEFAULT_CHECKPOINT))
        except ModelLoadError as err:
            reason = f"the bundled checkpoint failed to load ({err})"
    else:
        reason = f"no bundled checkpoint at {DEFAULT_CHECKPOINT}"
    from karl.api import load_model
    model = load_model("random:cpu", device=device)
    return LoadedModel(model, "random cpu preset",
                       f"**Untrained model**: {reason}. The app runs a *randomly initialised* "
                       "`cpu` preset: token counts and reconstructions are meaningless. Pass "
                       "`--checkpoint DIR` to load a trained model.")


def _load(spec: str | Path, trust_official: bool, device: str, what: str):
    """:func:`karl.api.load_model`, every failure turned into one :class:`ModelLoadError` line."""
    from karl.api import ModelNotFoundError, load_model
    from karl.checkpoint import CheckpointError

    try:
        return load_model(spec, trust=trust_official, device=device)
    except ModelNotFoundError as err:  # names nothing: its own line says what and what is expected
        raise ModelLoadError(str(err)) from None
    except CheckpointError as err:  # HubUnavailableError says how to pass a local folder instead
        # The loader's own line: only a real checkpoint that needs unpickling mentions
        # --trust-official; a file that is not one (random bytes, truncated) never does.
        msg = str(err)
        msg = msg[len(str(spec)) + 2:] if msg.startswith(f"{spec}: ") else msg  # the path once
        raise ModelLoadError(f"cannot load {what}: {msg}") from None
    except Exception as err:  # corrupt safetensors, bad JSON values, ...
        raise ModelLoadError(f"cannot load {what}: {type(err).__name__}: {err}") from None
