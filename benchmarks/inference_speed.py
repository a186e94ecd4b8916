"""Seconds per image of single-pass inference (encode + decode): fp32 vs ``auto`` and each precision.

    python benchmarks/inference_speed.py --threads 2 --repeats 3   # small, 256 px, 8 images, CPU
    python benchmarks/inference_speed.py --device cuda --images 16 --repeats 5

Variants, interleaved in every repeat so that a machine shared with other jobs slows all of
them alike: ``fp32`` at batch 1, ``fp32`` at batch B (all images in one batch), ``auto`` at
batch 1 (the plan karl/autoprecision.py measured on this machine, or its cached decision;
decided before timing, and printed with its reason), and at batch 1 the fixed precisions
auto chooses from: ``bf16`` guarded (where the CPU has native bf16, or on CUDA; ``--all``
times it anyway), ``bf16`` without the guard (all of ``encode`` under autocast), ``int8``
(the KARL decoder in dynamic int8, CPU) and ``fp32 oneDNN`` (CPU: fp32 everywhere, through
oneDNN's matmul for both transformers and channels-last convolutions for the base decoder;
only the summation order differs; the KARL encoder guarded with ROUNDING_MARGIN). ``KARL_PRECISION_AUTO=probe``
measures auto again.

Prints the CPU, a table (median seconds per image, speedup over fp32 batch 1, peak
resident memory: CPU VmRSS sampled every 5 ms above the level before the variant, CUDA max
allocated; and how each variant's programs compare with fp32's: images with equal kept
masks, differing decisions, the largest halting-probability and pixel differences, the
mean pixel difference, images the guard re-encoded in fp32), and what ``auto`` chose.

**Weights.** Random ``small`` weights (seed 0) except the halting head, which a random model
does not have in any useful sense (its logits sit near 0, probability 0.5 < 0.75: every
token kept). ``--head fit`` (default): the halting MLP alone is fitted with BCE, as training
fits it, to 0/1 labels "halt every token after the first k_i" on the frozen encoder's
outputs for ``--fit-images`` images; k_i grows with image i's detail (smooth random fields
drawn at 1..256 cells a side, k from 8 to 3/4 of the budget), so the head, like a trained
one, halts late tokens and puts most probabilities far from the threshold. The timed
images are other draws of the same kind. ``--head bias``: the worst case kept from earlier
versions, the random head's last bias set so that the median fp32 logit sits exactly at the
threshold (half of the decisions are near it; ``--logit-std S`` also scales the layer).
``--checkpoint DIR`` times a trained release instead (its own head, its image size).

The last line is ``speedup_auto_vs_fp32=<x> auto=<plan label> keep_equal=<true|false>
max_pixel_diff=<d>`` (auto vs fp32 at batch 1).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from karl import build_model
from karl.api import load_model
from karl.model import KARL
from karl.precision import HALT_MARGIN, describe_precision, precision_choice, set_precision


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak memory above the level at entry: CUDA max allocated, or sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes() - self.base)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes() - self.base)


def run(model: KARL, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = model.encode(x, epsilon=eps)
    return enc.keep.cpu(), enc.halting_probs.cpu(), model.decode(enc).cpu()


def halting_logits(model: KARL, x: torch.Tensor, eps: float) -> torch.Tensor:
    """All images' halting logits (batch 1 each), flattened, float64."""
    return torch.cat([torch.logit(model.encode(x[i:i + 1], epsilon=eps).halting_probs.double(),
                                  eps=1e-12).flatten().cpu() for i in range(len(x))])


def detail_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random fields with 1..size cells a side (log-uniform), and that side length."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.round(2 ** (torch.rand(n, generator=g) * torch.log2(torch.tensor(float(size))))).long()
    imgs = [torch.nn.functional.interpolate(torch.rand(1, 3, int(c), int(c), generator=g), size=size,
                                            mode="bilinear", align_corners=False)[0] for c in sides]
    return torch.stack(imgs).clamp(0, 1), sides


