"""The held-out evaluation set written by ``scripts/export_heldout.py``, loaded for the
model-card scripts (adaptivity_check, base_floor, halting_ablation), and their JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from karl.data.images import list_images, load_image, preprocess


def load_photos(root: Path, size: int) -> torch.Tensor:
    """``root/photos/*`` as [N, 3, size, size] in [0, 1]."""
    return torch.stack([preprocess(load_image(p), size) for p in list_images(Path(root) / "photos")])


def load_procedural(root: Path, size: int) -> tuple[torch.Tensor, pd.DataFrame]:
    """``root/procedural``: images [N, 3, size, size] and procedural.csv (file, family, bits, ...)."""
    folder = Path(root) / "procedural"
    meta = pd.read_csv(folder / "procedural.csv")
    return torch.stack([preprocess(load_image(folder / f), size) for f in meta["file"]]), meta


def report_json(report: dict, out: str | Path | None) -> None:
    """Print ``report`` and, when ``out`` is given, write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
