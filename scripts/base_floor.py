"""How low can the full-budget error go? The base tokenizer's floor vs linear codes of equal size.

    python scripts/base_floor.py --checkpoint assets/checkpoints/karl_cpu_tae --heldout data_cache/heldout

For the held-out photo crops, mean pixel L1 of
- the conv autoencoder base alone (encode -> decode; KARL can never beat it), with its grid size
  in floats (g x g x latent_dim);
- an orthonormal 2D DCT per colour channel keeping N coefficients: the N lowest frequencies
  (zonal, a fixed code like a tokenizer's) and the N largest per image (an optimistic bound that
  ignores the cost of the positions), for N = the 1D bottleneck's size (max_tokens x token_dim)
  and multiples of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.fft import dctn, idctn

from karl import load_pretrained
from heldout_set import load_photos, report_json
from karl.metrics import l1


def zonal_mask(size: int, n_per_channel: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    order = np.lexsort((np.maximum(i, j).ravel(), (i + j).ravel()))   # low frequencies first
    mask = np.zeros(size * size, dtype=bool)
    mask[order[:n_per_channel]] = True
    return mask.reshape(size, size)


def dct_l1(images: np.ndarray, n_total: int, mode: str) -> float:
    """images [N, 3, S, S] in [0, 1]; n_total coefficients over the three channels."""
    s = images.shape[-1]
    coeffs = dctn(images, axes=(-2, -1), norm="ortho")
    if mode == "zonal":
        kept = coeffs * zonal_mask(s, n_total // 3)[None, None]
    else:
        flat = np.abs(coeffs).reshape(len(images), -1)
        thresh = -np.sort(-flat, axis=1)[:, n_total - 1][:, None, None, None]
        kept = np.where(np.abs(coeffs) >= thresh, coeffs, 0.0)
    recon = np.clip(idctn(kept, axes=(-2, -1), norm="ortho"), 0, 1)
    return float(np.abs(recon - images).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/checkpoints/karl_cpu_tae")
    p.add_argument("--heldout", default="data_cache/heldout")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = load_pretrained(args.checkpoint).eval()
    x = load_photos(Path(args.heldout), model.image_size)
    with torch.no_grad():
        base = l1(model.base.decode(model.base.encode(x).features).clamp(0, 1), x).mean().item()
        karl_full = l1(model.reconstruct(x, num_tokens=model.max_tokens), x).mean().item()
    cfg = model.config
    bottleneck = cfg.max_tokens * cfg.token_dim
    grid_floats = cfg.grid_size ** 2 * cfg.base.latent_dim
    arr = x.numpy().astype(np.float64)
    rows = {"photos": len(x), "image_size": model.image_size,
            "conv_ae_base": {"floats": grid_floats, "l1": round(base, 4)},
            "karl_full_budget": {"floats": bottleneck, "l1": round(karl_full, 4)}, "dct": []}
    for n in (bottleneck, 2 * bottleneck, grid_floats, 4 * bottleneck):
        rows["dct"].append({"floats": n, "zonal_l1": round(dct_l1(arr, n, "zonal"), 4),
                            "top_n_l1": round(dct_l1(arr, n, "top"), 4)})
    report_json(rows, args.out)


if __name__ == "__main__":
    main()
