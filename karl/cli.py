"""Command-line entry points: ``karl-train`` (and ``python -m karl.cli train``)."""

from __future__ import annotations

import argparse
import sys

from karl.config import PRESETS, ConfigError, TrainConfig, load_config


def _random_base_warning(cfg, resuming: bool) -> str | None:
    """Stage 1 on a base that stage 0 trains (our conv autoencoder), with no trained base,
    distils a *random* autoencoder."""
    from karl.base_tokenizers import TOKENIZERS
    tc = cfg.train
    if tc.stage != 1 or resuming or tc.base_from or tc.init_from:
        return None
    if not TOKENIZERS[cfg.model.base.kind].trained_in_stage0 or cfg.model.base.checkpoint:
        return None
    return ("karl-train: warning: stage 1 without train.base_from distils the grid of a randomly "
            "initialised conv autoencoder, so the tokens learn to reproduce noise features. Train "
            "stage 0 first and pass train.base_from=<stage-0 out_dir>/release.")


def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="karl-train",
        description="Train KARL (stage 0: base autoencoder, 1: latent distillation, 2: pixel fine-tune).",
        epilog="Overrides: key=value pairs such as stage=1 train.lr=2e-4 data.path=/images. "
               f"Output goes to train.out_dir (default {TrainConfig.out_dir}); re-running the same "
               "command resumes from OUT_DIR/state.pt.")
    p.add_argument("--config", help="experiment YAML (configs/*.yaml)")
    p.add_argument("--preset", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"preset when no YAML is given: {', '.join(PRESETS)} (default: small)")
    p.add_argument("--restart", action="store_true", help="ignore an existing state.pt in out_dir")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, preset_name=args.preset)
    except (ConfigError, FileNotFoundError) as e:
        print(f"karl-train: {e}", file=sys.stderr)
        return 2
    from pathlib import Path

    from karl.runtime import tune_cpu_backends
    from karl.train.loop import DataSetError, NonFiniteLossError, ResumeError, train
    warning = _random_base_warning(cfg, (Path(cfg.train.out_dir) / "state.pt").exists() and not args.restart)
    if warning:
        print(warning, file=sys.stderr)
    tune_cpu_backends(verbose=True)
    try:
        trainer = train(cfg, restart=args.restart, device=args.device)
    except NonFiniteLossError as e:
        print(f"karl-train: {e}", file=sys.stderr)
        return 3
    except (ResumeError, DataSetError, FileNotFoundError) as e:  # the message says what to do
        print(f"karl-train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("karl-train: interrupted; state saved, re-run the same command to resume", file=sys.stderr)
        return 130
    if trainer.dist.is_main:
        print(f"done: step {trainer.step}; release in {trainer.out / 'release'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m karl.cli {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
