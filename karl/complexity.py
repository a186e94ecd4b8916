"""``karl-complexity``: KC-hat of every image of a data set at one or more epsilons, as a CSV.

    karl-complexity IMAGES... [--checkpoint DIR|hf:org/name] [--epsilon 0.05 0.1] [--out complexity.csv]

IMAGES: data specs (``karl/data/spec.py``, as ``karl-eval --data``): folders (recursive), globs
(``'data/**/*.jpg'``), image files, ``procedural[:N]``, ``corpus``, ``imagefolder:PATH`` or a
Hugging Face data set name; and text files listing one image path a line.
Each image is preprocessed like ``karl-eval`` (shorter side -> the model's input size, centre
crop), encoded once per epsilon and decoded from its kept tokens.

One CSV row per (image, epsilon): ``path, epsilon, epsilon_bin, kc_hat, continuous_kc, l1``
(``l1``: the mean absolute pixel error of the reconstruction from the kept tokens, i.e. at
KC-hat). Rows are appended after every batch; a rerun skips (path, epsilon) pairs already in
the CSV. Unreadable files are skipped, logged and listed in ``skipped.txt`` next to the CSV.
Exit code 0 when the CSV holds scores for at least one of the images, 1 when none could be
scored, 2 on bad arguments or an unloadable model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from karl.data.imageset import ImageSet, open_images
from karl.data.spec import GLOB_CHARS, DataSpec, DataSpecError, HFLoadError, MissingPathError, parse_data_spec
from karl.config import LOSS_BINS
from karl.model.encoding import RequestError, parse_epsilons
from karl.model_args import add_model_args, load_model_from_args, model_spec
from karl.precision import resolve_precision, set_precision
from karl.results_csv import ResultsCSV, ResultsFileError

__all__ = ["main", "collect_images", "score_batch", "resolved_precision", "FIELDS",
           "ComplexityError", "ImageItem"]

FIELDS = ["path", "epsilon", "epsilon_bin", "kc_hat", "continuous_kc", "l1"]
log = logging.getLogger("karl.complexity")


class ComplexityError(RuntimeError):
    """A user-facing problem: bad arguments, no images, a results file from another run."""


# ----------------------------------------------------------------------------- precision

def resolved_precision(precision: str, device: torch.device, model=None) -> str:
    """The plan label ``precision`` means on ``device`` (karl.precision: ``auto`` is measured
    on the model, karl/autoprecision.py; without a model it is fp32)."""
    try:
        return resolve_precision(precision, device, model)
    except ValueError as err:
        raise ComplexityError(f"--precision: {err}") from None


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class ImageItem:
    id: str                 # the CSV's path column: the image's file where it has one, else its set's id
    images: ImageSet        # the set it comes from (karl.data.imageset: the same images as every tool)
    index: int              # its index there


def _open(text: str, split: str | None, image_key: str) -> tuple[ImageSet, DataSpec]:
    """One spec through the shared image-source layer, with karl-complexity's one-line errors."""
    try:
        spec = parse_data_spec(text)
        return open_images(spec, 0, split=split, image_key=image_key), spec  # sized when read
    except MissingPathError as err:
        if not (GLOB_CHARS & set(text) or text.startswith("imagefolder:")):  # also file lists: say so
            raise ComplexityError(f"{text!r}: no such folder, image file, file list or glob match") from None
        raise ComplexityError(str(err)) from None
    except HFLoadError as err:  # a typo'd folder name reads as a data set name: say both
        local = f" ({text!r} is no local file or folder either)" if not text.startswith("imagefolder:") else ""
        raise ComplexityError(f"{err}{local}") from None
    except DataSpecError as err:
        raise ComplexityError(str(err)) from None


def collect_images(specs: list[str], split: str | None = None, image_key: str = "image") -> list[ImageItem]:
    """All images named by ``specs`` (:func:`karl.data.imageset.open_images`), in order, each once."""
    from karl.data.images import IMAGE_EXTENSIONS
    seen: dict[str, ImageItem] = {}
    for text in specs:
        images, spec = _open(text, split, image_key)
        one_file = spec.kind == "file" and spec.path.suffix.lower() in IMAGE_EXTENSIONS
        for i in range(len(images)):
            name = text if one_file else images.file(i) or images.ids[i]
            seen.setdefault(name, ImageItem(name, images, i))
    return list(seen.values())


