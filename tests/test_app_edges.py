"""The app's rough edges a new user met (issue 25): damaged checkpoints, the Tokens tab's
inputs and plots, the human panel, server paths, refused files, the queue size.

Handlers are called directly; one launched app (module fixture) covers what only the
server does (FileData outside the allowed folders, the queue). tests/test_app.py holds the
rest of the app's tests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from app import models as M

ROOT = Path(__file__).resolve().parents[1]


def _app_main():
    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- damaged models

@pytest.mark.parametrize("trust", [False, True])
def test_app_diagnoses_a_pth_that_is_not_a_checkpoint(tmp_path, capsys, trust):
    """Random bytes or a truncated file: the converter's diagnosis, never "pass --trust-official"."""
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                  dtype=torch.uint8).numpy().tobytes())
    cut = tmp_path / "truncated.pth"
    torch.save({"ema": {"x": torch.zeros(128, 128)}, "epoch": 1}, cut)
    cut.write_bytes(cut.read_bytes()[:3000])
    mod = _app_main()
    for path, expected in ((rnd, "not a PyTorch checkpoint"), (cut, "truncated or corrupt")):
        argv = ["--checkpoint", str(path), "--no-warmup"] + ["--trust-official"] * trust
        assert mod.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err and "trust" not in err.split(str(path))[-1], err
        assert err.count(str(path)) == 1, err       # the path once, not "X: X: ..."


def test_app_refuses_a_release_with_a_nan_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    from karl import build_model, save_pretrained
    rel = save_pretrained(build_model("tiny", seed=0), tmp_path / "rel")
    state = load_file(str(rel / "model.safetensors"))
    name = sorted(state)[5]
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, str(rel / "model.safetensors"))
    with pytest.raises(M.ModelLoadError) as err:
        M.load_app_model(rel)
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors" in msg and name in msg and "non-finite" in msg


# ----------------------------------------------------------------------------- smaller things

@pytest.fixture(scope="module")
def model():
    from app.demo_model import build_monotone_model
    return build_monotone_model("tiny").eval()


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (PIL opens it lazily: no pixels are allocated)."""
    import struct
    import zlib
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_both_image_bomb_guards_word_the_refusal_alike(tmp_path):
    """Ours (> 100 MP) and PIL's (> 179 MP, raised at open) gave two wordings."""
    from app import inference as inf
    msgs = []
    for w, h in ((12_000, 9_000), (20_000, 20_000)):
        path = tmp_path / f"big_{w}.png"
        path.write_bytes(_png_header(w, h))
        with pytest.raises(inf.InputError) as err:
            inf.prepare_image(str(path), 32)
        msgs.append(str(err.value))
    assert msgs[0] == f"Cannot read big_12000.png: 12000x9000 = 108 MP exceeds the limit of 100 MP " \
                      "(a guard against decompression bombs)"
    assert msgs[1] == "Cannot read big_20000.png: 400 MP exceeds the limit of 100 MP (a guard against " \
                      "decompression bombs)"


def test_server_paths_only_for_a_local_app(model, monkeypatch):
    mod = _app_main()
    assert mod.server_paths_allowed("127.0.0.1", False, False) and mod.server_paths_allowed("localhost", False, False)
    assert not mod.server_paths_allowed("0.0.0.0", False, False)
    assert not mod.server_paths_allowed("127.0.0.1", True, False)   # --share: public link
    assert mod.server_paths_allowed("0.0.0.0", True, True)
    a = mod.parse_args(["--host", "0.0.0.0", "--allow-server-paths", "--queue-size", "8"])
    assert a.allow_server_paths and a.queue_size == 8
    with pytest.raises(SystemExit):
        mod.parse_args(["--queue-size", "0"])
    from app import ui
    monkeypatch.setenv("KARL_SAVOIAS_DIR", "/secret/Savoias")
    for allowed in (False, True):
        demo = ui.build_demo(model, examples_dir=None, server_paths=allowed, queue_size=5)
        field = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "human-folder")
        assert field.interactive is allowed and (field.value == "/secret/Savoias") is allowed
        notes = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "human-off"]
        assert bool(notes) is not allowed
        assert demo._queue.max_size == 5
        # Empty human tables are hidden (an empty Dataframe shows the headers "1 2 3").
        tables = [b for b in demo.blocks.values()
                  if getattr(b, "elem_id", None) in ("human-spearman", "human-pearson", "human-by-epsilon")]
        assert len(tables) == 3 and not any(t.visible for t in tables)
        # The inputs say what the model sees, and are shown whole.
        labels = [b.label for b in demo.blocks.values()
                  if getattr(b, "elem_id", None) in ("input-image", "tokens-image")]
        assert labels == ["Image (the model sees its centre square at 32x32)"] * 2
    assert "#input-image img, #tokens-image img {object-fit: contain}" in ui.CSS


# ----------------------------------------------------------------------------- launched app

@pytest.fixture(scope="module")
def served(model):
    from app import ui
    demo = ui.build_demo(model, examples_dir=None, loaded_from="tiny-monotone")
    _, url, _ = ui.launch_demo(demo, port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield url, demo
    finally:
        demo.close()


def test_filedata_outside_the_uploads_is_refused_with_a_message(served):
    """A FileData naming /etc/passwd answered {"error": null}; now the app's one line."""
    import httpx

    from app.components import REFUSED_PATH
    url, _ = served
    for path in ("/etc/passwd", "/no/such/file.png"):
        r = httpx.post(f"{url}gradio_api/call/complexity", timeout=30,
                       json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 0.05, 16]})
        event = r.json()["event_id"]
        with httpx.stream("GET", f"{url}gradio_api/call/complexity/{event}", timeout=60) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data:")]
        payload = json.loads(lines[-1][5:])
        assert payload["error"] == REFUSED_PATH and path not in payload["error"], payload


def test_fifty_requests_at_once_are_all_answered(served, tmp_path):
    """50 concurrent /complexity requests: 10-32 of them got "Queue is full!" with the
    old queue of 16; the default now holds them (docs/APP.md has the measured figures)."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    url, demo = served
    rng = np.random.default_rng(0)
    paths = []
    for i in range(50):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    client = Client(url, verbose=False, max_workers=50)
    try:
        jobs = [client.submit(handle_file(str(p)), 0.05, 16, api_name="/complexity") for p in paths]
        answers = [job.result(timeout=300) for job in jobs]
    finally:
        client.close()
    assert len(answers) == 50 and all(isinstance(a["kc_hat"], int) for a in answers)
    assert demo._queue.max_size >= 50


def test_the_latency_benchmarks_browser_client_calls_as_the_page_does(served, tmp_path):
    """benchmarks/app_latency.py's ``browser`` mode: a new image is uploaded once, an epsilon
    change sends only its server reference, and every output image is fetched."""
    spec = importlib.util.spec_from_file_location("app_latency", ROOT / "benchmarks" / "app_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    url, _ = served
    path = bench.make_images(1, tmp_path)[0]
    client = bench.BrowserLikeClient(url)
    try:
        first = client(path, 0.05, 16)
        second = client(path, 0.2, 16)
    finally:
        client.close()
    assert len(client.uploaded) == 1
    assert len(first) == len(second) == 9
    assert len(bench._file_urls(first)) == 3  # original and reconstruction, error heatmap
    assert first[1] >= second[1]  # KC-hat at 0.05 >= at 0.2 (the fixture's model is monotone)
