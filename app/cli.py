"""KARL studio's command line: ``karl-app`` (installed) or ``python app.py`` (a checkout), with
``[--checkpoint MODEL] [--trust-official] [--host H] [--port P] ...``.

Loads the model once (the bundled ``assets/checkpoints/karl_cpu_tae`` by default; a random
``cpu`` model with a warning banner if it is missing), builds the Gradio app and serves it
locally. No network access is needed. See docs/APP.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Before anything imports gradio or huggingface_hub (both read these once, at import).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from karl.model_args import add_model_args, resolve_device  # noqa: E402


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def server_paths_allowed(host: str, share: bool, flag: bool) -> bool:
    """Whether the app may read server folders a visitor names: only when nobody else can
    reach it (a loopback host, no public link), or when the flag says so."""
    return flag or (host in LOOPBACK_HOSTS and not share)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="KARL studio (Gradio app)",
                                epilog="A Hub model (hf:org/name) downloads only with HF_HUB_OFFLINE=0.")
    add_model_args(p)   # the bundled model by default; a random cpu model with a banner if it is missing
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--allow-server-paths", action="store_true",
                   help="let the human panel read folders on this machine even when served beyond "
                        "it (other host or --share); on by default only for 127.0.0.1 / localhost")
    p.add_argument("--queue-size", type=_positive_int, default=None,
                   help="requests that may wait while one runs; more are refused with 'queue full' "
                        "(default 64; a bound on memory, see docs/APP.md)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (needs network)")
    p.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--demo-model", choices=["tiny-monotone"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def warmup(model) -> None:
    """Build LPIPS and run one tiny request so the first user does not wait for it."""
    import torch

    from app import inference as inf
    try:
        r = inf.tokenize(model, torch.rand(3, model.image_size, model.image_size).numpy().transpose(1, 2, 0))
        r.lpips()
        inf.clear_caches()
    except Exception as err:  # warm-up is an optimisation: never fatal
        logging.getLogger("karl.app").warning("warm-up failed: %s", err)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from app.models import ModelLoadError, load_app_model
    spec = f"random:{args.preset}" if args.preset else args.checkpoint
    try:
        loaded = load_app_model(spec, args.trust_official, args.demo_model, str(resolve_device(args.device)))
    except ModelLoadError as err:
        print(f"{os.path.basename(sys.argv[0]) or 'karl-app'}: {err}", file=sys.stderr)
        return 2
    if args.precision != "fp32":
        from karl.precision import describe_precision, set_precision
        set_precision(loaded.model, args.precision)
        loaded.source += f" ({describe_precision(loaded.model)})"   # auto: what it chose and why
    if loaded.warning:
        bar = "!" * 78
        print(f"{bar}\n{loaded.warning.replace('**', '').replace('*', '')}\n{bar}", file=sys.stderr)
    if not args.no_warmup:
        warmup(loaded.model)
    from app import build_demo, launch_demo
    from app.ui import QUEUE_MAX_SIZE
    demo = build_demo(loaded.model, banner=loaded.warning, loaded_from=loaded.source,
                      queue_size=args.queue_size or QUEUE_MAX_SIZE,
                      server_paths=server_paths_allowed(args.host, args.share, args.allow_server_paths))
    launch_demo(demo, host=args.host, port=args.port, share=args.share)
    return 0
