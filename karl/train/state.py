"""Resumable training state: ``state.pt`` and ``log.jsonl`` in a run's ``out_dir``.

``state.pt`` holds plain types only (``torch.load(weights_only=True)`` works) and is
written durably (tmp file, fsync, rename, fsync of the folder). On resume it is read with
a one-line :class:`ResumeError` for an empty, truncated or foreign file, checked against
the run's stage and model config, and ``log.jsonl`` is trimmed to the saved step so each
step is logged once. A fresh start (no ``state.pt``, or ``--restart``) begins a new
``log.jsonl``; an old one (a run killed before its first save) is kept as ``log.jsonl.N``. The :class:`~karl.train.loop.Trainer` decides what goes into the state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from karl.checkpoint import CheckpointError, load_state
from karl.config import ExperimentConfig, to_dict

__all__ = ["ResumeError", "durable_write", "durable_save", "read_state", "check_same_run", "trim_log",
           "set_aside_log"]


class ResumeError(RuntimeError):
    """``state.pt`` in out_dir cannot be resumed by this run; the message says why and what to do."""


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: tmp file, fsync, rename, fsync of the folder."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def durable_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically and durably: the data reaches the disk before the rename, so
    a power loss right after a save cannot leave an empty or partial ``state.pt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_state(path: Path, device: torch.device) -> dict[str, Any]:
    """``state.pt`` -> dict, or a ResumeError saying what is wrong with the file."""
    size = path.stat().st_size
    restart = "Pass --restart to start over (this replaces it), or use another train.out_dir."
    if size == 0:
        raise ResumeError(f"{path} is empty (0 bytes): the save that wrote it did not finish. {restart}")
    try:
        state = load_state(path, device)
    except CheckpointError:
        raise ResumeError(f"{path} cannot be read ({size:,} bytes): it is truncated or corrupt. "
                          f"{restart}") from None
    if not isinstance(state, dict) or not {"step", "model", "ema", "optimizer"} <= set(state):
        raise ResumeError(f"{path} is not a karl-train state (no step, model, ema and optimizer). {restart}")
    return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_run(state: dict[str, Any], cfg: ExperimentConfig, path: Path) -> None:
    """Refuse a state written by another stage or another model, in one line."""
    advice = "Use another train.out_dir, or --restart to start over."
    if state.get("stage") != cfg.train.stage:
        raise ResumeError(f"{path} holds a stage-{state.get('stage')} run; this is stage "
                          f"{cfg.train.stage}. {advice}")
    saved = (state.get("config") or {}).get("model")
    if not isinstance(saved, dict):
        return  # an older state without its config: the weights check below still applies
    ours = _flatten(to_dict(cfg)["model"])
    theirs = _flatten(saved)
    diff = [k for k in ours if k in theirs and ours[k] != theirs[k]]
    if diff:
        shown = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        name = (state.get("config") or {}).get("preset")
        raise ResumeError(f"{path} was written by another model (preset {name!r}; {shown}{more}); "
                          f"this run uses preset {cfg.preset!r}. {advice}")


def trim_log(log: Path, step: int) -> int:
    """Drop the step records after ``step`` (written after the last save, about to be
    repeated by the resumed run) so ``log.jsonl`` holds each step once. Events are kept.
    Returns the number of dropped lines."""
    if not log.is_file():
        return 0
    kept, dropped = [], 0
    for line in log.read_text().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill: drop it too
            dropped += 1
            continue
        if "event" not in rec and isinstance(rec.get("step"), int) and rec["step"] > step:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        durable_write(log, "".join(kept).encode())
    return dropped


def set_aside_log(log: Path) -> Path | None:
    """Rename an existing ``log`` to ``log.N`` (N: one more than the highest kept) before a
    fresh start, so the new run's log holds only its own steps and no line is lost.
    Returns the new name, or None when there was no log."""
    if not log.is_file():
        return None
    taken = [int(p.name[len(log.name) + 1:]) for p in log.parent.glob(f"{log.name}.*")
             if p.name[len(log.name) + 1:].isdigit()]
    target = log.with_name(f"{log.name}.{max(taken, default=0) + 1}")
    os.replace(log, target)
    fsync_dir(log.parent)
    return target
