"""Inference precision: ``fp32`` (the reference), ``bf16`` / ``fp16``, ``int8`` or ``auto``.

``set_precision(model, p)`` sets a :class:`Plan` for the model's inference stages: the base
encoder (``base_encode``), the KARL encoder (inside ``encode``), the KARL decoder
(``forward_decoder``) and the base decoder (``base.decode_head``). Outputs come back in
float32; halting probabilities are computed in float32.

- ``fp32``: every stage fp32, the reference. ``bf16`` / ``fp16``: the base encoder, the KARL
  decoder and the base decoder under autocast, the KARL encoder in fp32 (guarded, below).
  ``int8``: the KARL decoder's Linear layers in dynamic int8 (karl/kernels.py), the rest
  fp32, so the kept tokens are bitwise fp32's.
- ``auto``: the fastest plan measured on this machine (karl/autoprecision.py: a short probe
  of the model's own stages at first use, cached per CPU model, torch version, threads and
  model). Never chosen by a CPU flag alone: on a Xeon with AVX-512 BF16 but no AMX, bf16
  was slower than fp32 in every stage. Its encode side stays fp32 (the base encoder) or
  fp32 summed in another order (``onednn``: oneDNN's fp32 matmul instead of the BLAS behind
  ``F.linear`` for the KARL encoder); its decode side may be anything that is faster:
  ``onednn`` / ``bf16`` / ``int8`` for the KARL decoder, ``fp32cl`` (channels-last fp32
  convolutions through oneDNN) / ``bf16`` for the base decoder. :func:`describe_precision`
  says what it chose and why.
- On CPU, bf16 / fp16 / fp32cl stages turn on oneDNN and store their convolution weights
  channels-last. Stages in fp32 keep the default layout, so an fp32 model is bitwise one that
  never had a precision set.
- **Halting decisions.** Decoding makes none, so its precision changes pixels only. An
  encode side other than fp32's is guarded: the KARL encoder runs in fp32 (or oneDNN fp32)
  on the base grid, and every image with a token within the plan's margin of the threshold
  is encoded again exactly as fp32 (default conv layout, ``F.linear``) and takes that
  program. The margin is :data:`HALT_MARGIN` for a reduced-precision base encoder and
  :data:`ROUNDING_MARGIN` for fp32 that only sums in another order. A measured guard, not a
  proof (the constants say what was measured). Under ``auto`` the guard is also a cost:
  while the share of re-encoded images makes the faster encode side slower than fp32's
  (autoprecision.guard_pays), ``encode`` runs exactly as fp32. ``set_precision(model, p,
  recheck=False)`` runs ``encode`` without the re-check (fastest; warns once when decisions
  may differ). ``model.precision_stats`` counts images, near-threshold tokens, images with
  one, and re-checked images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HALT_MARGIN", "PRECISIONS", "NAMED_PLANS", "Plan", "autocast", "cpu_has_fast_bf16",
           "describe_precision", "precision_choice", "resolve_precision", "set_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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
_OPTIONS = {"base_encode": ("fp32", "bf16", "fp16"), "karl_encode": ("fp32", "onednn"),
            "karl_decode": ("fp32", "onednn", "bf16", "fp16", "int8"),
            "base_decode": ("fp32", "fp32cl", "bf16", "fp16")}
_SHORT = {"base_encode": "benc", "karl_encode": "kenc", "karl_decode": "kdec", "base_decode": "bdec"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The precision or kernel of each inference stage (module doc)."""
    base_encode: str = "fp32"
    karl_encode: str = "fp32"
    karl_decode: str = "fp32"
    base_decode: str = "fp32"

    def __post_init__(self) -> None:
        for stage, options in _OPTIONS.items():
            if getattr(self, stage) not in options:
                raise ValueError(f"{stage}={getattr(self, stage)!r} is not one of {', '.join(options)}")

    @property
    def label(self) -> str:
        """``fp32`` / ``bf16`` / ``fp16`` / ``int8`` for the named plans, else e.g.
        ``benc:fp32,kenc:onednn,kdec:int8,bdec:bf16`` (no spaces: it goes into key=value lines)."""
        for name, plan in NAMED_PLANS.items():
            if plan == self:
                return name
        return ",".join(f"{_SHORT[s]}:{getattr(self, s)}" for s in _OPTIONS)

    @property
    def margin(self) -> float:
        """The guard's margin for this plan's encode side: HALT_MARGIN for a reduced-precision
        base encoder, ROUNDING_MARGIN for the oneDNN KARL encoder, 0: exactly fp32."""
        if self.base_encode in _DTYPES:
            return HALT_MARGIN
        return ROUNDING_MARGIN if self.karl_encode != "fp32" else 0.0


