"""Single pass vs search on the same model: how much faster is KARL than searching for the
token count, and how close is its count to the searched (oracle) minimum?

    python benchmarks/single_pass_vs_search.py [--checkpoint DIR] [--data SPEC] [--images N]
                                               [--epsilon 0.05] [--device cuda]

Runs ``karl-eval`` (variable regime + the three search baselines, no fixed regime) in one
process on the same images and prints a table. The last line reads
``speedup_vs_search=<x> token_ratio=<y>`` for ``--epsilon``, where

- x = wall time per image of the binary prefix search / that of KARL's single pass
  (both include the one base-tokenizer encode every method needs);
- y = KARL's mean tokens / the binary prefix search's mean tokens (the oracle KC-hat of the
  model: the minimal prefix with L1 <= epsilon, exact if L1 falls monotonically with length).

Model: the first release directory under ``assets/checkpoints/*/``; without one, a tiny
*random* model (a smoke test of the machinery: its numbers say nothing about KARL).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from karl.evaluate import build_parser, run  # noqa: E402


def bundled_checkpoint() -> Path | None:
    found = sorted(p.parent for p in (ROOT / "assets" / "checkpoints").glob("*/config.json"))
    return found[0] if found else None


def default_data(n: int) -> str:
    examples = ROOT / "assets" / "examples"
    from karl.data.images import list_images
    if examples.is_dir() and list_images(examples):
        return str(examples)
    return f"procedural:{n}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="release dir (default: assets/checkpoints/*/, else a tiny random model)")
    p.add_argument("--data", help="as karl-eval --data (default: assets/examples, else procedural images)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device")
    p.add_argument("--lpips-net", default="none", choices=["alex", "vgg", "none"])
    a = p.parse_args(argv)

    ckpt = a.checkpoint or bundled_checkpoint()
    if ckpt is None:
        ckpt = "random:tiny"
        print("NOTE: no release under assets/checkpoints/*/: using a tiny RANDOM model. This exercises "
              "the machinery only; its speed and token numbers say nothing about KARL.")
    data = a.data or default_data(a.images)
    with tempfile.TemporaryDirectory() as out:
        argv_eval = ["--checkpoint", str(ckpt), "--data", data, "--out", out, "--fixed", "none",
                     "--epsilon", f"{a.epsilon:g}", "--max-images", str(a.images),
                     "--batch-size", str(a.batch_size), "--lpips-net", a.lpips_net,
                     "--save-examples", "0", "--no-progress"]
        if a.device:
            argv_eval += ["--device", a.device]
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # karl-eval's own tables
            summary = run(build_parser().parse_args(argv_eval))
    cfg = summary["config"]
    print(f"model {ckpt} (max_tokens {cfg['budget']}), data {cfg['data_description']}, "
          f"{summary['num_images']} images, epsilon {a.epsilon:g}, device {cfg['device']}")
    print(f"steps: linear {cfg['linear_step']}, binary {cfg['binary_step']}, iterative {cfg['iterative_step']}; "
          f"prefix encoding conditioned on epsilon {cfg['prefix_condition']}")
    karl = summary["variable"][0]
    head = f"{'method':<20}{'tokens':>8}{'reached':>9}{'enc runs':>10}{'dec runs':>10}{'ms/img':>9}" \
           f"{'time/KARL':>11}{'KARL/this':>11}{'L1':>8}"
    print(head)
    print("-" * len(head))
    print(f"{'KARL (single pass)':<20}{karl['tokens']:>8.1f}{100 * karl['reached']:>8.1f}%{1:>10}{1:>10}"
          f"{1e3 * karl['time_s']:>9.2f}{1:>11.2f}{1:>11.2f}{karl['l1']:>8.4f}")
    for s in summary["search"]:
        c = s["vs_karl"]
        print(f"{s['method']:<20}{s['tokens']:>8.1f}{100 * s['reached']:>8.1f}%{s['encoder_runs']:>10.2f}"
              f"{s['decoder_runs']:>10.2f}{1e3 * s['time_s']:>9.2f}{c['speedup_vs_karl']:>11.2f}"
              f"{c['token_ratio']:>11.2f}{s['l1']:>8.4f}")
    sp = summary["single_pass_vs_search"][0]
    print(json.dumps({"oracle": sp["oracle"], "oracle_reached": sp["oracle_reached"],
                      "karl_tokens": sp["karl_tokens"], "oracle_tokens": sp["oracle_tokens"]}))
    print(f"speedup_vs_search={sp['speedup_vs_search'][sp['oracle']]:.3f} token_ratio={sp['token_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
