"""Latency of the app's Tokenize tab: a new upload vs an epsilon change, p50 / p95.

    python benchmarks/app_latency.py [--checkpoint DIR] [--n 50] [--mode all|both|http|browser|handler]
                                     [--json results/app_latency.json]

- *new upload*: a never-seen 256x256 image at epsilon 0.05 (load, preprocess, base encode,
  one batched encoder pass over the 19 loss bins, decode, metrics incl. LPIPS, figures);
- *epsilon change*: the same image at another loss bin (decode, metrics, figures: the
  base encoding and the encoder pass are cached).

``handler`` times ``app.ui.tokenize_view`` called in-process (server compute only);
``http`` times ``/tokenize`` through ``gradio_client`` against the launched app (adds the
upload, the queue, serialisation of 3 PNGs and 2 plotly figures, and the client's download
of the output images; the client re-uploads the file for the epsilon change too, which a
browser does not); ``browser`` makes a browser's requests with plain HTTP: the image is
uploaded once (``/gradio_api/upload``) when it is new, an epsilon change sends only its
server reference, and every output image is fetched, as the page does to show it (the page
itself draws nothing here: rendering is timed by tests/browser/e2e.mjs). Each image gets
one new upload and two epsilon changes; the first 3 images of each mode are warm-up. Also
reports the process RSS after the warm-up and at the end, to show memory stays flat.

Model: ``--checkpoint``, else the bundled ``assets/checkpoints/karl_cpu_tae``, else the random
``cpu`` preset (same architecture and cost as the bundled one; its outputs are meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402

EPS_NEW, EPS_CHANGES = 0.05, (0.02, 0.2)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def make_images(n: int, out: Path) -> list[Path]:
    """n distinct 256x256 PNGs: procedural images of every family (deterministic)."""
    from karl.data.images import to_pil
    from karl.data.procedural import generate

    paths = []
    for i in range(n):
        p = out / f"img_{i:03d}.png"
        to_pil(generate(1000 + i, size=256).image).save(p)
        paths.append(p)
    return paths


def summarise(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def run(call, paths: list[Path], budget: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    new, change = [], []
    rss_warm = rss_half = rss_mb()
    for i, p in enumerate(paths):
        if i == warmup:
            rss_warm = rss_mb()
        if i == (len(paths) + warmup) // 2:
            rss_half = rss_mb()
        t = time.perf_counter()
        call(p, EPS_NEW, budget)
        dt_new = time.perf_counter() - t
        dts = []
        for eps in EPS_CHANGES:
            t = time.perf_counter()
            call(p, eps, budget)
            dts.append(time.perf_counter() - t)
        if i >= warmup:
            new.append(dt_new)
            change.extend(dts)
    return {"new_upload": summarise(new), "epsilon_change": summarise(change),
            "rss_mb": {"after_warmup": round(rss_warm, 1), "half_way": round(rss_half, 1),
                       "end": round(rss_mb(), 1)}}


class BrowserLikeClient:
    """``/tokenize`` as the page calls it: upload a new image once, then refer to it by its
    server path; fetch the output images. ``gradio_api/call`` is Gradio's plain-HTTP API
    (POST the inputs, then read the answer's event stream)."""

    def __init__(self, url: str):
        import httpx

        self.url, self.http, self.uploaded = url, httpx.Client(timeout=120), {}

    def _ref(self, path: Path) -> dict:
        if path not in self.uploaded:  # a new image: the page uploads it once
            with open(path, "rb") as f:
                r = self.http.post(f"{self.url}gradio_api/upload", files={"files": (path.name, f, "image/png")})
            r.raise_for_status()
            self.uploaded[path] = r.json()[0]
        return {"path": self.uploaded[path], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def __call__(self, path: Path, epsilon: float, budget: int) -> list:
        r = self.http.post(f"{self.url}gradio_api/call/tokenize",
                           json={"data": [self._ref(path), epsilon, budget]})
        r.raise_for_status()
        event, data = r.json()["event_id"], None
        with self.http.stream("GET", f"{self.url}gradio_api/call/tokenize/{event}") as s:
            kind = None
            for line in s.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    data = json.loads(line[5:])
                    break
        if kind != "complete":
            raise RuntimeError(f"/tokenize answered {kind}: {data}")
        for url in _file_urls(data):  # the page shows every output image
            self.http.get(url).raise_for_status()
        return data

    def close(self) -> None:
        self.http.close()


def _file_urls(value) -> list[str]:
    if isinstance(value, dict):
        if value.get("url") and value.get("meta", {}).get("_type") == "gradio.FileData":
            return [value["url"]]
        return [u for v in value.values() for u in _file_urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in _file_urls(v)]
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=50, help="new uploads per mode (epsilon changes: 2n)")
    ap.add_argument("--mode", choices=("all", "both", "http", "browser", "handler"), default="all",
                    help="all: handler, http and browser; both: handler and http")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args(argv)

    import torch

    from app import inference as inf
    from app import ui

    from app.models import load_app_model

    loaded = load_app_model(args.checkpoint)
    model, budget = loaded.model, int(loaded.model.max_tokens)
    c = model.config
    desc = (f"{c.image_size}x{c.image_size} input, width {c.width}, {c.encoder_layers}+{c.decoder_layers} "
            f"layers, {budget} tokens")
    print(f"model: {loaded.source}{' (RANDOM WEIGHTS)' if loaded.warning else ''}: {desc}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    report: dict = {"model": loaded.source, "config": desc, "random_weights": bool(loaded.warning),
                    "budget": budget,
                    "image_size": model.image_size, "threads": torch.get_num_threads(),
                    "requests_per_mode": {"new_upload": args.n, "epsilon_change": 2 * args.n}}
    tmp = Path(tempfile.mkdtemp(prefix="karl_bench_"))
    modes = {"all": ("handler", "http", "browser"), "both": ("handler", "http")}.get(args.mode, (args.mode,))
    rss0 = rss_mb()
    for k, mode in enumerate(modes):
        inf.clear_caches()
        (tmp / mode).mkdir()
        paths = make_images(args.n + 3, tmp / mode)
        if mode == "handler":
            res = run(lambda p, e, b: ui.tokenize_view(model, str(p), e, b), paths, budget)
        else:
            from gradio_client import Client, handle_file
            demo = ui.build_demo(model, banner=loaded.warning, loaded_from=loaded.source)
            _, url, _ = ui.launch_demo(demo, prevent_thread_lock=True, quiet=True)
            client = Client(url, verbose=False) if mode == "http" else BrowserLikeClient(url)
            try:
                if mode == "http":
                    res = run(lambda p, e, b: client.predict(handle_file(str(p)), e, b, api_name="/tokenize"),
                              paths, budget)
                else:
                    res = run(client, paths, budget)
            finally:
                client.close()
                demo.close()
        report[mode] = res
        for what in ("new_upload", "epsilon_change"):
            s = res[what]
            print(f"{mode:8s} {what:15s} n={s['n']:4d}  p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms"
                  f"  mean {s['mean_ms']:8.1f} ms", flush=True)
        m = res["rss_mb"]
        print(f"{mode:8s} RSS after warm-up {m['after_warmup']:.0f} MB, half-way {m['half_way']:.0f} MB, "
              f"after {3 * len(paths)} requests {m['end']:.0f} MB", flush=True)
    report["rss_mb"] = {"start": round(rss0, 1), "end": round(rss_mb(), 1)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
