"""Seconds per image of single-pass inference (encode + decode): fp32 vs the fast path.

    python benchmarks/inference_speed.py                       # small, 256 px, 4 images, CPU
    python benchmarks/inference_speed.py --device cuda --images 16 --repeats 5

Variants, interleaved in every repeat so that a machine shared with other jobs slows all of
them alike: ``fp32`` at batch 1, ``fp32`` at batch B (all images in one batch) and the fast
path at batch 1 (``--fast``, default ``auto``: bf16 autocast where the hardware has it, with
oneDNN + channels-last for the base tokenizer on CPU; karl/precision.py). Reports the median
seconds per image, the peak resident memory (CPU: VmRSS sampled every 5 ms above the level
before the variant; CUDA: max allocated), and how the fast path's programs compare with
fp32's: the share of images whose kept mask is equal, the number of differing decisions,
the largest halting-probability and pixel differences.

**Weights.** Random ``small`` weights (seed 0) with one documented tweak so that halting
drops tokens: a random head's logits differ by a few tenths between tokens and sit near 0
(probability 0.5 < 0.75: every token kept). The bias of the halting head's last layer is
set so that the median fp32 logit on these images equals the threshold (logit of 0.75):
about half of the tokens halt. ``--logit-std S`` also scales that layer's weight so the
logits have standard deviation S (probabilities spread towards 0 and 1 like a trained
head's); this does not make decisions more robust, because it scales the bf16 error by the
same factor. The line ``raw head`` estimates the flips of the unscaled head from the
calibration pass. A random head puts many tokens near the threshold; a trained head learns
0/1 labels with BCE, so its probabilities are likely farther from it and these counts a
pessimistic case (not measured on trained weights).

The last line is ``speedup_fast_vs_fp32=<x> keep_equal=<true|false> max_pixel_diff=<d>``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from karl import build_model
from karl.model import KARL
from karl.precision import resolve_precision, set_precision


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--images", type=int, default=4, help="images (also the batch of 'fp32 batch B')")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--fast", default="auto", choices=("bf16", "fp16", "auto"))
    p.add_argument("--logit-std", type=float, default=0.0,
                   help="scale the halting head to this logit spread; 0: bias only (module doc)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--fp32-onednn", choices=("on", "off", "tune"), default="on",
                   help="oneDNN for the fp32 variants: on (default; the faster on this CPU), off, "
                        "or tune (karl.runtime's timing, as the entry points do: noisy on a busy machine)")
    a = p.parse_args(argv)
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
    fast = resolve_precision(a.fast, device)
    model = build_model(a.preset, seed=0).to(device).eval()
    s = model.image_size
    x = torch.rand(a.images, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"{a.preset} {s}px on {device} ({torch.get_num_threads()} threads), {a.images} images, "
          f"{a.repeats} repeats, epsilon {a.epsilon}, fast path = {a.fast} -> {fast}")

    raw32 = halting_logits(model, x, a.epsilon)            # calibration on the random head
    raw16 = halting_logits(set_precision(model, fast), x, a.epsilon)
    tweak_halting(set_precision(model, "fp32"), raw32, a.logit_std)
    t = torch.logit(torch.tensor(model.config.halt_threshold, dtype=torch.float64))
    shift = t - raw32.median()
    flips = int(((raw32 + shift <= t) != (raw16 + shift <= t)).sum())
    print(f"raw head (logit std {raw32.std().item():.3f}, bias at the median): {flips} of "
          f"{raw32.numel()} decisions differ between fp32 and {fast} (estimate)")

    variants = {"fp32 batch 1": ("fp32", 1), f"fp32 batch {a.images}": ("fp32", a.images),
                f"{fast} batch 1": (fast, 1)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    memory = {k: 0 for k in variants}
    outputs: dict[str, list] = {}
    for r in range(a.repeats + 1):                 # repeat 0 warms up on one image (kernels)
        for name, (precision, batch) in variants.items():
            set_precision(model, precision)
            chunks = [x[i:i + batch] for i in range(0, len(x) if r else 1, batch)]
            results = []
            with PeakMemory(device) as mem:
                for c in chunks:
                    dt = time_variant(lambda: results.append(run(model, c, a.epsilon)), device)
                    if r > 0:
                        times[name] += [dt / len(c)] * len(c)
            memory[name] = max(memory[name], mem.peak)
            if r > 0:
                outputs[name] = [torch.cat(v) for v in zip(*results)]
    ref_keep, ref_probs, ref_img = outputs["fp32 batch 1"]
    keep, probs, img = outputs[f"{fast} batch 1"]
    equal = (keep == ref_keep).all(-1)
    diff = (img - ref_img).abs()
    b_keep, _, b_img = outputs[f"fp32 batch {a.images}"]
    print(f"kept tokens per image (fp32): {ref_keep.sum(-1).tolist()} of {ref_keep.shape[1]}; "
          f"fp32 tokens within 0.02 of the threshold: "
          f"{int(((ref_probs - model.config.halt_threshold).abs() < 0.02).sum())}")
    print(f"fp32 batch {a.images} vs batch 1: masks equal {bool((b_keep == ref_keep).all())}, "
          f"max pixel diff {(b_img - ref_img).abs().max().item():.2e}")
    print(f"{'variant':<14} {'s/image':>8} {'vs fp32':>8} {'peak MB':>8}")
    base = statistics.median(times["fp32 batch 1"])
    for name in variants:
        med = statistics.median(times[name])
        print(f"{name:<14} {med:8.3f} {med / base:8.2f} {memory[name] / 2**20:8.0f}")
    print(f"{fast} vs fp32: kept masks equal in {int(equal.sum())}/{len(equal)} images, "
          f"{int((keep != ref_keep).sum())} decisions differ, max |halting prob diff| "
          f"{(probs - ref_probs).abs().max().item():.4f}, pixels max {diff.max().item():.4f} "
          f"mean {diff.mean().item():.4f}")
    speedup = base / statistics.median(times[f"{fast} batch 1"])
    print(f"speedup_fast_vs_fp32={speedup:.2f} keep_equal={str(bool(equal.all())).lower()} "
          f"max_pixel_diff={diff.max().item():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
