"""How the app answers many requests at once: ``python scripts/app_concurrency.py [--requests 50]``.

Starts ``python app.py`` on a free loopback port (127.0.0.1 only; nothing else is
contacted), submits ``--requests`` ``/complexity`` calls at the same moment through
``gradio_client`` (distinct images, so no cached answer), waits for all of them, and prints
one JSON line: answered, refused with "queue full", other errors, wall time, p50 / max
latency, and the server's resident memory before and at its peak (VmHWM). Bounded: one
app process, at most ``--requests`` client threads, a time limit per run.

The figures in docs/APP.md (Concurrency) come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    kb = lambda k: float(fields[k].split()[0]) / 1024  # noqa: E731
    return kb("VmRSS"), kb("VmHWM")


def _wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app did not answer at {url} within {timeout:.0f} s")


def _images(n: int, folder: Path, size: int = 64) -> list[Path]:
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def measure(n: int, queue_size: int | None, demo: bool, timeout: float) -> dict:
    from gradio_client import Client, handle_file

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp(prefix="karl_conc_"))
    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--queue-size", str(queue_size)] if queue_size else []
    cmd += ["--demo-model", "tiny-monotone"] if demo else []
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_up(url, proc, 600)
        client = Client(url, verbose=False, max_workers=n)  # every request in flight at once
        paths = _images(n, tmp)
        rss_before = _rss_mb(proc.pid)[0]
        t0 = time.perf_counter()
        jobs = [(time.perf_counter(), client.submit(handle_file(str(p)), 0.05, api_name="/complexity"))
                for p in paths]
        ok, full, other, lat = 0, 0, [], []
        for start, job in jobs:
            try:
                job.result(timeout=timeout)
                ok += 1
                lat.append(time.perf_counter() - start)
            except Exception as err:  # gradio_client raises the server's refusal
                if "queue is full" in str(err).lower():
                    full += 1
                else:
                    other.append(f"{type(err).__name__}: {str(err)[:120]}")
        wall = time.perf_counter() - t0
        rss_now, rss_peak = _rss_mb(proc.pid)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {"requests": n, "queue_size": queue_size or "default", "model": "tiny-monotone" if demo else
            "bundled", "answered": ok, "queue_full": full, "other_errors": other[:5],
            "wall_s": round(wall, 1), "latency_p50_s": round(float(np.median(lat)), 2) if lat else None,
            "latency_max_s": round(max(lat), 2) if lat else None, "rss_before_mb": round(rss_before),
            "rss_after_mb": round(rss_now), "rss_peak_mb": round(rss_peak)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--queue-size", type=int, default=None, help="passed to app.py (default: its own)")
    ap.add_argument("--demo-model", action="store_true", help="the tiny test model instead of the bundled one")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each answer")
    args = ap.parse_args(argv)
    assert 1 <= args.requests <= 500, "--requests must be between 1 and 500"
    print(json.dumps(measure(args.requests, args.queue_size, args.demo_model, args.timeout)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