def fit_halting_head(model: KARL, images: torch.Tensor, sides: torch.Tensor, eps: float,
                     steps: int = 400) -> float:
    """Fit ``model.halting_mlp`` (only) with BCE to "halt after the first k_i tokens" (module
    doc) on the frozen encoder's fp32 outputs; returns the final training accuracy."""
    budget = model.max_tokens
    feats = []
    hook = model.halting_mlp[0].register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        for i in range(len(images)):
            model.encode(images[i:i + 1], epsilon=eps)
    hook.remove()
    x = torch.cat(feats)                                                   # [N, K, w]
    frac = torch.log2(sides.float()) / torch.log2(torch.tensor(float(model.image_size)))
    k = (8 + frac * (0.75 * budget - 8)).round()[:, None]                  # [N, 1]
    labels = (torch.arange(budget)[None] >= k).float()                     # 1 = halt
    opt = torch.optim.Adam(model.halting_mlp.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.halting_mlp(x).squeeze(-1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        probs = model.halting_mlp(x).squeeze(-1).sigmoid()
    return float(((probs > model.config.halt_threshold).float() == labels).float().mean())


@torch.no_grad()
def tweak_halting(model: KARL, raw: torch.Tensor, logit_std: float) -> None:
    """Scale + shift the halting head's last layer (module doc), from the raw fp32 logits."""
    last = model.halting_mlp[2]
    bias = last.bias.double()
    scale = logit_std / (raw - bias).std().item() if logit_std > 0 else 1.0
    last.weight.mul_(scale)
    target = torch.logit(torch.tensor(model.config.halt_threshold, dtype=torch.float64))
    last.bias.copy_((target - ((raw - bias) * scale).median()).float())


def time_variant(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def setup_head(model: KARL, a: argparse.Namespace, fast: str, x: torch.Tensor) -> None:
    """--head bias: the worst case (module doc), with an estimate of the raw head's flips."""
    raw32 = halting_logits(model, x, a.epsilon)            # calibration on the random head
    raw16 = halting_logits(set_precision(model, fast, recheck=False), x, a.epsilon)
    tweak_halting(set_precision(model, "fp32"), raw32, a.logit_std)
    t = torch.logit(torch.tensor(model.config.halt_threshold, dtype=torch.float64))
    shift = t - raw32.median()
    flips = int(((raw32 + shift <= t) != (raw16 + shift <= t)).sum())
    print(f"head: random, bias at the median fp32 logit (logit std {raw32.std().item():.3f}): "
          f"{flips} of {raw32.numel()} decisions differ between fp32 and {fast} (estimate)")


def build(a: argparse.Namespace, device: torch.device, fast: str) -> tuple[KARL, torch.Tensor]:
    if a.checkpoint:
        model = load_model(a.checkpoint, device=device).eval()
        x, _ = detail_images(a.images, model.image_size, seed=1)
        print(f"head: trained ({a.checkpoint})")
        return model, x.to(device)
    model = build_model(a.preset, seed=0).to(device).eval()
    x, _ = detail_images(a.images, model.image_size, seed=1)
    x = x.to(device)
    if a.head == "bias":
        setup_head(model, a, fast, x)
    else:
        fit_x, sides = detail_images(a.fit_images, model.image_size, seed=2)
        acc = fit_halting_head(model, fit_x.to(device), sides, a.epsilon)
        print(f"head: fitted on {a.fit_images} other images (BCE, training accuracy {acc:.3f})")
    return model, x


def variant_list(a: argparse.Namespace, device: torch.device) -> dict[str, tuple[object, int, bool]]:
    """name -> (precision or Plan, batch, re-check): fp32 at batch 1 and B, auto, and the
    options auto chooses from: bf16 (where the CPU has it natively, or on CUDA), int8,
    and fp32 through other kernels (karl/kernels.py; oneDNN matmul, channels-last convs)."""
    from karl import kernels
    from karl.precision import Plan, cpu_has_fast_bf16
    v = {"fp32 batch 1": ("fp32", 1, True), f"fp32 batch {a.images}": ("fp32", a.images, True),
         "auto": ("auto", 1, True)}
    if device.type == "cuda" or cpu_has_fast_bf16() or a.all:
        v.update({"bf16 guarded": ("bf16", 1, True), "bf16 unguarded": ("bf16", 1, False)})
    if device.type == "cpu" and kernels.available("int8"):
        v["int8"] = ("int8", 1, True)
    if device.type == "cpu" and kernels.available("onednn"):
        v["fp32 oneDNN"] = (Plan(karl_encode="onednn", karl_decode="onednn", base_decode="fp32cl"), 1, True)
    return v


def measure(model: KARL, x: torch.Tensor, a: argparse.Namespace, device: torch.device,
            variants: dict) -> tuple[dict, dict, dict, dict]:
    """Interleaved repeats (module doc): seconds per image, peak memory, outputs, guard counts.
    Each variant's ``precision_stats`` carry over from one repeat to the next, as in a long run
    (auto judges its guard's cost on them)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    memory = {k: 0 for k in variants}
    outputs: dict[str, list] = {}
    stats: dict[str, dict] = {}
    for r in range(a.repeats + 1):                 # repeat 0 warms up on one image (kernels)
        for name, (precision, batch, recheck) in variants.items():
            set_precision(model, precision, recheck=recheck)
            if name in stats:
                model.precision_policy.stats = stats[name]
            chunks = [x[i:i + batch] for i in range(0, len(x) if r else 1, batch)]
            results = []
            with PeakMemory(device) as mem:
                for c in chunks:
                    dt = time_variant(lambda: results.append(run(model, c, a.epsilon)), device)
                    if r > 0:
                        times[name] += [dt / len(c)] * len(c)
            memory[name] = max(memory[name], mem.peak)
            stats[name] = model.precision_stats
            if r > 0:
                outputs[name] = [torch.cat(v) for v in zip(*results)]
    return times, memory, outputs, stats


def report(model: KARL, x: torch.Tensor, a: argparse.Namespace, variants: dict, results: tuple) -> str:
    """Prints the table; returns the last line (module doc)."""
    times, memory, outputs, stats = results
    ref_keep, ref_probs, ref_img = outputs["fp32 batch 1"]
    print(f"kept tokens per image (fp32): {ref_keep.sum(-1).tolist()} of {ref_keep.shape[1]}; "
          f"fp32 tokens within {HALT_MARGIN} of the threshold: "
          f"{int(((ref_probs - model.config.halt_threshold).abs() < HALT_MARGIN).sum())} of {ref_probs.numel()}")
    base = statistics.median(times["fp32 batch 1"])
    print(f"| variant | s/image | speedup vs fp32 b1 | peak MB | masks equal | decisions differ "
          f"| max halting diff | max pixel diff | mean pixel diff | re-encoded |\n|{'---|' * 10}")
    for name in variants:
        med = statistics.median(times[name])
        keep, probs, img = outputs[name]
        diff = (img - ref_img).abs()
        s = stats[name]
        recheck = f"{s['rechecked_images']}/{s['images']}" if "rechecked_images" in s else "-"
        print(f"| {name} | {med:.3f} | {base / med:.2f} | {memory[name] / 2**20:.0f} | "
              f"{int((keep == ref_keep).all(-1).sum())}/{len(keep)} | {int((keep != ref_keep).sum())} | "
              f"{(probs - ref_probs).abs().max().item():.1e} | {diff.max().item():.4f} | "
              f"{diff.mean().item():.5f} | {recheck} |")
    set_precision(model, "auto")
    model.precision_policy.stats = stats["auto"]
    print(describe_precision(model, detail=True))
    keep, _, img = outputs["auto"]
    return (f"speedup_auto_vs_fp32={base / statistics.median(times['auto']):.2f} "
            f"auto={precision_choice(model).plan.label} "
            f"keep_equal={str(bool((keep == ref_keep).all())).lower()} "
            f"max_pixel_diff={(img - ref_img).abs().max().item():.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--checkpoint", help="a trained release dir instead of random --preset weights")
    p.add_argument("--images", type=int, default=8, help="images (also the batch of 'fp32 batch B')")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--all", action="store_true", help="also time bf16 on a CPU without native bf16")
    p.add_argument("--head", choices=("fit", "bias"), default="fit",
                   help="random-weight halting head: fitted with BCE (default) or the bias-only worst case")
    p.add_argument("--fit-images", type=int, default=16, help="--head fit: images it is fitted on")
    p.add_argument("--logit-std", type=float, default=0.0,
                   help="--head bias: scale the head to this logit spread; 0: bias only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--fp32-onednn", choices=("on", "off", "tune"), default="on",
                   help="oneDNN for the fp32 variants: on (default; the faster on this CPU), off, "
                        "or tune (karl.runtime's timing, as the entry points do: noisy on a busy machine)")
    a = p.parse_args(argv)
    # The no-re-check variant warns about its near-threshold decisions: they are counted below.
    warnings.filterwarnings("ignore", message=".*re-check off.*")
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cpu":
        from karl.runtime import tune_cpu_backends
        if a.fp32_onednn == "tune":
            tune_cpu_backends(verbose=True)
        else:
            torch.backends.mkldnn.enabled = a.fp32_onednn == "on"
        print(f"fp32 convolutions: {'oneDNN' if torch.backends.mkldnn.enabled else 'native'} kernels")
        from karl.autoprecision import cpu_flags, cpu_model_name
        print(f"CPU: {cpu_model_name()}; " + " ".join(f for f in ("avx512_bf16", "avx512_vnni", "amx_bf16",
                                                                  "amx_int8") if f in cpu_flags())
              + f"; torch {torch.__version__}")
    model, x = build(a, device, "bf16")
    variants = variant_list(a, device)
    print(f"{a.checkpoint or a.preset} {model.image_size}px on {device} ({torch.get_num_threads()} "
          f"threads), {a.images} images, {a.repeats} repeats, epsilon {a.epsilon}")
    set_precision(model, "auto")
    print(describe_precision(model, detail=True))              # decided (probe or cache) before timing
    last = report(model, x, a, variants, measure(model, x, a, device, variants))
    print(last)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
