"""Inference precision: ``fp32`` (the reference), ``bf16`` / ``fp16``, ``int8`` or ``auto``.

A precision is a :class:`Plan` for the model's inference stages: the base encoder
(``base_encode``), the KARL encoder (inside ``encode``), the KARL decoder
(``forward_decoder``) and the base decoder (``decode_head``). Outputs come back in float32;
halting probabilities are computed in float32.

**How it is selected.** ``set_precision(model, p)`` (what ``load_model(..., precision=p)``
and every ``--precision`` option call, once, after loading) puts a :class:`Precision` in
``model.precision_policy``; ``with at_precision(model, p): ...`` does the same for a block and
puts the previous one back. KARL's public methods consult that attribute explicitly
(``KARL.encode`` hands itself to :meth:`Precision.encode`, the stage methods go through
:meth:`Precision.run`); no method of the model is replaced. The policy is an attribute, not
an argument of every call, because it carries state across calls: ``auto``'s decision, the
guard's counts, the kernels installed in the modules (karl/kernels.py). What a plan is lives
in karl/precision_plan.py, ``auto``'s probe in karl/autoprecision.py.

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
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from karl import kernels
from karl.autoprecision import ENV, Decision, cuda_plan, decide, guard_pays
from karl.precision_plan import (DTYPES, HALT_MARGIN, NAMED_PLANS, PRECISIONS, ROUNDING_MARGIN,
                                 STAGE_OPTIONS, Plan, cpu_has_fast_bf16, onednn_on, set_conv_layout,
                                 stage_context)

__all__ = ["HALT_MARGIN", "ROUNDING_MARGIN", "PRECISIONS", "NAMED_PLANS", "Plan", "Precision",
           "at_precision", "autocast", "cpu_has_fast_bf16", "describe_precision", "onednn_on",
           "precision_choice", "resolve_precision", "set_conv_layout", "set_precision"]


def _check_device(precision: str | Plan, device: torch.device) -> None:
    if isinstance(precision, Plan):           # kernels are CPU ones; reduced dtypes cpu / cuda
        stages = {getattr(precision, s) for s in STAGE_OPTIONS}
        if stages & {"int8", "onednn", "fp32cl"} and device.type != "cpu":
            raise ValueError(f"plan {precision.label} is supported on cpu, not {device.type}")
        if stages & set(DTYPES) and device.type not in ("cpu", "cuda"):
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
        return cuda_plan().label
    forced = os.environ.get(ENV, "").strip().lower()
    return forced if forced in NAMED_PLANS and device.type == "cpu" else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (bf16 / fp16) on ``device``, on CPU with oneDNN on; nothing
    for any other precision (fp32, int8, auto without a model)."""
    resolved = resolve_precision(precision, device)
    return stage_context(device, resolved) if resolved in DTYPES else contextlib.nullcontext()


