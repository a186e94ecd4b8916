"""Cost of analysis.tokens on a preset with random weights and a forced program of k tokens.

    OMP_NUM_THREADS=2 python benchmarks/token_maps_cost.py --preset small --tokens 200
    python benchmarks/token_maps_cost.py --preset small --tokens 200 --pilot   # 1 + 2 rows only

The program is forced (the first k tokens kept) so the cost does not depend on what the
random halting head happens to keep. Prints the wall time of compute_progressive and
compute_token_maps (attention included) and their decoder rows. ``--pilot`` instead times
a leave-one-out pass of 1 + 2 rows and the encoder, for an estimate before a long run.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def forced(model, k: int):
    """Patch ``model.encode`` so that exactly the first ``k`` tokens are kept."""
    encode = model.encode

    def encode_forced(*args, **kwargs):
        enc = encode(*args, **kwargs)
        keep = torch.zeros_like(enc.keep)
        keep[:, :k] = True
        return dataclasses.replace(enc, keep=keep)
    model.encode = encode_forced
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--head-batch-size", type=int, default=16)
    ap.add_argument("--pilot", action="store_true")
    args = ap.parse_args()

    from analysis.tokens import compute_progressive, compute_token_maps
    from karl import build_model

    import karl.metrics  # noqa: F401  (imported before the clock starts)

    model = forced(build_model(args.preset, seed=0).eval(), args.tokens)
    assert args.tokens <= model.config.num_latent_tokens, "more tokens than the latent table holds"
    budget = max(args.tokens, model.max_tokens)
    s = model.image_size
    image = torch.rand(3, s, s, generator=torch.Generator().manual_seed(0))
    print(f"preset {args.preset}: {s} px, grid {model.grid_size}^2, width {model.config.width}, "
          f"{model.config.decoder_layers} decoder layers, {args.tokens} kept tokens, "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        t = time.perf_counter()
        model.encode(image[None], 0.05, budget=budget)    # also warms up the thread pool
        print(f"encode: {time.perf_counter() - t:.1f} s")
        if args.pilot:
            t = time.perf_counter()
            tm = compute_token_maps(model, image, 0.05, budget, max_maps=2, attention=False,
                                    head_batch_size=args.head_batch_size)
            print(f"leave-one-out pass of 1 + {len(tm.tokens)} rows (encode included): "
                  f"{time.perf_counter() - t:.1f} s")
            return
        t = time.perf_counter()
        pg = compute_progressive(model, image, 0.05, budget, head_batch_size=args.head_batch_size)
        print(f"compute_progressive: {len(pg.num_tokens)} rows, {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        tm = compute_token_maps(model, image, 0.05, budget, head_batch_size=args.head_batch_size)
        print(f"compute_token_maps: 1 + {len(tm.tokens)} rows + attention, {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