NAMED_PLANS = {"fp32": Plan(), "bf16": Plan(base_encode="bf16", karl_decode="bf16", base_decode="bf16"),
               "fp16": Plan(base_encode="fp16", karl_decode="fp16", base_decode="fp16"),
               "int8": Plan(karl_decode="int8")}


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), read from
    ``/proc/cpuinfo`` (Linux); False when that cannot be read. Native is not fast: ``auto``
    times it (karl/autoprecision.py); this flag only says whether it is worth timing."""
    from karl.autoprecision import cpu_flags
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _check_device(precision: str | Plan, device: torch.device) -> None:
    if isinstance(precision, Plan):           # kernels are CPU ones; reduced dtypes cpu / cuda
        stages = {getattr(precision, s) for s in _OPTIONS}
        if stages & {"int8", "onednn", "fp32cl"} and device.type != "cpu":
            raise ValueError(f"plan {precision.label} is supported on cpu, not {device.type}")
        if stages & set(_DTYPES) and device.type not in ("cpu", "cuda"):
            raise ValueError(f"plan {precision.label} is supported on cpu and cuda, not {device.type}")
        return
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision 'int8' is supported on cpu, not {device.type}")
    if device.type not in ("cpu", "cuda") and precision not in ("fp32", "auto"):
        raise ValueError(f"precision {precision!r} is supported on cpu and cuda, not {device.type}")


def resolve_precision(precision: str, device: torch.device | str, model: nn.Module | None = None) -> str:
    """The label of what ``precision`` means on ``device`` (:attr:`Plan.label`).

    ``auto`` needs the model on CPU (it is measured; see karl/autoprecision.py); without one it
    is ``KARL_PRECISION_AUTO`` if set, else ``fp32``. On CUDA it is bf16 decoding where
    supported (karl.autoprecision.cuda_plan).

    Raises:
        ValueError: an unknown name, or a precision the device cannot run.
    """
    device = torch.device(device)
    _check_device(precision, device)
    if precision != "auto":
        return precision
    if model is not None:
        return precision_choice(model).plan.label
    if device.type == "cuda":
        from karl.autoprecision import cuda_plan
        return cuda_plan().label
    import os

    from karl.autoprecision import ENV
    forced = os.environ.get(ENV, "").strip().lower()
    return forced if forced in NAMED_PLANS and device.type == "cpu" else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` (bf16 / fp16) on ``device``, on CPU with oneDNN on; nothing
    for any other precision (fp32, int8, auto without a model)."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    if resolved not in _DTYPES:
        yield
        return
    with contextlib.ExitStack() as stack:
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            stack.enter_context(onednn_on())
        stack.enter_context(torch.autocast(device.type, dtype=_DTYPES[resolved]))
        yield


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


def _to_float(x: Any) -> Any:
    """Floating tensors (also inside an Encoding / BaseGrid) back to float32, NCHW."""
    if isinstance(x, torch.Tensor):
        return x.float().contiguous() if x.is_floating_point() else x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to_float(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    return x


# ----------------------------------------------------------------------------- the plan in force

def _apply(model: nn.Module, plan: Plan) -> None:
    """The plan's side effects: conv layouts on CPU, other Linear kernels (karl/kernels.py)."""
    from karl import kernels
    cpu = model.device.type == "cpu"
    set_conv_layout(model, cpu and plan.base_encode != "fp32", cpu and plan.base_decode != "fp32")
    for module, kind in ((model.encoder, plan.karl_encode), (model.decoder, plan.karl_decode)):
        if kind in kernels.KINDS:
            kernels.install(module, kind)
        else:
            kernels.remove(module)


