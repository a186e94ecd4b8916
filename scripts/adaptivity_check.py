"""Adaptivity of a trained KARL model on the held-out set (numbers for the model card).

    python scripts/adaptivity_check.py --checkpoint assets/checkpoints/karl_cpu \
        --heldout data_cache/heldout --out results/karl_cpu/adaptivity.json

Reports, all from running the model:
- mean KC-hat of the held-out photo crops at every loss bin (it must fall as epsilon rises);
- Spearman's rho between KC-hat (and continuous KC) and the true description length of
  procedural images, per family and overall, at epsilon 0.05;
- mean KC-hat of flat images vs i.i.d. noise at epsilon 0.05.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from analysis.kc_curve import compute_kc_curve
from karl import LOSS_BINS, load_pretrained
from karl.data.images import list_images, load_image, preprocess


def load_folder(folder: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    paths = list_images(folder)
    return torch.stack([preprocess(load_image(p), size) for p in paths]), [p.name for p in paths]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/checkpoints/karl_cpu")
    p.add_argument("--heldout", default="data_cache/heldout")
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = load_pretrained(args.checkpoint)
    size, root = model.image_size, Path(args.heldout)

    photos, _ = load_folder(root / "photos", size)
    curve = compute_kc_curve(model, photos, LOSS_BINS)
    mean_kc = curve.kc_hat.mean(0)
    drops = np.diff(mean_kc)
    report: dict = {"checkpoint": str(args.checkpoint), "photos": int(len(photos)),
                    "photo_mean_kc_by_epsilon": {f"{e:g}": round(float(k), 3) for e, k in zip(LOSS_BINS, mean_kc)},
                    "photo_mean_kc_non_increasing": bool((drops <= 1e-9).all()),
                    "photo_mean_kc_spearman_vs_epsilon": float(spearmanr(LOSS_BINS, mean_kc).statistic)}

    meta = pd.read_csv(root / "procedural" / "procedural.csv")
    proc = torch.stack([preprocess(load_image(root / "procedural" / f), size) for f in meta["file"]])
    pc = compute_kc_curve(model, proc, [args.epsilon])
    meta["kc_hat"], meta["continuous_kc"] = pc.kc_hat[:, 0], pc.continuous_kc[:, 0]
    rows = []
    for fam, g in [*meta.groupby("family"), ("all", meta)]:
        rho = spearmanr(g["bits"], g["kc_hat"]).statistic if g["kc_hat"].nunique() > 1 else float("nan")
        rho_c = spearmanr(g["bits"], g["continuous_kc"]).statistic
        rows.append({"family": fam, "n": len(g), "mean_kc_hat": round(float(g["kc_hat"].mean()), 2),
                     "spearman_kc_hat": None if np.isnan(rho) else round(float(rho), 3),
                     "spearman_continuous_kc": round(float(rho_c), 3)})
    report["procedural_epsilon"] = args.epsilon
    report["procedural_by_family"] = rows
    flat = meta[meta.family == "flat"]["kc_hat"].mean()
    noise = meta[meta.family == "noise"]["kc_hat"].mean()
    report["flat_mean_kc_hat"], report["noise_mean_kc_hat"] = float(flat), float(noise)
    report["flat_fewer_tokens_than_noise"] = bool(flat < noise)

    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
