"""Peak memory and time of the human-complexity analysis on a Savoias-sized generated tree.

    python benchmarks/savoias_memory.py [--root /tmp/savoias_fake] [--size 256] [--scale 1.0]
                                        [--checkpoint assets/checkpoints/karl_cpu_tae] [--batch-size 64]

Generates (once) a tree in the real Savoias layout with the real category sizes (1,420
images: 200 Advertisement, 420 Art, 100 Interior Design, 200 Objects, 200 Scenes, 100
Suprematism, 200 Visualizations, as in the Savoias paper; ``--scale`` shrinks them), four
images missing, then runs what ``python -m analysis.report --human`` runs for section 5
(load, streamed measures, correlations with 1,000 bootstrap resamples) and prints the
process's peak RSS before and after. The images are grey noise, so only time and memory
mean anything here, not the correlations.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

SIZES = {"Advertisement": 200, "Art": 420, "Interior Design": 100, "Objects": 200, "Scenes": 200,
         "Suprematism": 100, "Visualizations": 200}
MISSING = ("Advertisement/17", "Advertisement/101", "Visualizations/3", "Visualizations/150")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _generate(root: Path, size: int, scale: float) -> None:
    from analysis.savoias import make_fake_savoias

    counts = {cat: max(3, round(n * scale)) for cat, n in SIZES.items()}
    make_fake_savoias(root, n_per_category=counts, size=size, missing=MISSING)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/savoias_fake")
    ap.add_argument("--size", type=int, default=256, help="side of the generated images")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real category sizes")
    ap.add_argument("--checkpoint", default="assets/checkpoints/karl_cpu_tae")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)

    import torch

    import karl
    from analysis.human import run_human_analysis
    from analysis.savoias import load_savoias

    root = Path(args.root)
    if not (root / "Images").is_dir():
        t = time.time()
        _generate(root, args.size, args.scale)
        print(f"generated {root} in {time.time() - t:.0f} s", file=sys.stderr)
    model = karl.load_pretrained(args.checkpoint).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_savoias(root)
    base = _peak_mb()
    t = time.time()
    hdf, corr = run_human_analysis(model, df, batch_size=args.batch_size)
    elapsed = time.time() - t
    print(f"images: {len(hdf)} ({len(df.attrs['missing'])} missing, {len(caught)} warning); "
          f"model input {model.image_size} px, proxies on {hdf.attrs['proxy_size']} px crops; "
          f"torch threads {torch.get_num_threads()}")
    print(f"peak RSS before the analysis (imports + model + index): {base:.0f} MB")
    print(f"peak RSS after: {_peak_mb():.0f} MB; analysis time {elapsed:.0f} s "
          f"({len(hdf) / elapsed:.1f} images/s incl. correlations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
