"""The model options every command line shares, and the one way they load a model.

``karl-eval``, ``karl-complexity``, ``python -m analysis.report``, ``python -m
analysis.human_study`` and the app (``karl-app`` / ``python app.py``) all call
:func:`add_model_args`, so they take the same options with the same defaults:

- ``--checkpoint MODEL``: what :func:`karl.api.parse_model_ref` reads (a release directory or
  its ``model.safetensors``, ``hf:org/name[@rev]``, an authors' ``.pth``, ``random:PRESET``);
- ``--preset NAME``: shorthand for ``--checkpoint random:NAME`` (random weights: smoke tests);
- ``--trust-official``: allow unpickling an authors' ``.pth``;
- ``--device``: default ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) when there is one, else ``cpu``;
- ``--precision``: one of :data:`karl.precision.PRECISIONS`, default ``fp32``.

The model is resolved by :func:`model_spec` (the bundled model when a command has that
default and nothing is given) and loaded, at ``--precision``, by :func:`load_model_from_args`.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch

from karl import api
from karl.api import MODEL_SPEC_HELP, ModelNotFoundError, parse_model_ref

__all__ = ["BUNDLED_CHECKPOINT", "PRECISION_CHOICES", "add_model_args", "default_device", "describe_ref",
           "load_model_from_args", "model_spec", "resolve_device"]

# The model trained in this repository; a checkout has it, an installed wheel does not.
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "karl_cpu_tae"
# karl.precision.PRECISIONS, spelled here so that building a parser imports no precision code.
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")


def add_model_args(parser: argparse.ArgumentParser, *, bundled_default: bool = True) -> None:
    """Add ``--checkpoint``/``--preset``, ``--trust-official``, ``--device`` and ``--precision``.

    ``bundled_default``: without ``--checkpoint`` or ``--preset`` the command loads
    :data:`BUNDLED_CHECKPOINT`; when False one of the two is required (``karl-eval``).
    """
    src = parser.add_mutually_exclusive_group(required=not bundled_default)
    default = f" (default: the bundled model, {BUNDLED_CHECKPOINT})" if bundled_default else ""
    src.add_argument("--checkpoint", metavar="MODEL", help=f"{MODEL_SPEC_HELP}{default}")
    src.add_argument("--preset", metavar="NAME",
                     help="random weights of a preset instead (--checkpoint random:NAME): smoke tests only")
    parser.add_argument("--trust-official", action="store_true",
                        help="allow unpickling an authors' .pth (torch.load(weights_only=False) can run "
                             "code stored in the file: only for files you trust)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, "
                                         "cuda:LOCAL_RANK under torchrun, else cpu)")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="inference precision (default fp32, the reference; auto: the fastest plan "
                             "measured on this machine that keeps fp32's kept tokens; docs/OFFICIAL.md)")


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` (0 outside torchrun) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def resolve_device(text: str | None) -> torch.device:
    """``--device`` as given, or :func:`default_device`."""
    return torch.device(text) if text else default_device()


def model_spec(args: argparse.Namespace) -> str:
    """The model the options name: ``random:PRESET``, ``--checkpoint``, or the bundled model.

    Raises :class:`karl.api.ModelNotFoundError` when nothing is given and there is no bundled model.
    """
    if getattr(args, "preset", None):
        return f"random:{args.preset}"
    if args.checkpoint:
        return str(args.checkpoint)
    if (BUNDLED_CHECKPOINT / "config.json").is_file():
        return str(BUNDLED_CHECKPOINT)
    raise ModelNotFoundError(f"no --checkpoint given and no bundled model at {BUNDLED_CHECKPOINT} (train it "
                             "with scripts/train_cpu_model.sh, or pass --checkpoint MODEL / --preset tiny)")


def describe_ref(spec: str) -> str:
    """How a command names the model it loaded (the report's page, the app's header)."""
    ref = parse_model_ref(spec)
    if ref.kind == "random":
        return f"random weights, preset {ref.target!r}"
    if ref.kind == "hub":
        return f"{spec} (Hugging Face Hub)"
    return spec


def load_model_from_args(args: argparse.Namespace, apply_precision: bool = True):
    """``(model, description)`` for the options of :func:`add_model_args`, in eval mode on the
    device they name, at ``--precision`` (fp32 when ``apply_precision`` is False: a caller that
    validates and reports the precision itself).

    A random model warns that its numbers are meaningless. Raises what
    :func:`karl.api.load_model` raises (every error a :class:`karl.checkpoint.CheckpointError`).
    """
    spec = model_spec(args)
    what = describe_ref(spec)   # parses the reference: a missing path fails here, before any loading
    if spec.startswith("random:"):
        warnings.warn(f"{spec}: a randomly initialised model; numbers are meaningless", stacklevel=2)
    precision = args.precision if apply_precision else "fp32"
    model = api.load_model(spec, trust=args.trust_official, device=resolve_device(args.device),
                           precision=precision)
    return model, what + (f", precision {precision}" if precision != "fp32" else "")
