"""The results folder: per-image CSV rows appended after every batch (the shared resumable writer,
karl/results_csv.py), the merge of torchrun parts, and run.json's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

from karl.eval.regimes import EvalError, Task
from karl.results_csv import ResultsCSV, ResultsFileError, row_key

CSV_FIELDS = ["image_id", "regime", "epsilon", "budget", "tokens", "reached", "encoder_runs",
              "decoder_runs", "l1", "psnr", "ssim", "lpips", "time_s"]
# run.json fields that must match for a rerun to append to existing rows
FINGERPRINT_KEYS = ("checkpoint", "model_config", "data", "image_size", "lpips_net",
                    "prefix_condition", "linear_step", "binary_step", "iterative_step", "precision")
ROW_KEY = ("image_id", "regime", "epsilon", "budget")  # one row per image and task


def results_file(path: Path) -> ResultsCSV:
    """``per_image.csv`` or a rank's part: the shared resumable writer (karl/results_csv.py)."""
    return ResultsCSV(path, CSV_FIELDS, ROW_KEY)


def _read_csv(path: Path) -> list[dict]:
    """The complete rows of ``path`` (a row cut short by a crash is left out: it will be redone)."""
    try:
        return results_file(path).read()
    except ResultsFileError as err:
        raise EvalError(str(err)) from None


def _row_key(r: dict) -> tuple[str, ...]:
    return row_key(r, ROW_KEY)


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
    results_file(out / "per_image.csv").rewrite(rows)
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
