"""Images/s of one training iteration (EIC + LTC, stage 1) and of single-pass inference.

    python benchmarks/train_throughput.py                 # tiny, cpu, small on this machine
    python benchmarks/train_throughput.py --presets cpu --device cuda --batch 64

Prints one line per (preset, device): train img/s (forward + backward + AdamW step of both
phases at a mid-range budget) and inference img/s (encode + decode at epsilon 0.05).
Figures are for the presets' random weights; the token count kept at inference depends on
the weights, so inference is also timed at the full budget (worst case).
"""

from __future__ import annotations

import argparse
import time

import torch

from karl.config import preset
from karl.losses import TokenReconLoss
from karl.model import KARL
from karl.train.phases import karl_iteration

DEFAULT_BATCH = {"tiny": 16, "cpu": 32, "small": 2, "small_vae": 2}


def bench(name: str, device: str, batch: int | None, iters: int) -> dict[str, float]:
    cfg = preset(name)
    batch = batch or DEFAULT_BATCH.get(name, 8)
    torch.manual_seed(0)
    model = KARL(cfg.model).to(device)
    model.base.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    s = cfg.model.image_size
    images = torch.rand(batch, 3, s, s, device=device)
    budget = cfg.model.max_tokens // 2
    fn = TokenReconLoss(model.base)
    gen = torch.Generator().manual_seed(0)
    amp = device.startswith("cuda")

    def train_once():
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
            loss, _, _ = karl_iteration(model, images, fn, cfg.train, gen, budget=budget)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_once():
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
            model.decode(model.encode(images, epsilon=0.05))

    def timed(fn_, n):
        fn_()  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn_()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - t)

    model.train()
    train_ips = timed(train_once, iters)
    model.eval()
    infer_ips = timed(infer_once, iters)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("base.")) / 1e6
    return {"preset": name, "device": device, "batch": batch, "params_M": params,
            "train_img_s": train_ips, "infer_img_s": infer_ips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,cpu,small")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda too if present)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    from karl.runtime import tune_cpu_backends
    tune_cpu_backends(verbose=True)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'preset':8} {'device':6} {'batch':>5} {'params(M)':>9} {'train img/s':>12} {'infer img/s':>12}")
    for dev in devices:
        for name in args.presets.split(","):
            r = bench(name, dev, args.batch, args.iters)
            print(f"{r['preset']:8} {r['device']:6} {r['batch']:5d} {r['params_M']:9.1f} "
                  f"{r['train_img_s']:12.3g} {r['infer_img_s']:12.3g}")


if __name__ == "__main__":
    main()