def _to_float(x: Any) -> Any:
    """Floating tensors (also inside an Encoding / BaseGrid) back to float32, NCHW."""
    if isinstance(x, torch.Tensor):
        return x.float().contiguous() if x.is_floating_point() else x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to_float(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    return x


def _apply(model: nn.Module, plan: Plan) -> None:
    """The plan's side effects: conv layouts on CPU, other Linear kernels (karl/kernels.py)."""
    cpu = model.device.type == "cpu"
    set_conv_layout(model, cpu and plan.base_encode != "fp32", cpu and plan.base_decode != "fp32")
    for module, kind in ((model.encoder, plan.karl_encode), (model.decoder, plan.karl_decode)):
        if kind in kernels.KINDS:
            kernels.install(module, kind)
        else:
            kernels.remove(module)


# ----------------------------------------------------------------------------- the policy

class Precision:
    """The precision a model's public methods run at: ``model.precision_policy``.

    Set by :func:`set_precision` / :func:`at_precision`; consulted by ``KARL.base_encode``,
    ``encode``, ``forward_decoder`` and ``decode_head`` (and so ``sweep``, ``decode``,
    ``reconstruct``). ``name`` is what was asked for (a name, or a :class:`Plan`'s label),
    ``stats`` the guard's counts (module doc).
    """

    def __init__(self, name: str, plan: Plan | None = None, recheck: bool = True):
        self.name = name
        self.plan = plan                      # an explicit Plan; None: the name's
        self.recheck = bool(recheck)
        self.stats = {"images": 0, "near_threshold_tokens": 0, "near_images": 0,
                      "rechecked_images": 0, "warned": False}
        self._choice: tuple[torch.device, Decision] | None = None
        self._active = False                  # inside a call it runs: nested stages run as set up

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, recheck={self.recheck})"

    def choice(self, model: nn.Module) -> Decision:
        """The decision in force for ``model`` on its current device (``auto`` is decided, by
        env, cache or probe, on the first call and after a move); applies its kernels/layouts."""
        device = model.device
        if self._choice is not None and self._choice[0] == device:
            return self._choice[1]
        plan = self.plan or NAMED_PLANS.get(self.name)
        _check_device(self.name if plan is None or self.name in NAMED_PLANS else plan, device)
        if self.name == "auto":
            _apply(model, Plan())             # the probe starts from the fp32 state
            decision = decide(model)
        else:
            decision = Decision(plan, "asked for", f"precision={self.name!r}")
        _apply(model, decision.plan)
        self._choice = (device, decision)
        return decision

    def run(self, model: nn.Module, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, one of the model's stages, at the plan's option for ``stage``
        (a :class:`Plan` field); kernels and layouts are already in the modules (:func:`_apply`)."""
        if self._active or self.name == "fp32":
            return fn(*args)
        decision = self.choice(model)
        option = getattr(decision.plan, stage)
        if stage == "base_encode" and not _fast_encode(model, self, decision):
            option = "fp32"
        if option in ("fp32", "int8", "onednn"):
            return fn(*args)
        self._active = True
        try:
            with stage_context(model.device, option):
                return _to_float(fn(*args))
        finally:
            self._active = False

    def encode(self, model: nn.Module, fn: Callable[..., Any], args: dict[str, Any]) -> Any:
        """``fn(**args)``, the model's fp32 ``encode``, under the plan, its halting decisions
        guarded (module doc)."""
        if self._active or self.name == "fp32":
            return fn(**args)
        self._active = True
        try:
            return _guarded_encode(model, self, fn, dict(args))
        finally:
            self._active = False


def precision_choice(model: nn.Module) -> Decision:
    """The :class:`karl.autoprecision.Decision` in force for ``model`` on its current device."""
    policy = model.precision_policy
    if policy is None:
        return Decision(Plan(), "asked for", "precision='fp32'")
    return policy.choice(model)


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
    plan = precision if isinstance(precision, Plan) else None
    policy = Precision(plan.label if plan is not None else precision, plan, recheck)
    model.precision_policy = policy
    if policy.name == "fp32":
        _apply(model, Plan())
    elif policy.name != "auto":
        policy.choice(model)                  # named plans take effect now
    return model


@contextlib.contextmanager
def at_precision(model: nn.Module, precision: str | Plan, recheck: bool = True) -> Iterator[nn.Module]:
    """``with at_precision(model, "bf16"): model.encode(x)``: :func:`set_precision` for the
    block; afterwards the policy the model had before (its counts and ``auto`` decision
    kept) and that policy's kernels and layouts."""
    before = model.precision_policy
    set_precision(model, precision, recheck)
    try:
        yield model
    finally:
        model.precision_policy = before
        decided = before is not None and before._choice is not None
        _apply(model, before._choice[1].plan if decided else Plan())   # undecided: at first use


def describe_precision(model: nn.Module, detail: bool = False) -> str:
    """One line: the precision asked for, what it means here and (``auto``) why."""
    name = model.precision
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

def _fast_encode(model: nn.Module, policy: Precision, decision: Decision) -> bool:
    """Whether ``encode`` runs the plan's encode side (guarded) now; False: exactly as fp32.
    Under ``auto`` False while the guard's re-encodes cost more than that side saves
    (module doc); the encoder side's conv layout follows."""
    plan = decision.plan
    if plan.margin == 0:
        return False
    if policy.name != "auto" or not decision.timings:
        return True
    stats = policy.stats
    fast = guard_pays(decision.timings, plan, stats["images"], stats["near_images"])
    stats["encode"] = "plan" if fast else "fp32"
    set_conv_layout(model, fast and plan.base_encode in DTYPES and model.device.type == "cpu",
                    getattr(model, "_conv_layout", (False, False))[1])
    return fast


def _count(model: nn.Module, policy: Precision, probs: Tensor, margin: float) -> Tensor:
    """Updates the policy's ``stats``; returns the [B] images with a decision within ``margin``."""
    near = (probs - model.config.halt_threshold).abs() < margin
    at_risk = near.any(-1)
    stats = policy.stats
    stats["images"] += probs.shape[0]
    stats["near_threshold_tokens"] += int(near.sum())
    stats["near_images"] += int(at_risk.sum())
    return at_risk


def _fp32_encode(model: nn.Module, fn: Callable[..., Any], args: dict,
                 rows: Tensor | None = None) -> Any:
    """``encode`` (of the images in ``rows``) exactly as an fp32 model runs it: no autocast,
    the default conv layout, ``F.linear``, and the base grid recomputed (a cached one came
    from the faster path)."""
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
            return fn(**args)
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


def _guarded_encode(model: nn.Module, policy: Precision, fn: Callable[..., Any], args: dict) -> Any:
    """``encode`` under the plan (module doc): exactly fp32, or the plan's encode side guarded
    (images with a decision within the plan's margin encoded again in fp32), or without the
    guard all of ``encode`` at the plan's base precision. Runs with ``policy._active`` set, so
    the stages ``fn`` calls (``base_encode``) run as set up here."""
    decision = policy.choice(model)
    plan = decision.plan
    if not _fast_encode(model, policy, decision):
        enc = _fp32_encode(model, fn, args)
        _count(model, policy, enc.halting_probs, plan.margin or HALT_MARGIN)
        return enc
    if policy.recheck:
        if args.get("base_grid") is None:
            with stage_context(model.device, plan.base_encode):
                args["base_grid"] = _to_float(model.base_encode(args["images"].to(model.device)))
        with torch.autocast(model.device.type, enabled=False):
            enc = fn(**args)
    else:
        with stage_context(model.device, plan.base_encode):
            enc = _to_float(fn(**args))
    at_risk = _count(model, policy, enc.halting_probs, plan.margin)
    stats = policy.stats
    if not bool(at_risk.any()):
        return enc
    if policy.recheck:
        rows = at_risk.nonzero().squeeze(1).to(model.device)
        stats["rechecked_images"] += len(rows)
        return _merge(enc, rows, _fp32_encode(model, fn, args, rows))
    if not stats["warned"]:
        stats["warned"] = True
        warnings.warn(
            f"{int(at_risk.sum())} image(s) with a halting decision within {plan.margin:g} of the "
            f"threshold under {policy.name} with the fp32 re-check off: the kept tokens may "
            f"differ from fp32 there (set_precision(model, ..., recheck=True) re-checks them; "
            f"model.precision_stats counts them)", stacklevel=5)
    return enc
