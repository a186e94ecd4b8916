"""Sample reconstructions of a checkpoint for its model card (matplotlib PNG).

    python scripts/sample_grid.py --checkpoint assets/checkpoints/karl_cpu_tae \
        --images assets/examples --out assets/checkpoints/karl_cpu_tae/samples.png

Rows: the inputs, the base autoencoder alone, then KARL at each requested epsilon with the
number of kept tokens (KC-hat) and the L1 of that reconstruction in each title.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from karl import load_pretrained  # noqa: E402
from karl.data.images import list_images, load_image, preprocess  # noqa: E402
from karl.metrics import l1  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/checkpoints/karl_cpu_tae")
    p.add_argument("--images", type=Path, default=Path("assets/examples"))
    p.add_argument("--epsilon", default="0.03,0.09,0.2", help="comma-separated targets, one row each")
    p.add_argument("--max-images", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    model = load_pretrained(args.checkpoint).eval()
    paths = list_images(args.images)[: args.max_images]
    if not paths:
        raise SystemExit(f"no images under {args.images}")
    x = torch.stack([preprocess(load_image(q), model.image_size) for q in paths])
    eps = [float(e) for e in args.epsilon.split(",")]
    with torch.no_grad():
        grid = model.base_encode(x)
        rows = [("input", x, None), ("base AE", model.base.decode(grid.features).clamp(0, 1), None)]
        for e in eps:
            enc = model.encode(x, epsilon=e, base_grid=grid)
            rows.append((f"eps {e:g}", model.decode(enc), enc.kc_hat))
    fig, axes = plt.subplots(len(rows), len(paths), figsize=(1.6 * len(paths), 1.75 * len(rows)), squeeze=False)
    for r, (name, imgs, kc) in enumerate(rows):
        err = l1(imgs, x)
        for c in range(len(paths)):
            ax = axes[r][c]
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = paths[c].stem.split("_", 1)[-1][:16] if r == 0 else f"L1 {err[c]:.3f}"
            if kc is not None:
                title = f"{int(kc[c])} tok, {title}"
            ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
