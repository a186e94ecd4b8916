"""One rank's share of the images: batches, every task per batch, rows appended as they come."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor

from karl.model import KARL
from karl.search import MethodResult, subset_grid
from karl.eval.regimes import Plan, Task, _sync, fmt_eps, run_task, timed
from karl.eval.results import _all_rows, _row_key, results_file
from karl.eval.rfid import RfidCollector
from karl.eval.sources import ImageSource


@dataclass
class Context:
    """Everything one rank needs to evaluate its share: no parsed-argument object, so the runner
    can be driven from Python as well as from the CLI."""

    model: KARL
    source: ImageSource
    plan: Plan
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    batch_size: int = 16
    save_examples: int = 4      # the first N crops and their reconstructions go to out/examples
    with_rfid: bool = False     # collect Inception features for rFID
    progress: bool = True       # a progress bar on rank 0

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
                if idxs[j] < ctx.save_examples:
                    _save_example(ctx.out, idxs[j], f"{task.label}_{int(res.tokens[n])}tok", res.recon[n])
    for j, i in enumerate(idxs):
        if i < ctx.save_examples:
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
    part = results_file(ctx.out / ("per_image.csv" if ctx.world == 1 else f"parts/per_image.rank{ctx.rank}.csv"))
    rfid = RfidCollector(ctx.out, ctx.rank, ctx.device) if ctx.with_rfid else None
    skipped: list[str] = []
    bs = ctx.batch_size
    with tqdm(total=len(todo), unit="img", desc=f"karl-eval rank {ctx.rank}/{ctx.world}",
              disable=not ctx.is_main or not ctx.progress, file=sys.stderr) as bar:
        for start in range(0, len(todo), bs):
            idxs, imgs = _load_batch(ctx, todo[start:start + bs], skipped)
            if imgs:
                x = torch.stack(imgs).to(ctx.device)
                if start == 0:
                    warm_up(ctx, tasks, x[:1])
                part.append(evaluate_batch(ctx, tasks, idxs, x, done, rfid))
            bar.update(min(bs, len(todo) - start))
    if skipped:
        with open(ctx.out / f"skipped.rank{ctx.rank}.txt", "a") as fh:
            fh.write("\n".join(skipped) + "\n")
    if rfid is not None:
        rfid.save()
    return rfid
