"""What an inference precision is, with no behaviour: the leaf the precision modules share.

:class:`Plan` (the option of each inference stage), the named plans, the guard's margins,
the CPU's flags and the contexts a stage option runs in (autocast, oneDNN on, the conv
layout). Imports only torch, so that ``karl.kernels`` (Linear kernels),
``karl.autoprecision`` (``auto``: the probe) and ``karl.precision`` (the policy a model's
public methods consult) import it and each other in one direction:
``precision_plan <- kernels <- autoprecision <- precision``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

__all__ = ["DTYPES", "HALT_MARGIN", "NAMED_PLANS", "PRECISIONS", "ROUNDING_MARGIN", "STAGE_OPTIONS",
           "Plan", "cpu_flags", "cpu_has_fast_bf16", "cpu_model_name", "onednn_on", "set_conv_layout",
           "stage_context"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# |halting prob - threshold| below which a guarded decision is re-checked entirely in fp32.
# Measured with benchmarks/inference_speed.py (docs/OFFICIAL.md section 8) on a BCE-fitted
# small head: with only the base tokenizer in bf16 (the guarded path) the decisions that
# flipped lay within 0.005 of the threshold; with everything in bf16 they lay up to 0.063
# from it (15 of 2048 decisions), which is why the guarded path keeps the KARL encoder in fp32.
# (Issue 23 measured more on an AMD EPYC: over 4096 decisions of the same head, the bf16 base
# encoder alone moved probabilities within 0.05 of the threshold by up to 0.039, with no flip;
# so ``auto`` keeps reduced precision out of the encode side, docs/OFFICIAL.md section 8.)
HALT_MARGIN = 0.02
# The same for a KARL encoder that differs from fp32 only in summation order (oneDNN's fp32
# matmul): over those 4096 decisions it moved probabilities by at most 1.7e-5 (9e-6 within
# 0.05 of the threshold): 1e-3 is 57 times that. (Channels-last fp32 convolutions in the base
# encoder moved them by up to 1.75e-3 through the same sharp head: not an encode-side option.)
ROUNDING_MARGIN = 1e-3
STAGE_OPTIONS = {"base_encode": ("fp32", "bf16", "fp16"), "karl_encode": ("fp32", "onednn"),
                 "karl_decode": ("fp32", "onednn", "bf16", "fp16", "int8"),
                 "base_decode": ("fp32", "fp32cl", "bf16", "fp16")}
_SHORT = {"base_encode": "benc", "karl_encode": "kenc", "karl_decode": "kdec", "base_decode": "bdec"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The precision or kernel of each inference stage (karl/precision.py's module doc)."""
    base_encode: str = "fp32"
    karl_encode: str = "fp32"
    karl_decode: str = "fp32"
    base_decode: str = "fp32"

    def __post_init__(self) -> None:
        for stage, options in STAGE_OPTIONS.items():
            if getattr(self, stage) not in options:
                raise ValueError(f"{stage}={getattr(self, stage)!r} is not one of {', '.join(options)}")

    @property
    def label(self) -> str:
        """``fp32`` / ``bf16`` / ``fp16`` / ``int8`` for the named plans, else e.g.
        ``benc:fp32,kenc:onednn,kdec:int8,bdec:bf16`` (no spaces: it goes into key=value lines)."""
        for name, plan in NAMED_PLANS.items():
            if plan == self:
                return name
        return ",".join(f"{_SHORT[s]}:{getattr(self, s)}" for s in STAGE_OPTIONS)

    @property
    def margin(self) -> float:
        """The guard's margin for this plan's encode side: HALT_MARGIN for a reduced-precision
        base encoder, ROUNDING_MARGIN for the oneDNN KARL encoder, 0: exactly fp32."""
        if self.base_encode in DTYPES:
            return HALT_MARGIN
        return ROUNDING_MARGIN if self.karl_encode != "fp32" else 0.0


NAMED_PLANS = {"fp32": Plan(), "bf16": Plan(base_encode="bf16", karl_decode="bf16", base_decode="bf16"),
               "fp16": Plan(base_encode="fp16", karl_decode="fp16", base_decode="fp16"),
               "int8": Plan(karl_decode="int8")}


# ----------------------------------------------------------------------------- the machine

@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name, flags = "", set()
    for line in text.splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return name or platform.machine(), frozenset(flags)


def cpu_model_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset:
    """The CPU's flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    return _cpuinfo()[1]


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), read from
    ``/proc/cpuinfo`` (Linux); False when that cannot be read. Native is not fast: ``auto``
    times it (karl/autoprecision.py); this flag only says whether it is worth timing."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


# ----------------------------------------------------------------------------- stage contexts

@contextlib.contextmanager
def onednn_on() -> Iterator[None]:
    """Only the ``enabled`` flag (``mkldnn.flags()`` would also reset tf32 / precision ones);
    karl.runtime may have turned oneDNN off for fp32, where it can be the slower choice."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = torch.backends.mkldnn.is_available()
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@contextlib.contextmanager
def stage_context(device: torch.device | str, option: str) -> Iterator[None]:
    """The context a stage option runs in: autocast to bf16 / fp16 (on CPU with oneDNN on),
    oneDNN on for ``fp32cl`` (channels-last fp32 convolutions), else nothing (fp32, and the
    kernels ``int8`` / ``onednn``, which live in the modules: karl/kernels.py)."""
    device = torch.device(device)
    with contextlib.ExitStack() as stack:
        if option == "fp32cl" or (option in DTYPES and device.type == "cpu"
                                   and torch.backends.mkldnn.is_available()):
            stack.enter_context(onednn_on())
        if option in DTYPES:
            stack.enter_context(torch.autocast(device.type, dtype=DTYPES[option]))
        yield


def set_conv_layout(model: nn.Module, encoder_cl: bool, decoder_cl: bool) -> None:
    """Channels-last (or the default layout) for the base tokenizer's conv weights: the
    encoder side (every base conv outside ``base.decoder``) and ``base.decoder``. Only the
    side that changes is moved (moving weights costs about 0.05 s per side on ``small``)."""
    have = getattr(model, "_conv_layout", (False, False))
    want = (bool(encoder_cl), bool(decoder_cl))
    if have == want:
        return
    decoder = getattr(model.base, "decoder", None)
    dec_ids = {id(m) for m in decoder.modules()} if isinstance(decoder, nn.Module) else set()
    for m in model.base.modules():
        if isinstance(m, nn.Conv2d):
            side = int(id(m) in dec_ids)
            if have[side] != want[side]:
                m.to(memory_format=torch.channels_last if want[side] else torch.contiguous_format)
    model._conv_layout = want