def precision_choice(model: nn.Module):
    """The :class:`karl.autoprecision.Decision` in force for ``model`` on its current device
    (``auto`` is decided, by env, cache or probe, on the first call and after a move)."""
    from karl.autoprecision import Decision, decide
    device = model.device
    cached = getattr(model, "_precision_choice", None)
    if cached is not None and cached[0] == device:
        return cached[1]
    name = getattr(model, "precision", "fp32")
    plan = getattr(model, "_precision_plan", None) or NAMED_PLANS.get(name)
    _check_device(name if plan is None or name in NAMED_PLANS else plan, device)
    if name == "auto":
        _apply(model, Plan())                 # the probe starts from the fp32 state
        decision = decide(model)
    else:
        decision = Decision(plan, "asked for", f"precision={name!r}")
    _apply(model, decision.plan)
    model._precision_choice = (device, decision)
    return decision


def _fast_encode(model: nn.Module, decision) -> bool:
    """Whether ``encode`` runs the plan's encode side (guarded) now; False: exactly as fp32.
    Under ``auto`` False while the guard's re-encodes cost more than that side saves
    (module doc); the encoder side's conv layout follows."""
    plan = decision.plan
    if plan.margin == 0:
        return False
    if model.precision != "auto" or not decision.timings:
        return True
    from karl.autoprecision import guard_pays
    stats = model.precision_stats
    fast = guard_pays(decision.timings, plan, stats["images"], stats["near_images"])
    stats["encode"] = "plan" if fast else "fp32"
    set_conv_layout(model, fast and plan.base_encode in _DTYPES and model.device.type == "cpu",
                    getattr(model, "_conv_layout", (False, False))[1])
    return fast


def _stage(model: nn.Module, option: str) -> contextlib.AbstractContextManager:
    """The context a stage option runs in: autocast, oneDNN on (channels-last fp32), or none."""
    if option in _DTYPES:
        return autocast(model.device, option)
    return onednn_on() if option == "fp32cl" else contextlib.nullcontext()


def describe_precision(model: nn.Module, detail: bool = False) -> str:
    """One line: the precision asked for, what it means here and (``auto``) why."""
    name = getattr(model, "precision", "fp32")
    if name == "fp32":
        return "precision fp32"
    d = precision_choice(model)
    if name != "auto":
        return f"precision {name}"
    text = f"precision auto -> {d.plan.label} ({d.reason if detail else d.short()})"
    s = model.precision_stats
    if s.get("encode") == "fp32":
        text += (f"; encoding back to exact fp32: {s['near_images']} of {s['images']} images had a "
                 f"decision within {d.plan.margin:g} of the threshold, re-encoding them costs more "
                 f"than the faster encoder saves")
    return text


# ----------------------------------------------------------------------------- guarded encode

def _count(model: nn.Module, probs: Tensor, margin: float) -> Tensor:
    """Updates ``precision_stats``; returns the [B] images with a decision within ``margin``."""
    near = (probs - model.config.halt_threshold).abs() < margin
    at_risk = near.any(-1)
    stats = model.precision_stats
    stats["images"] += probs.shape[0]
    stats["near_threshold_tokens"] += int(near.sum())
    stats["near_images"] += int(at_risk.sum())
    return at_risk


def _fp32_encode(model: nn.Module, method: Callable[..., Any], args: dict,
                 rows: Tensor | None = None) -> Any:
    """``encode`` (of the images in ``rows``) exactly as an fp32 model runs it: no autocast,
    the default conv layout, ``F.linear``, and the base grid recomputed (a cached one came
    from the faster path)."""
    from karl import kernels
    args = dict(args)
    if rows is not None:
        images = args["images"]
        args["images"] = images[rows.to(images.device)]
        args.pop("base_grid", None)
        eps = args.get("epsilon")
        if isinstance(eps, torch.Tensor) and eps.ndim == 1:
            args["epsilon"] = eps[rows.to(eps.device)]
    layout = getattr(model, "_conv_layout", (False, False))
    set_conv_layout(model, False, layout[1])
    try:
        with torch.autocast(model.device.type, enabled=False), kernels.reference():
            return method(**args)
    finally:
        set_conv_layout(model, *layout)


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