class _Images(torch.utils.data.Dataset):
    """(index, [3, S, S] tensor or None, error message or None): a bad file does not stop the run."""

    def __init__(self, items: list[ImageItem], size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            return i, item.images.load(item.index, self.size), None  # = karl-eval's images
        except (OSError, ValueError) as err:  # ImageLoadError is a ValueError
            msg, name = str(err), item.images.file(item.index) or item.id
            # ImageLoadError names the file first; skipped.txt has it in column 1
            return i, None, msg.split(": ", 1)[1] if msg.startswith(f"{name}: ") else msg


def _collate(batch: list) -> list:
    return batch


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def score_batch(model, images: Tensor, epsilons: list[float]) -> list[list[dict]]:
    """Per epsilon, per image: epsilon_bin, kc_hat, continuous_kc and l1 at KC-hat.

    One ``model.sweep`` per batch (one base-tokenizer pass, one encoder pass over every
    (image, epsilon) pair), then one decoder pass per epsilon. Returns ``rows[e][b]`` dicts
    (without path / epsilon). Runs at the model's precision (``karl.precision.set_precision``;
    reduced-precision programs are re-checked in fp32 near the halting threshold).
    """
    images = images.to(model.device)
    out = []
    sweep = model.sweep(images, epsilons)
    for j in range(len(epsilons)):
        enc = sweep.encoding(j)
        rec = model.decode(enc).float()
        l1 = (rec - images).abs().flatten(1).mean(1)
        # bins are stored as float32 (0.05 -> 0.0500000007): 6 significant digits name the bin
        out.append([{"epsilon_bin": float(f"{float(enc.epsilon[b]):.6g}"), "kc_hat": int(enc.kc_hat[b]),
                     "continuous_kc": round(float(enc.continuous_kc[b]), 5), "l1": round(float(l1[b]), 6)}
                    for b in range(images.shape[0])])
    return out


# ----------------------------------------------------------------------------- results file

def _eps_key(eps: float | str) -> str:
    return f"{float(eps):g}"


def results_file(csv_path: Path) -> ResultsCSV:
    """The CSV as the shared resumable writer (karl/results_csv.py): a line cut short by a crash is
    redone, a (path, epsilon) pair is never written twice, other columns are refused."""
    return ResultsCSV(csv_path, FIELDS, ("path", "epsilon"))


def _check_run(run_path: Path, fingerprint: dict, overwrite: bool, csv_path: Path) -> None:
    """Refuse to append rows of another model or precision to an existing CSV."""
    if run_path.is_file() and csv_path.is_file() and not overwrite:
        old = json.loads(run_path.read_text())
        diff = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        if diff:
            raise ComplexityError(f"{csv_path} holds rows of another run (differs in {', '.join(diff)}): "
                                  "pass --overwrite or another --out")
    run_path.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _fingerprint(model, checkpoint: str, precision: str, device: torch.device) -> dict:
    from karl.config import to_dict
    cfg = json.dumps(to_dict(model.config), sort_keys=True)
    ckpt = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else checkpoint
    return {"checkpoint": ckpt, "model_config_sha1": hashlib.sha1(cfg.encode()).hexdigest(),
            "image_size": model.image_size, "precision": resolved_precision(precision, device, model)}


# ----------------------------------------------------------------------------- run

def _parse_epsilons(values: list[str], bins=LOSS_BINS) -> tuple[list[float], list[str]]:
    """--epsilon by karl's one rule (``karl.model.parse_epsilons``, as the app): (epsilons, notices)."""
    try:
        eps, notices = parse_epsilons(values, bins)
    except RequestError as err:
        raise ComplexityError(str(err)) from None
    if not eps:
        raise ComplexityError("--epsilon needs at least one value")
    return eps, notices


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="karl-complexity",
        description="Score images with KARL: KC-hat (tokens kept), continuous KC and the L1 error at "
                    "KC-hat, per image and epsilon, into a CSV. Reruns resume.",
        epilog="IMAGES: folders (recursive), globs (quote them: 'data/**/*.png'), image files, text "
               "files with one path a line, procedural[:N], corpus, imagefolder:PATH or a Hugging Face data set.")
    p.add_argument("images", nargs="+", help="folders, globs, image files, file lists, procedural[:N], corpus, "
                   "imagefolder:PATH, Hugging Face names")
    add_model_args(p)
    p.add_argument("--epsilon", nargs="+", default=["0.05"],
                   help="target mean absolute pixel errors, space- or comma-separated (default 0.05); "
                        ">= 0, above the largest loss bin (0.38) conditioned on that bin, with a warning")
    p.add_argument("--out", default="complexity.csv", help="CSV to write or resume (default complexity.csv)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="image-loading worker processes (default 0)")
    p.add_argument("--split", help="Hugging Face / imagefolder split (default: validation for a Hub set, "
                                   "train for an imagefolder, as karl-eval)")
    p.add_argument("--image-key", default="image", help="Hugging Face / imagefolder image column")
    p.add_argument("--overwrite", action="store_true", help="discard an existing CSV instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _load(args) -> tuple[Any, torch.device, str]:
    """(model, device, the model reference) for the shared model options (karl/model_args.py)."""
    model, _ = load_model_from_args(args, apply_precision=False)   # run() validates and sets it
    return model, model.device, model_spec(args)


def _rows(items: list[ImageItem], idx: list[int], scores, epsilons) -> list[dict]:
    return [{"path": items[i].id, "epsilon": _eps_key(eps), **scores[e][b]}
            for b, i in enumerate(idx) for e, eps in enumerate(epsilons)]


def run(args: argparse.Namespace) -> tuple[int, int, int]:
    """Score; returns (images scored now, images with scores in the CSV, images skipped)."""
    if args.batch_size < 1:
        raise ComplexityError("--batch-size must be >= 1")
    epsilons, _ = _parse_epsilons(args.epsilon)                          # refused before any work
    items = collect_images(args.images, args.split, args.image_key)
    if not items:
        raise ComplexityError("no images found in " + " ".join(args.images))
    model, device, checkpoint = _load(args)
    resolved_precision(args.precision, device)                         # validates before any work
    for notice in _parse_epsilons(args.epsilon, model.config.loss_bins)[1]:  # the model's own bins
        log.warning("%s", notice)
    set_precision(model, args.precision)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.overwrite and out.exists():
        out.unlink()
    _check_run(out.with_suffix(".run.json"), _fingerprint(model, checkpoint, args.precision, device),
               args.overwrite, out)
    try:
        results = results_file(out)
        done = results.done()
    except ResultsFileError as err:
        raise ComplexityError(str(err)) from None
    todo = [i for i, it in enumerate(items) if any((it.id, _eps_key(e)) not in done for e in epsilons)]
    log.info("%d images, %d epsilons; %d already in %s, %d to score on %s (%s)", len(items), len(epsilons),
             len(items) - len(todo), out, len(todo), device, args.precision)
    scored, skipped = _score_all(model, items, todo, epsilons, args, results)
    (out.parent / "skipped.txt").write_text("".join(f"{items[i].id}\t{why}\n" for i, why in skipped))
    with_rows = sum(all((it.id, _eps_key(e)) in done for e in epsilons) for it in items)
    return scored, with_rows, len(skipped)


def _score_all(model, items, todo, epsilons, args, results: ResultsCSV) -> tuple[int, list[tuple[int, str]]]:
    from tqdm import tqdm
    sub = torch.utils.data.Subset(_Images(items, model.image_size), todo)
    loader = torch.utils.data.DataLoader(sub, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=_collate)
    scored, skipped = 0, []
    with tqdm(total=len(todo), unit="img", disable=args.no_progress, desc="karl-complexity") as bar:
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            for i, _, why in batch:
                if why is not None:
                    log.warning("skipped %s: %s", items[i].id, why)
                    skipped.append((i, why))
            if good:
                idx = [i for i, _ in good]
                scores = score_batch(model, torch.stack([x for _, x in good]), epsilons)
                results.append(_rows(items, idx, scores, epsilons))  # rows already there are dropped
                scored += len(good)
            bar.update(len(batch))
    return scored, skipped


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from karl.checkpoint import CheckpointError
    from karl.evaluate import EvalError
    try:
        scored, with_rows, skipped = run(args)
    except (ComplexityError, EvalError, CheckpointError) as err:
        print(f"karl-complexity: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"scored {scored} images now; {with_rows} images have rows in {out}"
          + (f"; {skipped} skipped (listed in {out.parent / 'skipped.txt'})" if skipped else ""))
    if with_rows == 0:
        print("karl-complexity: no image could be scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
