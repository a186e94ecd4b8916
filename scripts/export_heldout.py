"""Write the bundled model's held-out evaluation set as PNG files.

    python scripts/export_heldout.py --config configs/cpu_stage1.yaml --out data_cache/heldout

- photos/: fixed multi-scale crops of the corpus photos held out of training
  (``data.holdout_fraction`` of the source scenes, split by ``data.seed``);
- procedural/: procedural images from seeds the training stream does not use, named
  ``<family>_c<complexity>_<bits>bits_<seed>.png`` and listed in procedural.csv.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from karl.config import load_config
from karl.data.corpus import FixedCropDataset, load_manifest, split_sources
from karl.data.images import to_pil
from karl.data.procedural import FAMILIES, generate

HELDOUT_SEED0 = 1_000_000_000  # procedural seeds from here on are reserved for evaluation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu_stage1.yaml")
    p.add_argument("--out", default="data_cache/heldout")
    p.add_argument("--crops-per-photo", type=int, default=8)
    p.add_argument("--procedural-per-family", type=int, default=8)
    p.add_argument("--exclude", nargs="*", default=[],
                   help="corpus photo stems to leave out (e.g. photos an earlier stage trained on)")
    args = p.parse_args()
    cfg = load_config(args.config)
    size, data = cfg.model.image_size, cfg.data
    out = Path(args.out)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "procedural").mkdir(parents=True, exist_ok=True)

    _, held = split_sources(load_manifest(data.path), data.holdout_fraction, data.seed, data.holdout_names)
    held = [e for e in held if Path(e["file"]).stem not in set(args.exclude)]
    crops = FixedCropDataset(data.path, size, held, crops_per_image=args.crops_per_photo,
                             min_scale=data.min_crop_scale, seed=data.seed)
    for i in range(len(crops)):
        entry = held[i // args.crops_per_photo]
        to_pil(crops[i]).save(out / "photos" / f"{Path(entry['file']).stem}_crop{i % args.crops_per_photo}.png")

    rows = []
    for f, family in enumerate(FAMILIES):
        for j in range(args.procedural_per_family):
            seed = HELDOUT_SEED0 + 1000 * f + j
            s = generate(seed, size, family, complexity=j % 6)
            name = f"{family}_c{s.complexity}_{s.bits:.0f}bits_{seed}.png"
            to_pil(s.image).save(out / "procedural" / name)
            rows.append({"file": name, "family": family, "complexity": s.complexity, "bits": s.bits, "seed": seed})
    with open(out / "procedural" / "procedural.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"held-out set in {out}: {len(crops)} photo crops from {len(held)} unseen photos "
          f"({', '.join(Path(e['file']).stem for e in held)}), {len(rows)} procedural images")


if __name__ == "__main__":
    main()