def _encode(model: nn.Module, method: Callable[..., Any], call: inspect.BoundArguments) -> Any:
    """``encode`` under the plan (module doc): exactly fp32, or the plan's encode side guarded
    (images with a decision within the plan's margin encoded again in fp32), or without the
    guard all of ``encode`` at the plan's base precision."""
    decision = precision_choice(model)
    plan, args = decision.plan, dict(call.arguments)
    if not _fast_encode(model, decision):
        enc = _fp32_encode(model, method, args)
        _count(model, enc.halting_probs, plan.margin or HALT_MARGIN)
        return enc
    if model.precision_recheck:
        if args.get("base_grid") is None:
            with _stage(model, plan.base_encode):
                args["base_grid"] = _to_float(model.base_encode(args["images"].to(model.device)))
        with torch.autocast(model.device.type, enabled=False):
            enc = method(**args)
    else:
        with _stage(model, plan.base_encode):
            enc = _to_float(method(**args))
    at_risk = _count(model, enc.halting_probs, plan.margin)
    stats = model.precision_stats
    if not bool(at_risk.any()):
        return enc
    if model.precision_recheck:
        rows = at_risk.nonzero().squeeze(1).to(model.device)
        stats["rechecked_images"] += len(rows)
        return _merge(enc, rows, _fp32_encode(model, method, args, rows))
    if not stats["warned"]:
        stats["warned"] = True
        warnings.warn(
            f"{int(at_risk.sum())} image(s) with a halting decision within {plan.margin:g} of the "
            f"threshold under {model.precision} with the fp32 re-check off: the kept tokens may "
            f"differ from fp32 there (set_precision(model, ..., recheck=True) re-checks them; "
            f"model.precision_stats counts them)", stacklevel=4)
    return enc


# ----------------------------------------------------------------------------- wrappers

def _wrap_encode(model: nn.Module) -> Callable[..., Any]:
    method = type(model).encode.__get__(model)
    signature = inspect.signature(method)

    @functools.wraps(method)
    def encode(*args: Any, **kwargs: Any) -> Any:
        if model._precision_active:           # nested in a wrapped call (the fp32 re-check)
            return method(*args, **kwargs)
        model._precision_active = True
        try:
            return _encode(model, method, signature.bind(*args, **kwargs))
        finally:
            model._precision_active = False

    return encode


def _wrap_stage(model: nn.Module, owner: nn.Module, name: str, stage: str) -> Callable[..., Any]:
    """``owner.name`` run at the plan's precision for ``stage`` (kernels and layouts are
    already in the modules: :func:`_apply`)."""
    method = getattr(type(owner), name).__get__(owner)

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        if model._precision_active:
            return method(*args, **kwargs)
        decision = precision_choice(model)
        option = getattr(decision.plan, stage)
        if stage == "base_encode" and not _fast_encode(model, decision):
            option = "fp32"
        if option in ("fp32", "int8", "onednn"):     # kernels and layouts are in the modules
            return method(*args, **kwargs)
        model._precision_active = True
        try:
            with _stage(model, option):
                return _to_float(method(*args, **kwargs))
        finally:
            model._precision_active = False

    return run


def set_precision(model: nn.Module, precision: str | Plan = "fp32", recheck: bool = True) -> nn.Module:
    """Run ``model``'s inference at ``precision`` (module doc), a name or a :class:`Plan`
    (``model.precision`` is then its label); returns the model.

    ``auto`` is decided against the model's current device at the first call, and again
    after a move. ``recheck`` re-encodes in fp32 the images with a halting decision near the
    threshold (module doc). ``model.precision`` holds the name asked for,
    :func:`precision_choice` what it means, ``model.precision_stats`` the guard's counts.
    Call again after changing the weights (int8 / onednn keep packed copies).
    """
    _check_device(precision, model.device)
    model._precision_plan = precision if isinstance(precision, Plan) else None
    precision = precision.label if isinstance(precision, Plan) else precision
    model.precision = precision
    model.precision_recheck = bool(recheck)
    model._precision_active = False
    model._precision_choice = None
    model.precision_stats = {"images": 0, "near_threshold_tokens": 0, "near_images": 0,
                             "rechecked_images": 0, "warned": False}
    for name in ("encode", "base_encode", "forward_decoder", "decode", "reconstruct"):
        model.__dict__.pop(name, None)
    model.base.__dict__.pop("decode_head", None)
    if precision == "fp32":
        _apply(model, Plan())
        return model
    model.encode = _wrap_encode(model)
    model.base_encode = _wrap_stage(model, model, "base_encode", "base_encode")
    model.forward_decoder = _wrap_stage(model, model, "forward_decoder", "karl_decode")
    model.base.decode_head = _wrap_stage(model, model.base, "decode_head", "base_decode")
    if precision != "auto":
        precision_choice(model)               # named plans take effect now
    return model
