"""The results folder: per-image CSV rows appended after every batch, resume (rows already
there are skipped), the merge of torchrun parts, and run.json's fingerprint."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path


from karl.eval.regimes import EvalError, Task


CSV_FIELDS = ["image_id", "regime", "epsilon", "budget", "tokens", "reached", "encoder_runs",
              "decoder_runs", "l1", "psnr", "ssim", "lpips", "time_s"]
# run.json fields that must match for a rerun to append to existing rows
FINGERPRINT_KEYS = ("checkpoint", "model_config", "data", "image_size", "lpips_net",
                    "prefix_condition", "linear_step", "binary_step", "iterative_step", "precision")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        # a row cut short by a crash has missing fields (None): drop it, it will be redone
        return [r for r in csv.DictReader(fh) if r.get("time_s") not in (None, "")]


def _append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
    writer.writerows(rows)
    with open(path, "a", newline="") as fh:  # one write per batch
        fh.write(buf.getvalue())
        fh.flush()


def _row_key(r: dict) -> tuple[str, str, str, str]:
    return r["image_id"], r["regime"], r["epsilon"], r["budget"]


def _all_rows(out: Path) -> list[dict]:
    rows = _read_csv(out / "per_image.csv")
    for part in sorted((out / "parts").glob("per_image.rank*.csv")):
        rows += _read_csv(part)
    return rows


def merge_results(out: Path, order: list[str], tasks: list[Task]) -> list[dict]:
    """Deduplicate the main CSV and the rank parts into ``per_image.csv`` (sorted); drop the parts."""
    seen: dict[tuple, dict] = {}
    for r in _all_rows(out):
        seen.setdefault(_row_key(r), r)
    pos = {i: n for n, i in enumerate(order)}
    tpos = {t.key: n for n, t in enumerate(tasks)}
    rows = sorted(seen.values(), key=lambda r: (pos.get(r["image_id"], len(pos)), r["image_id"],
                                                tpos.get(_row_key(r)[1:], len(tpos)), _row_key(r)))
    tmp = out / "per_image.csv.tmp"
    tmp.unlink(missing_ok=True)
    _append_csv(tmp, rows)
    os.replace(tmp, out / "per_image.csv")
    for part in (out / "parts").glob("per_image.rank*.csv"):
        part.unlink()
    return rows


def _prepare_out(out: Path, fingerprint: dict, overwrite: bool, is_main: bool) -> None:
    run_json = out / "run.json"
    if overwrite:
        if is_main:
            for p in [out / "per_image.csv", out / "summary.json", out / "results.md", run_json,
                      *out.glob("skipped*.txt"), *(out / "parts").glob("*.csv"), *(out / "rfid").glob("*.pt")]:
                p.unlink(missing_ok=True)
    elif run_json.is_file():
        old = json.loads(run_json.read_text())
        diff = [k for k in FINGERPRINT_KEYS if old.get(k) != fingerprint.get(k)]
        if diff:
            raise EvalError(f"{out} holds results of a different run ({', '.join(diff)} differ); "
                            "use another --out or pass --overwrite")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not run_json.is_file():
            run_json.write_text(json.dumps(fingerprint, indent=2))
