"""The training loop for stages 0-2: DDP, AMP, EMA, resume, non-finite guard, JSON-lines logs.

One command runs on one CPU process or under ``torchrun`` on many GPUs:

    karl-train --config configs/cpu_stage1.yaml train.max_steps=2000
    torchrun --nproc_per_node 8 -m karl.cli train --config configs/small_vqgan_stage1.yaml

Stages: 0 trains our base autoencoder (pixel L1 + LPIPS); 1 distils the frozen base grid
into 1D tokens (EIC + LTC with token losses); 2 fine-tunes everything with pixel L1 +
LPIPS + hinge PatchGAN (EIC + LTC with pixel losses). The phases are in ``phases.py``,
``state.pt`` and the log's trimming on resume in ``state.py``.
"""

from __future__ import annotations

import itertools

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from karl.api import save_pretrained
from karl.checkpoint import load_state, load_state_dict_strict, read_release
from karl.config import ExperimentConfig, to_dict
from karl.losses import (PatchDiscriminator, PixelLoss, PixelReconLoss, TokenReconLoss, gan_weight,
                         hinge_d_loss, last_layer_weight)
from karl.model import KARL
from karl.train.ema import EMA
from karl.train.phases import karl_iteration, sample_budget
from karl.train.schedule import build_optimizer, lr_at, scaled_lr, set_lr
# ResumeError is raised here and caught by karl-train under this module's name.
from karl.train.state import (ResumeError, check_same_run, durable_save, read_state, set_aside_log,
                              trim_log)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept untouched."""


class DataSetError(ValueError):
    """The training data cannot make one batch (too few images, or none that decode)."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


class TrainStep(nn.Module):
    """Wraps one stage's forward so DistributedDataParallel sees a single ``forward``."""

    def __init__(self, model: KARL, stage: int, pixel_loss: PixelLoss | None, train_base: bool = True):
        super().__init__()
        self.model, self.stage, self.pixel_loss = model, stage, pixel_loss
        self.train_base = stage == 2 and train_base

    def forward(self, images: Tensor, budget: int, generator: torch.Generator, cfg,
                disc: nn.Module | None = None, gan_w: float = 0.0) -> tuple[Tensor, dict[str, float]]:
        m = self.model
        if self.stage == 0:
            recon = m.base.decode(m.base.encode(images).features)
            loss, parts = self.pixel_loss(recon, images)
            return loss, {"loss": loss.item(), **{f"ae/{k}": v for k, v in parts.items()}}
        if self.stage == 1:
            recon = TokenReconLoss(m.base)
        else:
            last = None
            if disc is not None and gan_w > 0:  # the adaptive GAN weight needs a trained last layer
                last = last_layer_weight(m.base) if self.train_base else m.decoder_head_weight()
            recon = PixelReconLoss(m.base, images, self.pixel_loss, disc, gan_w, last)
        loss, parts, _ = karl_iteration(m, images, recon, cfg, generator, budget=budget,
                                        base_trainable=self.train_base)
        return loss, parts


