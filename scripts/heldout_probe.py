"""Transfer check during training: the EMA weights of a ``state.pt`` (or a release) on held-out
photo crops, full budget and a few prefixes, next to the same on training crops.

    python scripts/heldout_probe.py runs/cpu_tae/stage1/state.pt --heldout data_cache/heldout \
        --log runs/cpu_tae/probe.jsonl

Prints (and appends to ``--log``) one JSON line: step, mean pixel L1 and PSNR of the held-out
crops with k tokens for each k in ``--tokens`` (all tokens kept, no halting), the same L1 on
``--train-crops`` fixed crops of the training split, and the base tokenizer's own L1 (the floor).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from heldout_set import load_photos
from karl.checkpoint import load_state
from karl.config import experiment_from_dict
from karl.data.corpus import FixedCropDataset, load_manifest, split_sources
from karl.metrics import l1, psnr
from karl.model import KARL


def load_ema(path: Path) -> tuple[KARL, int, object]:
    if path.is_dir():
        from karl import load_pretrained
        model = load_pretrained(path)
        meta = json.loads((path / "config.json").read_text()).get("training", {})
        return model, int(meta.get("step", -1)), experiment_from_dict(meta["experiment"])
    state = load_state(path, "cpu")
    cfg = experiment_from_dict(state["config"])
    model = KARL(cfg.model)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state["ema"].items()})
    return model, int(state["step"]), cfg


@torch.no_grad()
def prefix_errors(model: KARL, images: torch.Tensor, tokens: list[int]) -> dict[str, float]:
    out = {}
    for k in tokens:
        enc = model.encode(images, epsilon=0.0, budget=k)
        recon = model.decode(enc)
        out[f"l1@{k}"] = round(float(l1(recon, images).mean()), 4)
        out[f"psnr@{k}"] = round(float(psnr(recon, images).mean()), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="state.pt or release directory")
    p.add_argument("--heldout", type=Path, default=Path("data_cache/heldout"))
    p.add_argument("--tokens", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--train-crops", type=int, default=32)
    p.add_argument("--log", type=Path)
    args = p.parse_args()
    t0 = time.time()
    model, step, cfg = load_ema(args.checkpoint)
    model.eval()
    size = cfg.model.image_size
    tokens = sorted({min(k, model.max_tokens) for k in args.tokens})
    held = load_photos(args.heldout, size)
    train_entries, _ = split_sources(load_manifest(cfg.data.path), cfg.data.holdout_fraction, cfg.data.seed,
                                     cfg.data.holdout_names)
    crops = FixedCropDataset(cfg.data.path, size, train_entries, crops_per_image=1,
                             min_scale=cfg.data.min_crop_scale, seed=cfg.data.seed + 1)
    train = torch.stack([crops[i] for i in range(min(args.train_crops, len(crops)))])
    with torch.no_grad():
        floor = float(l1(model.base.reconstruct(held), held).mean())
    row = {"step": step, "checkpoint": str(args.checkpoint), "base_floor_l1": round(floor, 4),
           **{f"heldout/{k}": v for k, v in prefix_errors(model, held, tokens).items()},
           **{f"train/{k}": v for k, v in prefix_errors(model, train, tokens).items()},
           "seconds": round(time.time() - t0, 1)}
    line = json.dumps(row)
    print(line)
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
