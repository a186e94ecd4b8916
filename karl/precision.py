"""Inference precision: ``fp32`` (the reference), ``bf16`` / ``fp16`` autocast, or ``auto``.

``set_precision(model, p)`` makes ``encode`` / ``decode`` / ``base_encode`` / ``reconstruct``
of that model instance run under the chosen precision; outputs come back in float32, and
halting probabilities are always computed in float32 from the logits.

- ``auto`` picks the fastest setting the hardware runs natively: ``bf16`` on CUDA devices
  that support it and on CPUs with native bf16 (AVX-512 BF16 or AMX), ``fp32`` elsewhere;
  its halting decisions are guarded (below). fp16 is never chosen automatically (its range is too small for the VAE decoder's
  activations to be safe without a check on each model).
- On CPU the reduced-precision path also turns on oneDNN and the channels-last layout for
  the base tokenizer's convolutions: bf16 convolutions without oneDNN run orders of
  magnitude slower, and oneDNN's bf16 kernels want NHWC. ``fp32`` restores the default
  layout, so fp32 results are bitwise those of a model that never had a precision set.
- Halting decisions are thresholds on probabilities, so reduced precision can flip a
  token whose probability lies near the threshold. The reduced-precision ``encode`` is
  therefore guarded by default: the base tokenizer runs at reduced precision, but the KARL
  encoder, which makes the halting decisions, runs in fp32 on that base grid (bf16 in the
  transformer moved a sharp head's decisions far more than bf16 in the base tokenizer), and
  every image with a token within :data:`HALT_MARGIN` of the threshold is encoded again
  entirely in fp32 (base tokenizer included, default conv layout) and takes that program.
  Decoding runs at reduced precision. This is a measured guard, not a proof: an image whose
  flipped decisions all land outside the margin keeps the guarded program (HALT_MARGIN says
  what was measured). ``set_precision(model, p, recheck=False)`` runs all of ``encode``
  under autocast without the re-check (fastest; warns once when decisions may differ).
  ``model.precision_stats`` counts images, near-threshold tokens and re-checked images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HALT_MARGIN", "PRECISIONS", "autocast", "cpu_has_fast_bf16", "resolve_precision",
           "set_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# |halting prob - threshold| below which a guarded decision is re-checked entirely in fp32.
# Measured with benchmarks/inference_speed.py (docs/OFFICIAL.md section 8) on a BCE-fitted
# small head: with only the base tokenizer in bf16 (the guarded path) the decisions that
# flipped lay within 0.005 of the threshold; with everything in bf16 they lay up to 0.063
# from it (15 of 2048 decisions), which is why the guarded path keeps the KARL encoder in fp32.
HALT_MARGIN = 0.02
_WRAPPED = ("encode", "decode", "base_encode", "reconstruct")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), read from
    ``/proc/cpuinfo`` (Linux); False when that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for ``device``; ``auto`` resolved (see module doc).

    Raises:
        ValueError: an unknown name, or a dtype the device cannot run.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if device.type not in ("cpu", "cuda") and precision != "fp32":
        raise ValueError(f"precision {precision!r} is supported on cpu and cuda, not {device.type}")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device`` (nothing for fp32); on CPU with oneDNN on."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        yield
        return
    with contextlib.ExitStack() as stack:
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            stack.enter_context(_onednn_on())
        stack.enter_context(torch.autocast(device.type, dtype=_DTYPES[resolved]))
        yield


@contextlib.contextmanager
def _onednn_on() -> Iterator[None]:
    """Only the ``enabled`` flag (``mkldnn.flags()`` would also reset tf32 / precision ones);
    karl.runtime may have turned oneDNN off for fp32, where it can be the slower choice."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _to_float(x: Any) -> Any:
    """Floating tensors (also inside an Encoding / BaseGrid) back to float32, NCHW."""
    if isinstance(x, torch.Tensor):
        return x.float().contiguous() if x.is_floating_point() else x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to_float(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    return x


def _near_threshold(model: nn.Module, probs: Tensor) -> Tensor:
    """[B, K] bool: decisions reduced precision may have flipped."""
    return (probs - model.config.halt_threshold).abs() < HALT_MARGIN


def _set_conv_layout(model: nn.Module, fmt: torch.memory_format, encode_only: bool = False) -> None:
    """The base tokenizer's conv weights to ``fmt``; ``encode_only`` leaves ``base.decoder``
    alone (the re-check encodes only, and moving the decoder's weights twice per call cost
    about 0.1 s on ``small``)."""
    skip = set()
    decoder = getattr(model.base, "decoder", None)
    if encode_only and isinstance(decoder, nn.Module):
        skip = {id(m) for m in decoder.modules()}
    for m in model.base.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in skip:
            m.to(memory_format=fmt)


def _fp32_encode(model: nn.Module, method: Callable[..., Any], args: dict, rows: Tensor) -> Any:
    """``encode`` of the images in ``rows`` exactly as an fp32 model runs it: no autocast, the
    default conv layout, and the base grid recomputed (a cached one came from reduced precision)."""
    images = args["images"]
    args = dict(args, images=images[rows.to(images.device)])
    args.pop("base_grid", None)
    eps = args.get("epsilon")
    if isinstance(eps, torch.Tensor) and eps.ndim == 1:
        args["epsilon"] = eps[rows.to(eps.device)]
    cpu_layout = model.device.type == "cpu"
    if cpu_layout:
        _set_conv_layout(model, torch.contiguous_format, encode_only=True)
    try:
        with torch.autocast(model.device.type, enabled=False):
            return method(**args)
    finally:
        if cpu_layout:
            _set_conv_layout(model, torch.channels_last, encode_only=True)


def _merge(enc: Any, rows: Tensor, exact: Any) -> Any:
    """``enc`` with the programs of ``rows`` replaced by ``exact``'s (same budget)."""
    def put(x: Tensor | None, y: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        x = x.clone()
        x[rows.to(x.device)] = y.to(x.device, x.dtype)
        return x
    return dataclasses.replace(enc, **{f.name: put(getattr(enc, f.name), getattr(exact, f.name))
                                       for f in dataclasses.fields(enc) if f.init})


def _reduced_encode(model: nn.Module, method: Callable[..., Any], call: inspect.BoundArguments) -> Any:
    """``encode`` at reduced precision, guarded (module doc): the base tokenizer under autocast,
    the KARL encoder, which makes the halting decisions, in fp32, and the images still near the
    threshold encoded again entirely in fp32. Without the guard, all of it under autocast."""
    args = dict(call.arguments)
    if model.precision_recheck:
        if args.get("base_grid") is None:
            with autocast(model.device, model.precision):
                args["base_grid"] = _to_float(model.base_encode(args["images"].to(model.device)))
        with torch.autocast(model.device.type, enabled=False):
            enc = method(**args)
    else:
        with autocast(model.device, model.precision):
            enc = _to_float(method(**args))
    near = _near_threshold(model, enc.halting_probs)
    at_risk = near.any(-1)
    stats = model.precision_stats
    stats["images"] += enc.halting_probs.shape[0]
    stats["near_threshold_tokens"] += int(near.sum())
    if not bool(at_risk.any()):
        return enc
    if model.precision_recheck:
        rows = at_risk.nonzero().squeeze(1).to(model.device)
        stats["rechecked_images"] += len(rows)
        return _merge(enc, rows, _fp32_encode(model, method, args, rows))
    if not stats["warned"]:
        stats["warned"] = True
        warnings.warn(
            f"{int(near.sum())} halting decision(s) within {HALT_MARGIN} of the threshold under "
            f"{model.precision} with the fp32 re-check off: the kept tokens may differ from "
            f"fp32 there (set_precision(model, ..., recheck=True) re-checks them; "
            f"model.precision_stats counts them)", stacklevel=4)
    return enc


def _wrap(model: nn.Module, name: str) -> Callable[..., Any]:
    method = getattr(type(model), name).__get__(model)
    signature = inspect.signature(method)

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        if resolve_precision(model.precision, model.device) == "fp32" or model._precision_active:
            return method(*args, **kwargs)   # fp32 (e.g. auto after a move), or nested in a wrapped call
        model._precision_active = True
        try:
            if name == "encode":
                return _reduced_encode(model, method, signature.bind(*args, **kwargs))
            with autocast(model.device, model.precision):
                out = _to_float(method(*args, **kwargs))
        finally:
            model._precision_active = False
        return out

    return run


def set_precision(model: nn.Module, precision: str = "fp32", recheck: bool = True) -> nn.Module:
    """Run ``model``'s inference methods at ``precision``; returns the model.

    ``auto`` is resolved on each call against the model's current device, so moving the
    model later keeps the right choice. ``recheck`` re-encodes in fp32 the images with a
    halting decision near the threshold (module doc). ``model.precision`` holds the name
    asked for; ``model.precision_stats`` the near-threshold and re-check counts.
    """
    reduced = resolve_precision(precision, model.device) != "fp32"   # also validates
    model.precision = precision
    model.precision_recheck = bool(recheck)
    model._precision_active = False
    model.precision_stats = {"images": 0, "near_threshold_tokens": 0, "rechecked_images": 0,
                             "warned": False}
    for name in _WRAPPED:
        model.__dict__.pop(name, None)
        if precision != "fp32":
            setattr(model, name, _wrap(model, name))
    # The layout follows the device the model is on now: call again after moving it.
    fast_layout = reduced and model.device.type == "cpu"
    _set_conv_layout(model, torch.channels_last if fast_layout else torch.contiguous_format)
    return model
