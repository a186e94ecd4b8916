"""The app: inference helpers and handlers called directly, then one launched app through
``gradio_client``.

Model: ``app.demo_model.build_monotone_model()``, a tiny KARL with hand-set weights whose
halting probabilities rise with epsilon by construction (its module docstring has the
argument), so "a stricter epsilon keeps at least as many tokens" holds for a reason and
not by luck of a random seed. A random tiny model could legitimately violate it.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import batch as B
from app import inference as inf
from app import models as M
from app.demo_model import build_monotone_model
from karl.config import LOSS_BINS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


@pytest.fixture(scope="module")
def model():
    inf.clear_caches()
    return build_monotone_model("tiny")


def _png(tmp_path: Path, name: str, img: Image.Image) -> Path:
    path = tmp_path / name
    img.save(path)
    return path


def _rgb(seed: int = 0, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- demo model

def test_monotone_model_kc_falls_with_epsilon(model):
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for budget in (4, 16, 32):
        kc = torch.stack([model.encode(images, e, budget=budget).kc_hat for e in LOSS_BINS], 1)
        assert (kc[:, :-1] >= kc[:, 1:]).all(), kc
        assert (kc[:, 0] > kc[:, -1]).all(), "the token count should actually move"
    probs = torch.stack([model.encode(images, e).halting_probs for e in LOSS_BINS], 1)  # [N, E, K]
    assert (probs[:, 1:] >= probs[:, :-1] - 1e-6).all(), "every token's halting prob rises with epsilon"


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize("mode,note", [("L", "grayscale"), ("RGBA", "alpha"), ("P", "palette"),
                                       ("I;16", "16-bit"), ("LA", "alpha")])
def test_prepare_converts_modes(tmp_path, mode, note):
    img = _rgb().convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(_rgb().convert("L"), dtype=np.uint16) * 257))
    prep = inf.prepare_image(_png(tmp_path, f"x_{mode.replace(';', '')}.png", img), 32)
    assert prep.tensor.shape == (3, 32, 32) and 0 <= prep.tensor.min() and prep.tensor.max() <= 1
    assert any(note in n for n in prep.notices), prep.notices


def test_prepare_downscales_huge_and_accepts_arrays(tmp_path):
    big = _png(tmp_path, "big.png", _rgb(size=300))
    prep = inf.prepare_image(big, 32, max_side=100)
    assert any("downscaled" in n and "300x300" in n for n in prep.notices)
    arr = np.asarray(_rgb())
    assert inf.prepare_image(arr, 32).key == inf.prepare_image(arr.astype(np.float32) / 255, 32).key
    assert inf.prepare_image(_rgb(), 32).key == inf.prepare_image(arr, 32).key  # same pixels, same key


@pytest.mark.parametrize("payload,match", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                           (None, "No image")])
def test_prepare_rejects_bad_input(tmp_path, payload, match):
    src = None if payload is None else tmp_path / "bad.png"
    if src is not None:
        src.write_bytes(payload)
    with pytest.raises(inf.InputError, match=match) as err:
        inf.prepare_image(src, 32)
    assert str(tmp_path) not in str(err.value), "server paths must not leak into messages"


def test_prepare_rejects_truncated_png(tmp_path):
    buf = io.BytesIO()
    _rgb(size=64).save(buf, format="PNG")
    with pytest.raises(inf.InputError, match="corrupt|truncated|cannot"):
        inf.prepare_image(buf.getvalue()[: len(buf.getvalue()) // 2], 32)


# ----------------------------------------------------------------------------- tokenize

def test_tokenize_contract(model):
    r = inf.tokenize(model, _rgb(3), epsilon=0.043, budget=12)
    assert r.epsilon == pytest.approx(0.043) and r.epsilon_bin == pytest.approx(0.05)
    assert r.budget == 12 and r.keep.shape == (12,) and r.kc_hat == int(r.keep.sum())
    assert r.kept_positions == [i for i in range(12) if r.keep[i]]
    assert r.continuous_kc == pytest.approx(float((1 - r.halting_probs).sum()))
    assert r.reconstruction.shape == r.original.shape == (3, 32, 32)
    assert r.l1 == pytest.approx(float((r.original - r.reconstruction).abs().mean()), abs=1e-6)
    assert math.isfinite(r.psnr) and -1 <= r.ssim <= 1
    d = inf.complexity_json(r)
    assert set(d) >= {"kc_hat", "continuous_kc", "l1", "psnr", "ssim", "lpips", "epsilon", "budget"}
    assert isinstance(d["kc_hat"], int) and isinstance(d["budget"], int) and isinstance(d["lpips"], float)
    json.dumps(d)


def test_sweep_row_matches_single_pass(model):
    img = _rgb(4)
    for eps in (0.01, 0.07, 0.3):
        inf.clear_caches()
        a = inf.tokenize(model, img, eps, 16, sweep=True)
        inf.clear_caches()
        b = inf.tokenize(model, img, eps, 16, sweep=False)
        assert a.kc_hat == b.kc_hat and np.allclose(a.halting_probs, b.halting_probs, atol=1e-5)
        assert a.l1 == pytest.approx(b.l1, abs=1e-5)


def test_epsilon_change_reuses_the_encoding(model, monkeypatch):
    """New image: one base encode and one (batched) encoder pass; epsilon moves: decoder only."""
    calls = {"base": 0, "encoder": 0, "decoder": 0}
    for name, attr in (("base", "base_encode"), ("encoder", "forward_encoder"), ("decoder", "forward_decoder")):
        orig = getattr(model, attr)

        def counted(*a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(*a, **k)
        monkeypatch.setattr(model, attr, counted)
    img = _rgb(5)
    inf.tokenize(model, img, 0.05, 16)
    assert calls == {"base": 1, "encoder": 1, "decoder": 1}
    for eps in (0.01, 0.2, 0.38):
        inf.tokenize(model, img, eps, 16)
    assert calls == {"base": 1, "encoder": 1, "decoder": 4}
    inf.tokenize(model, img, 0.2, 16)  # same bin again: cached result, nothing runs
    assert calls["decoder"] == 4
    r = inf.tokenize(model, img, 0.05, 16)
    first = r.lpips()
    assert inf.tokenize(model, img, 0.05, 16)._lpips == [first]  # LPIPS once per reconstruction


@pytest.mark.parametrize("eps,budget,match", [
    (-0.1, 16, "epsilon must be between 0 and 0.38, got -0.1"), (float("nan"), 16, "finite number"),
    (float("inf"), 16, "finite number"), ("-inf", 16, "finite"), ("abc", 16, "epsilon must be a number"),
    (None, 16, "epsilon must be a number"), (True, 16, "epsilon must be a number"), ([0.1], 16, "epsilon"),
    (0.05, 0, "budget must be between 1 and 16"), (0.05, -3, "budget"), (0.05, "x", "budget must be a number"),
    (0.05, float("nan"), "budget must be a finite"), (0.05, float("inf"), "budget must be a finite")])
def test_check_request_rejects(model, eps, budget, match):
    with pytest.raises(inf.InputError, match=match) as err:
        inf.check_request(model, eps, budget)
    assert "\n" not in str(err.value) and len(str(err.value)) < 120


def test_one_out_of_range_rule(model):
    """Above the trained range: the end of the range and a notice; numeric strings are numbers."""
    eps, k, notices = inf.check_request(model, 0.5, 1000)
    assert eps == 0.5 and k == model.max_tokens == 16
    assert any("above the largest loss bin; using 0.38" in n for n in notices)
    assert any("budget 1000 is above the 16 tokens" in n for n in notices)
    assert inf.check_request(model, " 0.05 ", "12") == (0.05, 12, [])
    assert inf.check_request(model, 0.05, None)[1] == inf.check_request(model, 0.05, "")[1] == 16
    r = inf.tokenize(model, _rgb(7), 0.05, 32)   # table holds 32 tokens, trained within 16
    assert r.budget == 16 and r.keep.shape == (16,) and any("budget 32" in n for n in r.notices)


def test_epsilon_above_last_bin_is_clamped_with_notice(model):
    r = inf.tokenize(model, _rgb(6), 0.9, None)
    assert r.epsilon_bin == pytest.approx(LOSS_BINS[-1]) and r.budget == model.max_tokens
    assert any("above the largest loss bin" in n for n in r.notices)


def test_csv_cells_cannot_become_formulas(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"image": ["=1+2.png", "+x.png", "-y.png", "@z.png", "\tt.png", "ok=.png"],
                          "kc_hat": [1, 2, 3, 4, 5, 6], "l1": [-0.5, 0.1, 0.2, 0.3, 0.4, 0.5],
                          "notes": ["=HYPERLINK(\"http://x\")", "", "", "", "", "a-b"]})
    text = B.write_csv(frame).read_text()
    back = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert list(back["image"]) == ["'=1+2.png", "'+x.png", "'-y.png", "'@z.png", "'\tt.png", "ok=.png"]
    assert back["notes"][0].startswith("'=") and back["notes"][5] == "a-b"
    assert list(back["l1"]) == [-0.5, 0.1, 0.2, 0.3, 0.4, 0.5]   # numbers stay numbers
    assert list(frame["image"])[0] == "=1+2.png"                  # the table shown is not altered


def test_rendering():
    err = np.linspace(0, 0.5, 32 * 32).reshape(32, 32)
    rgb = inf.error_heatmap(err)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    assert (rgb[0, 0] == inf._colormap()[0]).all() and (rgb[-1, -1] == inf._colormap()[255]).all()
    assert inf.to_display(torch.rand(3, 32, 32)).shape == (256, 256, 3)
    assert inf.to_display(torch.rand(3, 300, 300)).shape == (300, 300, 3)


def test_caches_stay_bounded(model):
    """Many distinct images: every cache stays at its size limit, memory stays flat."""
    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2 ** 20

    caches = inf.model_caches(model)
    for i in range(40):  # warm-up fills every cache
        inf.tokenize(model, _rgb(100 + i, 40), 0.05 if i % 2 else 0.2, 16).lpips()
    before = rss_mb()
    for i in range(80):
        inf.tokenize(model, _rgb(200 + i, 40), 0.05 if i % 2 else 0.2, 16).lpips()
    assert all(len(c) <= c.maxsize for c in caches.values())
    assert len(caches["result"]) == caches["result"].maxsize
    assert rss_mb() - before < 40, f"RSS grew by {rss_mb() - before:.1f} MB over 80 requests"


def test_lru_cache():
    c = inf.LRUCache(2)
    c.put("a", 1), c.put("b", 2), c.get("a"), c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


# ----------------------------------------------------------------------------- batch

def _zip(tmp_path: Path) -> Path:
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            buf = io.BytesIO()
            _rgb(10 + i).save(buf, format="PNG")
            zf.writestr(f"imgs/sub/{i}.png", buf.getvalue())
        zf.writestr("../../evil.png", b"x")
        zf.writestr("/abs.png", b"x")
        zf.writestr("notes.txt", b"hello")
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n garbage")
        zf.writestr("__MACOSX/imgs/._0.png", b"junk")
        zf.writestr("imgs/", b"")
    return path


def test_zip_collection_is_safe(tmp_path):
    items, skipped = B.collect_inputs([str(_zip(tmp_path))])
    names = [n for n, _ in items]
    assert names == [f"set.zip/imgs/sub/{i}.png" for i in range(3)] + ["set.zip/broken.png"]
    reasons = dict(skipped)
    assert "unsafe path" in reasons["set.zip/../../evil.png"] and "unsafe path" in reasons["set.zip//abs.png"]
    assert "not an image" in reasons["set.zip/notes.txt"]
    assert not any("__MACOSX" in n for n in names + list(reasons))
    assert not (tmp_path / "evil.png").exists() and not Path("/abs.png").exists()
    # Declared or actual size over the limit: skipped, never read whole.
    out = list(B.iter_zip(_zip(tmp_path), [10 ** 9], max_member_bytes=100))
    assert all(data is None for name, data, _ in out if name.endswith("0.png"))
    assert list(B.iter_zip(tmp_path / "set.zip", [10 ** 9], max_members=1))[1][2].startswith("over the limit")
    bad = tmp_path / "fake.zip"
    bad.write_bytes(b"not a zip")
    assert "not a readable zip" in B.collect_inputs([str(bad)])[1][0][1]


def test_batch_tokenize_and_views(model, tmp_path):
    from app import ui

    single = _png(tmp_path, "single.png", _rgb(20).convert("L"))
    res = B.batch_tokenize(model, [str(_zip(tmp_path)), str(single)], epsilon=0.05, budget=16,
                           with_lpips=True, batch_size=2)
    assert list(res.frame["image"]) == [f"set.zip/imgs/sub/{i}.png" for i in range(3)] + ["single.png"]
    assert res.frame["lpips"].notna().all() and (res.frame["kc_hat"] <= 16).all()
    assert "grayscale" in res.frame["notes"].iloc[-1]
    assert any("broken.png" in n for n, _ in res.skipped) and res.thumbs.shape == (4, 3, 32, 32)
    # The batch result agrees with the single-image path.
    one = inf.tokenize(model, str(single), 0.05, 16, sweep=False)
    assert res.frame["kc_hat"].iloc[-1] == one.kc_hat
    table, hist, csv, gallery, summary = ui.batch_view(model, [str(single), str(_zip(tmp_path))], 0.05, 16,
                                                       False, progress=lambda *a, **k: None)
    assert len(table) == 4 and Path(csv).read_text().startswith("image,kc_hat")
    assert gallery.count("<img") == 4 and "skipped" in summary
    with pytest.raises(Exception, match="No files"):
        ui.batch_view(model, [], 0.05, 16, False, progress=lambda *a, **k: None)
    txt = tmp_path / "a.txt"
    txt.write_text("hi")
    with pytest.raises(Exception, match="readable image"):
        ui.batch_view(model, [str(txt)], 0.05, 16, False, progress=lambda *a, **k: None)


def _zeros_zip(tmp_path: Path, members: int = 12, member_mb: int = 4) -> Path:
    """A small zip whose members are megabytes of zeros named .png: none of them decodes."""
    path = tmp_path / "zeros.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"z{i}.png", bytes(member_mb * 2 ** 20))
    return path


def test_failing_batches_do_not_hold_memory(model, tmp_path):
    """Failed requests must free the uploads at once, not when a garbage collection runs.

    The cycle (error -> traceback -> handler frame -> list of member bytes) is only freed by
    the cycle collector, so it is switched off here: whatever a failed request keeps stays.
    """
    import gc
    import tracemalloc

    import gradio as gr

    from app import ui

    zpath = _zeros_zip(tmp_path)
    assert zpath.stat().st_size < 2 ** 20  # 48 MB of zeros in a small file
    quiet = lambda *a, **k: None  # noqa: E731
    errors = []
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for i in range(6):
            for call in (lambda: ui.batch_view(model, [str(zpath)], 0.05, 16, False, progress=quiet),
                         lambda: ui.load_analysis_set(model, "uploads", [str(zpath)])):
                try:
                    call()
                except Exception as err:  # keep them, as a server's error log might
                    errors.append(err)
            if i == 0:
                base, _ = tracemalloc.get_traced_memory()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert len(errors) == 12 and all("None of" in str(e) and "readable" in str(e) for e in errors)
    assert isinstance(errors[0], gr.Error)
    grown_mb = (now - base) / 2 ** 20
    assert grown_mb < 8, f"5 more failing requests kept {grown_mb:.0f} MB"
    # Members are streamed: never the whole zip at once.
    assert peak / 2 ** 20 < 24, f"peak {peak / 2 ** 20:.0f} MB while reading 48 MB of members"


# ----------------------------------------------------------------------------- UI handlers

def test_tokenize_view(model, tmp_path):
    import gradio as gr

    from app import ui

    path = str(EXAMPLES / "05_procedural_fractal_82bits.png")
    out = ui.tokenize_view(model, path, 0.05, 16)
    assert len(out) == 9
    (orig, rec), kc, ckc, metrics, heat, halting, curve, kept, notices = out
    assert orig.shape == rec.shape == heat.shape == (256, 256, 3)
    assert kc == kept["kc_hat"] == len(kept["kept_positions"]) and "L1 achieved" in metrics
    assert "32x32" in notices
    # Plotly 7 encodes arrays as base64 in to_json(): read fig.data directly.
    assert len(halting.data[0].y) + len(halting.data[1].y) == 16
    assert list(curve.data[0].y)[LOSS_BINS.index(0.05)] == kc
    assert ui.tokenize_view(model, None, 0.05, 16)[0] is None
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(gr.Error, match="not an image"):
        ui.tokenize_view(model, str(bad), 0.05, 16)
    with pytest.raises(gr.Error, match="budget"):
        ui.complexity_view(model, path, 0.05, 0)


def test_tokenize_page_first_view_and_errors(model, tmp_path):
    """Before an image: no number that reads as a result. A bad file after a good one: every
    output cleared, the error once (in the notices, not a toast), nothing raised."""
    from app import ui

    blank = ui.tokenize_page(model, None, 0.05, 16)
    assert blank[1] == blank[2] == "" and blank[3] == "" and "Upload an image" in blank[8]
    good = ui.tokenize_page(model, str(EXAMPLES / "04_procedural_flat_15bits.png"), 0.05, 16)
    assert good[1].isdigit() and good[7]["kc_hat"] == int(good[1]) and "L1 achieved" in good[3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = ui.tokenize_page(model, str(bad), 0.05, 16)
    assert out[0] is None and out[1] == out[2] == "" and out[3] == "" and out[7] is None
    assert out[8].count("Cannot read bad.png") == 1 and "karl-error" in out[8]
    assert str(tmp_path) not in out[8], "server paths must not leak"
    out = ui.tokenize_page(model, str(EXAMPLES / "04_procedural_flat_15bits.png"), "abc", 16)
    assert out[1] == "" and "epsilon must be a number" in out[8]
    # Above the slider's range (the API can send it): the last bin, with a notice.
    out = ui.tokenize_page(model, str(EXAMPLES / "04_procedural_flat_15bits.png"), 0.5, 64)
    assert out[1].isdigit() and "using 0.38" in out[8] and "budget 64" in out[8]


def test_verdict_sentence(model):
    """One sentence says what the numbers mean; the out-of-reach case names L1 with every token."""
    from dataclasses import replace

    from app import ui

    r = inf.tokenize(model, _rgb(8), 0.05, 16)
    reach = ui._verdict(replace(r, keep=np.ones(16, bool), kc_hat=16, l1=0.079, epsilon=0.05))
    assert reach.startswith("**Out of reach:** L1 with all 16 tokens is 0.079 > 0.05") and reach.count(".") <= 4
    assert "every token is kept" in reach
    assert ui._verdict(replace(r, kc_hat=5, l1=0.04, epsilon=0.05)).startswith("**5 of 16 tokens**")
    assert "Not met" in ui._verdict(replace(r, kc_hat=5, l1=0.2, epsilon=0.05))
    assert ui._metrics_markdown(r).startswith(ui._verdict(r))


def test_figures_fit_and_model_line_is_plain_for_reports(model):
    import plotly.graph_objects as go

    from app import ui

    fig = go.Figure([go.Scatter(x=[0, 1], y=[i, i], name=f"image number {i} with a long name") for i in range(13)])
    ui._fit_figure(fig)
    assert fig.layout.legend.orientation == "v" and fig.layout.legend.x > 1
    assert all(len(t.name) <= 19 for t in fig.data)
    few = ui._fit_figure(go.Figure([go.Scatter(x=[0], y=[0], name="a")]))
    assert few.layout.legend.orientation != "v"
    assert ui._model_card(model, "x").startswith("**Model**")
    plain = ui._model_card(model, "x", markdown=False)
    assert "*" not in plain and plain.startswith("x · 32x32 input")


def test_app_writes_nothing_into_the_source_tree(model):
    """Gradio writes a .pyi stub next to any module defining a component subclass."""
    from app import ui

    for stub in (ROOT / "app").glob("*.pyi"):
        stub.unlink()
    demo = ui.build_demo(model, loaded_from="tiny-monotone")
    assert not list((ROOT / "app").glob("*.pyi"))
    sliders = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert sliders["budget-slider"].maximum == model.max_tokens   # above it tokens never halt


def test_analysis_views(model, tmp_path):
    from app import ui

    quiet = lambda *a, **k: None  # noqa: E731
    sweep, delta, curve, pick, heat, status = ui.analysis_view(model, "probes", None, 0.05, progress=quiet)
    assert pick["choices"][0] == "noise" and pick["value"] == "noise" and "4 images" in status
    assert len(curve.data) >= 1 and len(heat.data) >= 1
    out = ui.analysis_view(model, "uploads", [str(_zip(tmp_path))], 0.05, progress=quiet)
    assert "skipped" in out[-1]
    assert ui.heatmap_view(model, "probes", None, "chessboard") is not None
    with pytest.raises(Exception, match="No files"):
        ui.analysis_view(model, "uploads", None, 0.05, progress=quiet)
    files, msg = ui.report_view(model, "probes", None, 0.05, "tiny monotone", progress=quiet)
    assert Path(files[0]).read_text().lower().startswith("<!doctype html") and files[1].endswith(".zip")


# ----------------------------------------------------------------------------- model loading

def test_load_app_model(tmp_path, monkeypatch):
    from karl import build_model, save_pretrained

    with pytest.raises(M.ModelLoadError, match="does not exist"):
        M.load_app_model(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(M.ModelLoadError, match="cannot load checkpoint"):
        M.load_app_model(broken)
    pth = tmp_path / "official.pth"
    torch.save({"args": argparse_namespace(), "model": {}}, pth)
    with pytest.raises(M.ModelLoadError, match="trust-official"):
        M.load_app_model(pth)
    good = save_pretrained(build_model("tiny", seed=0), tmp_path / "good")
    assert M.load_app_model(good).warning is None
    assert M.load_app_model(good / "model.safetensors").model.config.width == 32
    monkeypatch.setattr(M, "DEFAULT_CHECKPOINT", tmp_path / "missing")
    loaded = M.load_app_model()
    assert "Untrained" in loaded.warning and loaded.model.config.image_size == 64
    monkeypatch.setattr(M, "DEFAULT_CHECKPOINT", broken)
    assert "failed to load" in M.load_app_model().warning


def argparse_namespace():
    import argparse
    return argparse.Namespace(image_size=256)


def test_app_main_exits_cleanly_on_bad_checkpoint(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    a = mod.parse_args(["--demo-model", "tiny-monotone", "--port", "1234"])
    assert a.demo_model == "tiny-monotone" and a.port == 1234 and not a.share and a.host == "127.0.0.1"


# ----------------------------------------------------------------------------- launched app

@pytest.fixture(scope="module")
def client(model):
    from gradio_client import Client

    from app import ui

    demo = ui.build_demo(model, banner="test model", loaded_from="tiny-monotone")
    _, url, _ = ui.launch_demo(demo, port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False), demo
    finally:
        demo.close()


def test_client_complexity_monotone_and_errors(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, demo = client
    api = c.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/tokenize", "/complexity"}, "internal endpoints must be private"
    img = handle_file(str(EXAMPLES / "00_photo_astronaut.png"))
    strict = c.predict(img, 0.02, 16, api_name="/complexity")
    loose = c.predict(img, 0.2, 16, api_name="/complexity")
    assert set(strict) >= {"kc_hat", "continuous_kc", "l1", "psnr", "ssim", "lpips", "epsilon", "budget"}
    assert strict["epsilon"] == 0.02 and loose["epsilon"] == 0.2 and strict["budget"] == 16
    assert isinstance(strict["kc_hat"], int) and isinstance(strict["lpips"], float)
    assert strict["kc_hat"] >= loose["kc_hat"]
    assert strict["kc_hat"] > loose["kc_hat"], "the monotone demo model must move between these bins"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a PNG")
    for endpoint in ("/complexity", "/tokenize"):
        with pytest.raises(AppError, match="(?i)not an image|cannot read"):
            c.predict(handle_file(str(bad)), 0.05, 16, api_name=endpoint)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for endpoint in ("/complexity", "/tokenize"):
        with pytest.raises(AppError, match="empty"):
            c.predict(handle_file(str(empty)), 0.05, 16, api_name=endpoint)
    # ... and the app still answers.
    again = c.predict(img, 0.02, 16, api_name="/complexity")
    assert again["kc_hat"] == strict["kc_hat"]
    flat = handle_file(str(EXAMPLES / "04_procedural_flat_15bits.png"))
    out = c.predict(flat, 0.05, 16, api_name="/tokenize")
    assert len(out) == 9 and isinstance(out[1], (int, float)) and out[7]["kc_hat"] == out[1]
    from app.ui import QUEUE_MAX_SIZE
    assert demo._queue.max_size == QUEUE_MAX_SIZE


def test_client_one_rule_for_out_of_range(client):
    """Above the range: the end of it and a notice, on both endpoints; strings, NaN and
    infinity: the app's own one-line message (not Gradio's generic one)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    flat = handle_file(str(EXAMPLES / "04_procedural_flat_15bits.png"))
    out = c.predict(flat, 0.5, 64, api_name="/tokenize")
    assert out[7]["budget"] == 16 and "using 0.38" in out[8] and "budget 64 is above the 16 tokens" in out[8]
    top = c.predict(flat, 0.38, 16, api_name="/complexity")
    above = c.predict(flat, 0.5, 64, api_name="/complexity")
    assert above["epsilon_bin"] == 0.38 and above["budget"] == 16 and above["kc_hat"] == top["kc_hat"]
    for endpoint in ("/tokenize", "/complexity"):
        for eps, budget, match in (("abc", 16, "epsilon must be a number"),
                                   ("NaN", 16, "epsilon must be a finite number"),   # JSON has no
                                   ("-Infinity", 16, "epsilon must be a finite number"),  # NaN literal
                                   (-1, 16, "epsilon must be between 0 and 0.38"),
                                   (0.05, "many", "budget must be a number"),
                                   (0.05, 0, "budget must be between 1 and 16")):
            with pytest.raises(AppError, match=match):
                c.predict(flat, eps, budget, api_name=endpoint)


def test_eval_accepts_the_safetensors_path_like_the_app(tmp_path):
    from karl import build_model, save_pretrained
    from karl.evaluate import EvalError, load_model

    good = save_pretrained(build_model("tiny", seed=0), tmp_path / "good")
    a, b = load_model(str(good / "model.safetensors")), load_model(str(good))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(EvalError, match="not a release directory"):
        load_model(str(tmp_path / "missing.safetensors"))
