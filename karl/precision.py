"""Inference precision: ``fp32`` (the reference), ``bf16`` / ``fp16`` autocast, or ``auto``.

``set_precision(model, p)`` makes ``encode`` / ``decode`` / ``base_encode`` / ``reconstruct``
of that model instance run under the chosen precision; outputs come back in float32, and
halting probabilities are always computed in float32 from the logits.

- ``auto`` picks the fastest setting the hardware runs natively: ``bf16`` on CUDA devices
  that support it and on CPUs with native bf16 (AVX-512 BF16 or AMX), ``fp32`` elsewhere.
  bf16 can flip near-threshold halting decisions: 3 of 1024 on a random ``small`` head in
  benchmarks/inference_speed.py (docs/OFFICIAL.md); use ``fp32`` for the exact programs.
  fp16 is never chosen automatically (its range is too small for the VAE decoder's
  activations to be safe without a check on each model).
- On CPU the reduced-precision path also turns on oneDNN and the channels-last layout for
  the base tokenizer's convolutions: bf16 convolutions without oneDNN run orders of
  magnitude slower, and oneDNN's bf16 kernels want NHWC. ``fp32`` restores the default
  layout, so fp32 results are bitwise those of a model that never had a precision set.
- Halting decisions are thresholds on probabilities, so reduced precision can flip a
  token whose probability lies near the threshold. Every reduced-precision ``encode``
  counts the tokens within :data:`HALT_MARGIN` of it in ``model.precision_stats`` and warns
  once per model when there are any: the program may differ from fp32's there.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["HALT_MARGIN", "PRECISIONS", "autocast", "cpu_has_fast_bf16", "resolve_precision",
           "set_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# |halting prob - threshold| below which a reduced-precision decision is counted as at risk.
# bf16 moved halting probabilities by up to 0.017 on random full-size weights (benchmark).
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
    if hasattr(x, "__dataclass_fields__"):
        for name in x.__dataclass_fields__:
            setattr(x, name, _to_float(getattr(x, name)))
    return x


def _count_near_threshold(model: nn.Module, enc: Any) -> None:
    probs = getattr(enc, "halting_probs", None)
    if probs is None:
        return
    near = int(((probs - model.config.halt_threshold).abs() < HALT_MARGIN).sum())
    stats = model.precision_stats
    stats["images"] += probs.shape[0]
    stats["near_threshold_tokens"] += near
    if near and not stats["warned"]:
        stats["warned"] = True
        warnings.warn(
            f"{near} halting decision(s) within {HALT_MARGIN} of the threshold under "
            f"{model.precision}: the kept tokens may differ from fp32 there (use "
            f"precision='fp32' for the reference programs; model.precision_stats counts them)",
            stacklevel=3)


def _wrap(model: nn.Module, name: str) -> Callable[..., Any]:
    method = getattr(type(model), name).__get__(model)

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        if resolve_precision(model.precision, model.device) == "fp32":
            return method(*args, **kwargs)           # e.g. auto after a move to another device
        with autocast(model.device, model.precision):
            out = method(*args, **kwargs)
        out = _to_float(out)
        if name == "encode":
            _count_near_threshold(model, out)
        return out

    return run


def set_precision(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """Run ``model``'s inference methods at ``precision``; returns the model.

    ``auto`` is resolved on each call against the model's current device, so moving the
    model later keeps the right choice. ``model.precision`` holds the name asked for;
    ``model.precision_stats`` the near-threshold counts (module doc).
    """
    reduced = resolve_precision(precision, model.device) != "fp32"   # also validates
    model.precision = precision
    model.precision_stats = {"images": 0, "near_threshold_tokens": 0, "warned": False}
    for name in _WRAPPED:
        model.__dict__.pop(name, None)
        if precision != "fp32":
            setattr(model, name, _wrap(model, name))
    # The layout follows the device the model is on now: call again after moving it.
    fast_layout = reduced and model.device.type == "cpu"
    fmt = torch.channels_last if fast_layout else torch.contiguous_format
    for m in model.base.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=fmt)
    return model