class Trainer:
    def __init__(self, cfg: ExperimentConfig, dist_info: DistInfo | None = None,
                 restart: bool = False, device: str | None = None, show_progress: bool = True,
                 fit_data=None):
        self.cfg, self.tc = cfg, cfg.train
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device or (f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"))
        self.out = Path(self.tc.out_dir)
        self.show_progress = show_progress and self.dist.is_main
        torch.manual_seed(self.tc.seed + self.dist.rank)
        self.model = KARL(cfg.model).to(self.device)
        self.step = 0
        self._setup_trainable()
        self.pixel_loss = self._pixel_loss() if self.tc.stage in (0, 2) else None
        self.disc = self.disc_opt = None
        if self.tc.stage == 2:
            self.disc = PatchDiscriminator(self.tc.disc_ndf, self.tc.disc_layers).to(self.device)
            self.disc_opt = build_optimizer(list(self.disc.named_parameters()), 0.0, self.tc)
        self.base_lr = scaled_lr(self.tc, self.dist.world_size)
        self.optimizer = build_optimizer([(n, p) for n, p in self.model.named_parameters() if p.requires_grad],
                                         self.base_lr, self.tc)
        use_amp = self.tc.amp and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if use_amp else (torch.bfloat16 if self.tc.amp_cpu else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        if self.device.type == "cpu" and self.amp_dtype is torch.bfloat16 and torch.backends.mkldnn.is_available():
            # bf16 convolutions (forward and backward) run only through oneDNN at speed; the
            # runtime probe may have chosen PyTorch's native kernels, which are right for fp32
            # on some CPUs but far slower in bf16 (TAEF2 at 64 px, batch 32: 5x).
            torch.backends.mkldnn.enabled = True
        state_path = self.out / "state.pt"
        resume = state_path.exists() and not restart
        if not resume and self.dist.is_main:  # a fresh start: no lines of a dead run's log
            previous = set_aside_log(self.out / "log.jsonl")
            if previous is not None:
                self.log({"event": "new_log", "previous_log": previous.name})
        if not resume and self.tc.init_from:
            self._init_from(self.tc.init_from)
        if not resume and self.tc.base_from:
            self._base_from(self.tc.base_from)
        code = self.model.linear_code
        if not resume and code is not None and not bool(code.fitted):
            self._fit_linear_code(fit_data)
        self.ema = EMA(self.model, self.tc.ema_decay)  # built after loading: it averages from those weights
        if resume:
            self._resume(state_path)
        self.step_module = TrainStep(self.model, self.tc.stage, self.pixel_loss, self.tc.stage2_train_base)
        self.ddp = DDP(self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if self.dist.world_size > 1 else self.step_module
        self.ddp_disc = (DDP(self.disc, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                         if self.disc is not None and self.dist.world_size > 1 else self.disc)

    # ------------------------------------------------------------------ setup
    def _setup_trainable(self) -> None:
        stage = self.tc.stage
        if stage not in (0, 1, 2):
            raise ValueError(f"train.stage must be 0, 1 or 2, got {stage}")
        if stage == 0 and self.cfg.model.base.kind != "conv_ae":
            raise ValueError("stage 0 trains our conv autoencoder; the VQGAN/VAE come pretrained")
        for name, p in self.model.named_parameters():
            in_base = name.startswith("base.")
            p.requires_grad_(in_base if stage == 0 else (not in_base or self.tc.stage2_train_base
                                                         if stage == 2 else not in_base))

    def _pixel_loss(self) -> PixelLoss:
        module = None
        if self.tc.lpips_weight > 0:
            from karl.metrics import get_lpips_module
            module = get_lpips_module(self.tc.lpips_net, self.device)
        return PixelLoss(module, self.tc.lpips_weight)

    @staticmethod
    def _read_weights(p: Path, device: torch.device) -> dict[str, Tensor]:
        if p.is_file():
            return load_state(p, device)["ema"]
        return read_release(p)[1]

    def _init_from(self, path: str) -> None:
        p = Path(path)
        load_state_dict_strict(self.model, self._read_weights(p, self.device))
        self.log({"event": "init_from", "path": str(p)})

    def _base_from(self, path: str) -> None:
        """Take only the base tokenizer (``base.*``) from a stage-0 run; KARL keeps its fresh init."""
        p = Path(path)
        state = {k[len("base."):]: v for k, v in self._read_weights(p, self.device).items()
                 if k.startswith("base.")}
        if not state:
            raise ValueError(f"{p} holds no base tokenizer weights (no 'base.*' keys)")
        load_state_dict_strict(self.model.base, state)
        self.log({"event": "base_from", "path": str(p)})

    def _fit_linear_code(self, dataset, n: int = 4096) -> None:
        """Fit the model's linear code (PCA of base latents) on ``n`` training images, once per run.

        Every process draws the same images (the dataset's own order, not the sharded stream),
        so the ranks of a distributed run fit the same code.
        """
        if dataset is None:
            raise ValueError("model.linear_code is on: the trainer needs training images (fit_data=) to fit it")
        images = take_images(dataset, n)
        with torch.no_grad():
            latents = torch.cat([self.model.base_encode(images[i:i + 256].to(self.device)).features.float()
                                 for i in range(0, len(images), 256)])
        stats = self.model.linear_code.fit(latents)
        self.log({"event": "linear_code_fit", **stats})
        if self.show_progress:
            print(f"linear code: PCA of {stats['samples']} training latents, {stats['components']} components, "
                  f"{100 * stats['explained_variance']:.1f}% of the variance", flush=True)

    def _resume(self, path: Path) -> None:
        state = read_state(path, self.device)
        check_same_run(state, self.cfg, path)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.disc is not None and "disc" in state:
                self.disc.load_state_dict(state["disc"])
                self.disc_opt.load_state_dict(state["disc_optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:  # same config, different weights layout
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ResumeError(f"{path} does not match this run's model ({first}). Use another "
                              "train.out_dir, or --restart to start over.") from None
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"].cpu())
        dropped = trim_log(self.out / "log.jsonl", self.step) if self.dist.is_main else 0
        self.log({"event": "resume", "step": self.step, "dropped_log_records": dropped})

    # ------------------------------------------------------------------ persistence
    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        state: dict[str, Any] = {
            "step": self.step, "stage": self.tc.stage, "config": to_dict(self.cfg),
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        durable_save(state, self.out / "state.pt")

    def save_release(self) -> Path | None:
        """Write the EMA weights as a release dir (``out_dir/release``)."""
        if not self.dist.is_main:
            return None
        ema_model = KARL(self.cfg.model)
        ema_model.load_state_dict(self.ema.weights_for(self.model))
        extra = {"training": {"stage": self.tc.stage, "step": self.step, "preset": self.cfg.preset,
                              "experiment": to_dict(self.cfg)}}
        return save_pretrained(ema_model, self.out / "release", extra)

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")

    # ------------------------------------------------------------------ steps
    def train_step(self, images: Tensor) -> dict[str, float]:
        """One optimiser step (EIC + LTC for stages 1-2): autocast, backward, clip, step, EMA."""
        tc, step = self.tc, self.step
        lr = lr_at(step, self.base_lr, tc)
        set_lr(self.optimizer, lr)
        # The budget is drawn from a step-seeded generator so every rank uses the same T.
        budget_gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        budget = sample_budget(tc, budget_gen)
        w = gan_weight(tc, step) if self.disc is not None else 0.0
        self.model.train()
        if tc.stage == 1 or not self.step_module.train_base:
            self.model.base.eval()
        if self.disc is not None:
            self.disc.requires_grad_(False)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss, parts = self.ddp(images, budget, budget_gen, tc, self.disc, w)
        self._check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.disc is not None and w > 0:
            parts.update(self._disc_step(images, budget, budget_gen, lr))
        self.ema.update(self.model, step)
        self.step += 1
        parts["lr"] = lr
        return parts

    def _disc_step(self, images: Tensor, budget: int, gen: torch.Generator, lr: float) -> dict[str, float]:
        self.disc.requires_grad_(True)
        set_lr(self.disc_opt, lr * self.tc.disc_lr_ratio)
        with torch.no_grad():
            enc = self.model.encode(images, epsilon=0.0, budget=min(budget, self.model.max_tokens))
            fake = self.model.decode(enc)
        d_loss = hinge_d_loss(self.ddp_disc(images), self.ddp_disc(fake.detach()))
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.tc.grad_clip)
        self.disc_opt.step()
        return {"d_loss": d_loss.item()}

    def _check_finite(self, loss: Tensor) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0, device=self.device)
        if self.dist.world_size > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            self.log({"event": "nonfinite_loss", "step": self.step, "loss": str(float(loss.detach()))})
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) at step {self.step}: stopped without saving; "
                f"the last good state in {self.out / 'state.pt'} is untouched. Lower train.lr or "
                "disable AMP (train.amp=false) and resume.")

    # ------------------------------------------------------------------ loop
    def run(self, data: Iterator[Tensor]) -> dict[str, float]:
        tc = self.tc
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
            self.log({"event": "start", "step": self.step, "stage": tc.stage,
                      "world_size": self.dist.world_size, "device": str(self.device),
                      "command": " ".join(shlex.quote(a) for a in sys.argv)})
        start, window_t, window_n = time.time(), time.time(), 0
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not self.show_progress,
                   desc=f"stage {tc.stage}", dynamic_ncols=True)
        last: dict[str, float] = {}
        restore = _sigterm_as_interrupt()
        try:
            while self.step < tc.max_steps:
                images = next(data).to(self.device, non_blocking=True)
                last = self.train_step(images)
                window_n += images.shape[0] * self.dist.world_size
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    now = time.time()
                    last["img_per_s"] = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    self.log({"step": self.step, "stage": tc.stage, **last})
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.1e}")
                if self.step % tc.ckpt_every == 0:
                    self.save_state()
                if tc.max_minutes is not None and self._out_of_time(start):
                    self.log({"event": "time_limit", "step": self.step})
                    break
        except KeyboardInterrupt:
            self.log({"event": "interrupted", "step": self.step})
            self.save_state()
            raise
        finally:
            bar.close()
            restore()
        self.save_state()
        self.save_release()
        self.log({"event": "end", "step": self.step, "minutes": (time.time() - start) / 60})
        return last

    def _out_of_time(self, start: float) -> bool:
        flag = torch.tensor(float(time.time() - start > 60 * self.tc.max_minutes), device=self.device)
        if self.dist.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _sigterm_as_interrupt():
    """Treat SIGTERM (``kill``, job schedulers) like Ctrl-C so the run saves its state.

    Returns a function restoring the previous handler. No-op outside the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def infinite_batches(dataset, batch_size: int, dist_info: DistInfo, seed: int = 0,
                     num_workers: int = 0, start_batch: int = 0) -> Iterator[Tensor]:
    """Endless batches [B, 3, S, S], starting after ``start_batch`` batches (a resumed run
    continues its data stream instead of restarting it).

    Iterable sets with ``resume_at`` (the procedural and corpus streams) jump straight to
    batch ``start_batch``. Map-style sets are sharded per rank and reshuffled per epoch
    from (seed, epoch), so the position is (epoch, offset) in that order; sets with
    ``accepts_draw_keys`` get ``(index, epoch, position)`` keys whose random crop depends
    only on the key, so the resumed batches equal the uninterrupted ones.
    """
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

    def collate(items):
        return torch.stack([it if isinstance(it, Tensor) else it[0] for it in items])

    if isinstance(dataset, IterableDataset):
        if hasattr(dataset, "resume_at"):
            dataset.resume_at(start_batch, batch_size)
        elif start_batch:
            import warnings
            warnings.warn(f"{type(dataset).__name__} cannot skip ahead: the resumed run restarts its "
                          "data stream", stacklevel=2)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            drop_last=True, collate_fn=collate)
        while True:
            yield from loader
    if len(dataset) < batch_size * dist_info.world_size:
        raise DataSetError(_too_small(dataset, batch_size, dist_info.world_size))

    def order(epoch: int) -> list[int]:
        if dist_info.world_size > 1:
            sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed + epoch))
        return list(sampler)

    per_epoch = len(order(0)) // batch_size  # the same every epoch (drop_last)
    epoch, skip = divmod(start_batch, per_epoch)
    keyed = getattr(dataset, "accepts_draw_keys", False)
    while True:
        idx = order(epoch)
        keys = [(i, epoch, pos) for pos, i in enumerate(idx)] if keyed else idx
        loader = DataLoader(dataset, batch_size=batch_size, sampler=keys[skip * batch_size:],
                            num_workers=num_workers, drop_last=True, collate_fn=collate)
        yield from loader
        epoch, skip = epoch + 1, 0


def take_images(dataset, n: int) -> Tensor:
    """``n`` images [n, 3, S, S] of a dataset: evenly spread over a sized one (a folder sorted by
    class gives every class), the first ``n`` of a stream; fewer if the dataset is smaller."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().unique()
        items = [dataset[int(i)] for i in idx]
    else:
        items = list(itertools.islice(iter(dataset), n))
    if not items:
        raise ValueError("no training images to fit the linear code on")
    return torch.stack([x[0] if isinstance(x, (tuple, list)) else x for x in items])


def _too_small(dataset, batch_size: int, world_size: int) -> str:
    """The error for a set smaller than one global batch; says so when its files do not decode."""
    n = len(dataset)
    check = getattr(dataset, "undecodable", None)
    bad = check() if check is not None else []
    where = f" under {dataset.root}" if hasattr(dataset, "root") else ""
    if bad:
        shown = "; ".join(f"{f.name}: {why}" for f, why in bad[:3]) + (" ..." if len(bad) > 3 else "")
        if len(bad) == n:
            return f"none of the {n} image files{where} can be decoded ({shown})"
        return (f"only {n - len(bad)} of the {n} image files{where} decode ({shown}); one global batch "
                f"needs {batch_size} x {world_size}")
    return f"data set has {n} images, fewer than one global batch ({batch_size} x {world_size})"


def train(cfg: ExperimentConfig, restart: bool = False, device: str | None = None,
          show_progress: bool = True) -> Trainer:
    """Build data and trainer from a config and run to ``train.max_steps`` (or the time limit)."""
    from karl.data.datasets import build_dataset

    info = init_distributed()
    dataset = build_dataset(cfg.data, cfg.model.image_size, split="train")
    trainer = Trainer(cfg, info, restart=restart, device=device, show_progress=show_progress, fit_data=dataset)
    data = infinite_batches(dataset, cfg.train.batch_size, info, seed=cfg.train.seed,
                            num_workers=cfg.train.num_workers, start_batch=trainer.step)
    trainer.run(data)
    return trainer
