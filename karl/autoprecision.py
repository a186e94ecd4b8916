"""``precision="auto"``: the fastest plan that keeps fp32's programs, chosen by measurement.

A CPU flag does not tell whether bf16 pays: on a Xeon with ``avx512_bf16`` but no AMX every
stage of ``small`` ran slower in bf16 than in fp32 (docs/OFFICIAL.md section 8). So ``auto``
on CPU times the model's own stages once, per option, and keeps for each stage the fastest
option that takes under :data:`MARGIN` of the time of every more exact option (fp32,
fp32cl, onednn, bf16, int8 in that order: a noisy probe must not pick a slower or a less
exact path for a tie), among those that keep fp32's programs:

- ``base_encode``: ``fp32``. A reduced-precision base encoder is a choice ``auto`` does not
  make: its guard (karl/precision.py, HALT_MARGIN) is a measurement, and issue 23 measured
  the bf16 base moving decisions near the threshold by up to 0.039, beyond the margin.
- ``karl_encode`` (the KARL encoder, which makes the halting decisions): ``fp32`` or
  ``onednn`` (oneDNN's fp32 matmul; only the summation order differs). ``onednn`` is guarded:
  karl/precision.py re-encodes exactly in fp32 the images with a decision within
  ROUNDING_MARGIN, and :func:`guard_pays` switches back to fp32 at run time while those
  re-encodes cost more than it saves.
- ``karl_decode``: ``fp32``, ``onednn``, ``bf16`` or ``int8`` (karl/kernels.py);
  ``base_decode``: ``fp32``, ``fp32cl`` or ``bf16``. Decoding makes no halting decision, so
  these options change pixels only, never the kept tokens.

**The probe** (:func:`probe`; a few seconds on ``small`` on an idle 2-core CPU, once per
machine kind and model): the base encoder and decoder of the model itself at half its
resolution (a quarter of the work; the same layers and channel widths: not smaller, as
per-call costs that do not shrink with the image, such as the bf16 casts of the conv
weights, would weigh more than at full size), one block of the KARL encoder and of the
KARL decoder at the model's real sequence lengths. All cases run once to warm up, then
:data:`REPS` interleaved rounds; the best time of each counts, scaled to a whole-stage
estimate (x4, x layers) for the reason text and the guard's break-even. bf16 is probed
only where the CPU has native bf16 (``avx512_bf16`` / AMX: elsewhere it is emulated), int8
where PyTorch has the kernels.

**The cache**: ``cache_dir("precision")/auto.json``, keyed by CPU model name, the CPU flags
that matter, torch version, thread count and a model signature (base kind, image size,
widths, layers), so the probe runs once per machine kind and model. ``KARL_PRECISION_AUTO``
= ``fp32`` / ``bf16`` / ``fp16`` / ``int8`` makes ``auto`` mean that without probing;
``probe`` measures again (once per process) and rewrites the cache entry. On CUDA ``auto``
is bf16 decoding where the GPU supports it, the encode side fp32 (not probed).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from karl import kernels
from karl.paths import cache_dir
from karl.precision_plan import (NAMED_PLANS, Plan, cpu_flags, cpu_has_fast_bf16, cpu_model_name,
                                 set_conv_layout, stage_context)

__all__ = ["Decision", "MARGIN", "choose_plan", "guard_pays", "decide", "probe", "cache_key",
           "cache_path", "cpu_flags", "cpu_model_name"]

PROBE_VERSION = 4
MARGIN = 0.9          # an option replaces a more exact one only below 0.9x its time
_EXACTNESS = ("fp32", "fp32cl", "onednn", "bf16", "fp16", "int8")   # closest to fp32 first
_AUTO = {"base_encode": ("fp32",), "karl_encode": ("fp32", "onednn")}  # the encode side (module doc)
REPS = 2              # timed runs per option after one warm-up; the best counts
MIN_IMAGES = 4        # the guard's break-even is judged after this many images
ENV = "KARL_PRECISION_AUTO"
_PROBED: set[str] = set()    # keys probed in this process (KARL_PRECISION_AUTO=probe measures once)
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
STAGE_NAMES = {"base_encode": "base encoder", "karl_encode": "KARL encoder",
               "karl_decode": "KARL decoder", "base_decode": "base decoder"}


@dataclasses.dataclass
class Decision:
    """What ``auto`` means for one model on one device, and why."""
    plan: Plan
    source: str                        # probe | cache | env | cuda | no model
    reason: str
    timings: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        return f"auto -> {self.plan.label} ({self.source}): {self.reason}"

    def short(self) -> str:
        """The reason in a few words: which stages beat fp32 here, by how much."""
        if not self.timings:
            return self.reason
        gains = [f"{STAGE_NAMES[s]} {getattr(self.plan, s)} {o['fp32'] / o[getattr(self.plan, s)]:.1f}x"
                 for s, o in self.timings.items()
                 if s in STAGE_NAMES and getattr(self.plan, s, "fp32") != "fp32"]
        where = "measured now" if self.source == "probe" else "measured earlier on this CPU kind"
        if not gains:
            return f"{where}: no option took under {MARGIN:.0%} of fp32's time in any stage"
        return f"{where}: " + ", ".join(gains) + " faster than fp32"


# ----------------------------------------------------------------------------- machine
# (cpu_model_name and cpu_flags live in karl/precision_plan.py; re-exported here)

def model_signature(model: nn.Module) -> str:
    c = model.config
    return (f"{c.base.kind}:{c.image_size}px:ch{c.base.channels}:w{c.width}:"
            f"L{c.encoder_layers}/{c.decoder_layers}:T{c.max_tokens}")


def cache_key(model: nn.Module) -> str:
    flags = ",".join(f for f in _FLAGS if f in cpu_flags()) or "-"
    return (f"v{PROBE_VERSION}|{cpu_model_name()}|{flags}|torch {torch.__version__}|"
            f"{torch.get_num_threads()} threads|{model_signature(model)}")


def cache_path() -> Path:
    return cache_dir("precision") / "auto.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_cached(key: str) -> Decision | None:
    entry = _read_cache().get(key)
    try:
        return Decision(Plan(**entry["plan"]), "cache", f"{entry['reason']} [measured {entry['when']}]",
                        entry.get("timings", {}))
    except (TypeError, KeyError, ValueError):
        return None


def save_cached(key: str, decision: Decision) -> None:
    """Best effort: a read-only cache directory only means probing again next time."""
    data = _read_cache()
    data[key] = {"plan": dataclasses.asdict(decision.plan), "reason": decision.reason,
                 "timings": decision.timings,
                 "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- decision

def _fmt(opts: dict[str, float]) -> str:
    return " / ".join(f"{o} {t:.3g}" for o, t in opts.items())


def choose_plan(timings: dict[str, dict[str, float]], margin: float = MARGIN) -> tuple[Plan, str]:
    """The plan from estimated seconds per image per stage and option (pure; see module doc)."""
    chosen, parts = {}, []
    for stage in STAGE_NAMES:
        opts = {o: t for o, t in timings.get(stage, {}).items() if o in _AUTO.get(stage, _EXACTNESS)}
        best = "fp32"
        if "fp32" in opts:      # from the most to the least exact: each must beat the best so far
            for option in sorted(opts, key=_EXACTNESS.index):
                if opts[option] < margin * opts[best]:
                    best = option
        chosen[stage] = best
        if opts:
            parts.append(f"{STAGE_NAMES[stage]} {_fmt(opts)} s -> {best}")
    plan = Plan(**chosen)
    ref = sum(o.get("fp32", 0.0) for o in timings.values())
    est = sum(o.get(getattr(plan, s, "fp32"), o.get("fp32", 0.0)) for s, o in timings.items())
    if ref > 0 and est > (margin + 0.05) * ref and plan != Plan():
        plan, why = Plan(), f"; the plan's estimate {est:.3g} s is not clearly below fp32's {ref:.3g} s: fp32"
    else:
        why = f"; estimate {ref:.3g} -> {est:.3g} s/image" if ref > 0 else ""
    return plan, "; ".join(parts) + why


def guard_pays(timings: dict[str, dict[str, float]], plan: Plan, images: int, near_images: int) -> bool:
    """Whether the plan's encode side still pays with its re-check: it saves ``exact - fast``
    per image (base encoder + KARL encoder) and costs ``rate * exact`` (the re-encode of the
    images with a decision within the plan's margin). True before MIN_IMAGES images."""
    base, karl = timings.get("base_encode", {}), timings.get("karl_encode", {})
    if images < MIN_IMAGES or "fp32" not in base or "fp32" not in karl:
        return True
    exact = base["fp32"] + karl["fp32"]
    fast = base.get(plan.base_encode, base["fp32"]) + karl.get(plan.karl_encode, karl["fp32"])
    return exact - fast > near_images / images * exact


def cuda_plan() -> Plan:
    """``auto`` on CUDA: bf16 decoding where the GPU supports it (not probed: no GPU was
    measured); the encode side fp32, as on CPU."""
    return Plan(karl_decode="bf16", base_decode="bf16") if torch.cuda.is_bf16_supported() else Plan()


def decide(model: nn.Module) -> Decision:
    """``auto`` for ``model`` on its device: env override, CUDA rule, cache, or a probe."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in NAMED_PLANS:
        return Decision(NAMED_PLANS[forced], "env", f"{ENV}={forced}")
    if model.device.type == "cuda":
        return Decision(cuda_plan(), "cuda", "bf16 decoding on a GPU that supports it, the encode "
                        "side fp32 (not probed)" if cuda_plan() != Plan() else "no bf16 on this GPU")
    if model.device.type != "cpu":
        return Decision(Plan(), "no probe", f"fp32 on {model.device.type}")
    key = cache_key(model)
    if forced != "probe" or key in _PROBED:      # "probe": once per process, then the cache
        cached = load_cached(key)
        if cached is not None:
            return cached
    t0 = time.perf_counter()
    timings = probe(model)
    plan, reason = choose_plan(timings)
    decision = Decision(plan, "probe", f"probe {time.perf_counter() - t0:.1f} s, "
                                       f"{torch.get_num_threads()} threads: {reason}", timings)
    save_cached(key, decision)
    _PROBED.add(key)
    return decision


# ----------------------------------------------------------------------------- probe

def _scale(model: nn.Module) -> int:
    """The probe's spatial divisor: 2 where the grid allows it (1/4 of the base tokenizer's
    work). Not smaller: per-call costs that do not shrink with the image (bf16 casts of the
    conv weights under autocast) would weigh several times more than at full size."""
    g = model.grid_size
    return 2 if g % 2 == 0 and g >= 4 else 1


def probe(model: nn.Module) -> dict[str, dict[str, float]]:
    """Estimated seconds per image for each stage and option on this CPU (module doc); at
    full resolution where the base tokenizer refuses the smaller images."""
    try:
        return _probe(model, _scale(model))
    except (AssertionError, ValueError, RuntimeError):
        return _probe(model, 1)


def _cases(model: nn.Module, q: int) -> list[tuple]:
    """(stage, option, fn, scale to the whole stage, encoder side channels-last, decoder side
    channels-last) for every option this CPU can run natively (module doc)."""
    g, d = model.grid_size // q, model.config.base.downsample
    x = torch.rand(1, 3, g * d, g * d)
    head = torch.randn(1, model.base.head_dim, g, g)
    base, area = model.base, q * q
    n, k, w = model.grid_size ** 2, model.max_tokens, model.config.width
    enc_seq = torch.randn(1, 1 + n + k, w)
    dec_seq, mask = torch.randn(1, n + k // 2, w), torch.ones(1, n + k // 2, dtype=torch.bool)
    enc_n, dec_n = model.config.encoder_layers, model.config.decoder_layers
    blocks = {"karl_encode": (model.encoder.transformer[0], lambda b: b(enc_seq), enc_n),
              "karl_decode": (model.decoder.transformer[0], lambda b: b(dec_seq, mask), dec_n)}
    decode = functools.partial(type(base).decode_head, base, head)
    encode = functools.partial(base.encode, x)
    cases = [("base_encode", "fp32", encode, area, False, False),       # for the guard's cost
             ("base_decode", "fp32", decode, area, False, False),
             ("base_decode", "fp32cl", decode, area, False, True)]
    if cpu_has_fast_bf16():
        cases.append(("base_decode", "bf16", decode, area, False, True))
    for stage, (block, call, layers) in blocks.items():
        cases.append((stage, "fp32", functools.partial(call, block), layers, False, False))
        kinds = [k for k in kernels.KINDS if stage == "karl_decode" or k == "onednn"]
        for kind in (k for k in kinds if kernels.available(k)):
            twin = copy.deepcopy(block)
            kernels.install(twin, kind)
            cases.append((stage, kind, functools.partial(call, twin), layers, False, False))
        if stage == "karl_decode" and cpu_has_fast_bf16():
            cases.append((stage, "bf16", functools.partial(call, block), layers, False, False))
    return cases


@torch.no_grad()
def _probe(model: nn.Module, q: int) -> dict[str, dict[str, float]]:
    """One warm-up round, then REPS rounds over all cases, interleaved (a machine shared with
    other jobs slows the options alike); the best time of each, scaled to its whole stage."""
    cases = _cases(model, q)
    best: dict[tuple[str, str], float] = {}
    for r in range(REPS + 1):
        for stage, option, fn, factor, enc_cl, dec_cl in cases:
            set_conv_layout(model, enc_cl, dec_cl)
            try:
                with stage_context("cpu", option):
                    t = time.perf_counter()
                    fn()
                    dt = (time.perf_counter() - t) * factor
            finally:
                set_conv_layout(model, False, False)
            if r:
                best[stage, option] = min(best.get((stage, option), dt), dt)
    timings: dict[str, dict[str, float]] = {s: {} for s in STAGE_NAMES}
    for (stage, option), dt in best.items():
        timings[stage][option] = dt
    return timings
