"""Plot the loss curves of a multi-stage run from its JSON-lines logs (matplotlib PNG).

    python scripts/plot_training.py runs/cpu/stage0/log.jsonl runs/cpu/stage1/log.jsonl \
        runs/cpu/stage2/log.jsonl --out assets/checkpoints/karl_cpu/loss_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# What to draw per stage: (key in the log, label)
SERIES = {
    0: [("ae/l1", "pixel L1"), ("ae/lpips", "LPIPS")],
    1: [("eic/token_mse", "EIC token MSE"), ("ltc/token_mse", "LTC token MSE"), ("eic/l1", "EIC pixel L1 (e_T)"),
        ("ltc/halt_bce", "LTC halting BCE")],
    2: [("eic/l1", "EIC pixel L1"), ("ltc/l1", "LTC pixel L1"), ("ltc/lpips", "LTC LPIPS"),
        ("ltc/halt_bce", "LTC halting BCE")],
}


def read(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "event" not in r and "loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.logs), figsize=(5 * len(args.logs), 3.6), squeeze=False)
    for ax, log in zip(axes[0], args.logs):
        rows = read(log)
        stage = rows[0]["stage"]
        for key, label in SERIES[stage]:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=label, lw=1.2)
        ax.set_title(f"stage {stage} ({len(rows)} log points, {rows[-1]['step']} steps)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
