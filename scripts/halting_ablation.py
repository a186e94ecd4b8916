"""Compare halting-label rules (paper vs minimal) trained on the same budget: figure + table.

    python scripts/halting_ablation.py --run paper=runs/cpu/stage1p/release \
        --run minimal=runs/cpu/stage1m_20min --heldout data_cache/heldout \
        --out docs/figures/halting_ablation

Writes ``<out>.png`` (halting probability vs token index, KC-hat vs epsilon, Table-3 shares)
and ``<out>.json``. Everything is measured on the held-out set by running each model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis._common import sweep_many  # noqa: E402
from karl import LOSS_BINS, load_pretrained  # noqa: E402
from heldout_set import load_photos, load_procedural  # noqa: E402
from karl.metrics import l1  # noqa: E402

TABLE3_EPS = (0.05, 0.1, 0.2)


def held_out(root: Path, size: int) -> dict[str, torch.Tensor]:
    photos = load_photos(root, size)
    proc, meta = load_procedural(root, size)
    simple = meta.family.isin(["flat", "gradient"]).to_numpy()
    return {"photos": photos, "procedural": proc, "flat+gradient": proc[torch.from_numpy(simple)]}


@torch.no_grad()
def measure(model, sets: dict[str, torch.Tensor]) -> dict:
    out: dict = {}
    for name, x in sets.items():
        sweep = sweep_many(model, x, LOSS_BINS)
        probs, kc = sweep.halting_probs.double().numpy(), sweep.kc_hat.numpy()
        out[name] = {"kc_by_eps": kc.mean(0).tolist(),
                     "halt_prob_0.05": probs[:, LOSS_BINS.index(0.05)].mean(0).tolist(),
                     "halt_prob_0.1": probs[:, LOSS_BINS.index(0.1)].mean(0).tolist(),
                     "monotone_share": float((np.diff(kc, axis=1) <= 0).all(1).mean())}
        for eps in TABLE3_EPS:
            enc = model.encode(x, epsilon=eps)
            err = l1(model.decode(enc), x)
            out[name][f"table3_{eps:g}"] = {"mean_tokens": float(enc.kc_hat.float().mean()),
                                             "share_l1_above_eps": float((err > eps + 1e-6).float().mean()),
                                             "share_above_eps_plus_0.01": float((err > eps + 0.01 + 1e-6).float().mean())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=RELEASE_DIR (repeat)")
    p.add_argument("--heldout", default="data_cache/heldout")
    p.add_argument("--out", default="docs/figures/halting_ablation")
    args = p.parse_args()
    results, steps = {}, {}
    for item in args.run:
        name, path = item.split("=", 1)
        model = load_pretrained(path).eval()
        sets = held_out(Path(args.heldout), model.image_size)
        results[name] = measure(model, sets)
        info = json.loads((Path(path) / "config.json").read_text()).get("training", {})
        steps[name] = info.get("step")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in results.items():
        k = len(r["photos"]["halt_prob_0.05"])
        for subset, style in (("photos", "-"), ("flat+gradient", "--")):
            axes[0].plot(range(1, k + 1), r[subset]["halt_prob_0.05"], style, label=f"{name}: {subset}")
            axes[1].plot(LOSS_BINS, r[subset]["kc_by_eps"], style, marker=".", label=f"{name}: {subset}")
        shares = [r["photos"][f"table3_{e:g}"]["share_l1_above_eps"] for e in TABLE3_EPS]
        tokens = [r["photos"][f"table3_{e:g}"]["mean_tokens"] for e in TABLE3_EPS]
        axes[2].plot(tokens, shares, marker="o", label=f"{name}: photos (eps {', '.join(f'{e:g}' for e in TABLE3_EPS)})")
    axes[0].axhline(0.75, color="grey", lw=0.8, ls=":")
    axes[0].set(title="mean halting probability, eps 0.05", xlabel="token index", ylabel="p(halt)")
    axes[1].set(title="mean KC-hat vs epsilon", xlabel="epsilon", ylabel="KC-hat", xscale="log")
    axes[2].set(title="Table 3: tokens vs share with L1 > eps", xlabel="mean tokens", ylabel="share L1 > eps")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Halting labels on the same budget: " + ", ".join(f"{n} (step {s})" for n, s in steps.items()))
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=90)
    out.with_suffix(".json").write_text(json.dumps({"steps": steps, "results": results}, indent=1) + "\n")
    for name, r in results.items():
        print(name, "step", steps[name], "photo KC at .02/.05/.1/.2:",
              [round(r["photos"]["kc_by_eps"][LOSS_BINS.index(e)], 1) for e in (0.02, 0.05, 0.1, 0.2)],
              "flat+gradient:", [round(r["flat+gradient"]["kc_by_eps"][LOSS_BINS.index(e)], 1) for e in (0.02, 0.05, 0.1, 0.2)],
              "monotone:", round(r["photos"]["monotone_share"], 3), round(r["procedural"]["monotone_share"], 3))


if __name__ == "__main__":
    main()
