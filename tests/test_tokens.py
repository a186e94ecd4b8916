"""Token maps and progressive decoding (analysis/tokens.py, app/tokens_tab.py) on tiny random models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import tokens as T
from karl import build_model
from karl.config import BaseTokenizerConfig, preset
from karl.metrics import l1

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))


def _vq_models():
    tiny = preset("tiny").model
    vq_base = BaseTokenizerConfig(kind="vqgan", latent_dim=8, downsample=8, channels=32,
                                  channel_mult=(1, 1, 1, 1), num_res_blocks=1, codebook_size=32)
    return {"quantised": replace(tiny, quantize=True, codebook_size=64),
            "vqgan_base": replace(tiny, base=vq_base)}


def test_shapes_ranges_and_exports(model, image, tmp_path):
    pg = T.compute_progressive(model, image, epsilon=0.05)
    k = pg.kc_hat
    assert k >= 2, "the tiny random model should keep several tokens at 0.05"
    assert pg.num_tokens[0] == 1 and pg.num_tokens[-1] == k and (np.diff(pg.num_tokens) > 0).all()
    m = len(pg.num_tokens)
    assert pg.images.shape == (m, 3, 32, 32) and pg.l1.shape == pg.psnr.shape == pg.ssim.shape == (m,)
    assert pg.images.min() >= 0 and pg.images.max() <= 1
    tm = T.compute_token_maps(model, image, epsilon=0.05)
    assert tm.kept.shape == (k,) and (tm.kept == pg.kept).all() and (tm.tokens == tm.kept).all()
    assert tm.maps.shape == (k, 32, 32) and tm.maps.dtype == np.float32 and tm.maps.min() >= 0
    assert tm.attention.shape == (k, 32, 32) and tm.attention.min() >= 0
    # Attention to the kept tokens is a part of each grid query's softmax (the rest goes to the grid).
    assert (tm.attention.sum(0) <= 1 + 1e-5).all() and tm.attention.sum(0).min() > 0
    seg = tm.segmentation()
    assert seg.shape == (32, 32) and seg.min() >= -1 and seg.max() < k
    df = tm.to_frame()
    assert list(df["token"]) == list(tm.kept + 1) and df["argmax_share"].sum() <= 1 + 1e-9
    assert len(pg.to_frame()) == m
    for obj, name in ((pg, "pg"), (tm, "tm")):
        assert obj.save_csv(tmp_path / f"{name}.csv").stat().st_size > 0
        data = json.loads(obj.save_json(tmp_path / f"{name}.json").read_text())
        assert "images" not in data and "maps" not in data and data["kept"] == [int(i) for i in tm.kept]
        with np.load(obj.save_npz(tmp_path / f"{name}.npz")) as z:
            assert z["kept"].shape == (k,)
    with np.load(tmp_path / "tm.npz") as z:
        np.testing.assert_array_equal(z["maps"], tm.maps)
    figs = [T.plot_progressive(pg), T.plot_progressive_strip(pg), T.plot_token_map(tm, 0),
            T.plot_token_map(tm, 1, "attention"), T.plot_token_maps(tm), T.plot_segmentation(tm),
            T.plot_map_agreement(tm)]
    assert len(figs[1].data) == m + 1 and all(len(f.data) >= 1 for f in figs)
    assert list(figs[0].data[0].y) == pytest.approx(list(pg.l1))


def test_progressive_at_kc_hat_equals_decode_of_encode(model, image):
    pg = T.compute_progressive(model, image, epsilon=0.03)
    enc = model.encode(image[None], epsilon=0.03)
    rec = model.decode(enc)
    assert pg.num_tokens[-1] == int(enc.kc_hat[0])
    assert pg.l1[-1] == pytest.approx(float(l1(rec, image[None])[0]), abs=1e-6)
    np.testing.assert_allclose(pg.images[-1], rec[0].numpy(), atol=1e-5)
    # Each prefix decodes like the model's own tail-drop of the kept set.
    rank = torch.cumsum(enc.keep[0].long(), 0)
    n = int(pg.num_tokens[1])
    prefix = replace(enc, keep=enc.keep & (rank <= n)[None])
    np.testing.assert_allclose(pg.images[1], model.decode(prefix)[0].numpy(), atol=1e-5)


def test_removal_map_is_the_change_when_the_token_is_dropped(model, image):
    tm = T.compute_token_maps(model, image, epsilon=0.05, attention=False)
    enc = model.encode(image[None], epsilon=0.05)
    full = model.decode(enc)[0]
    assert tm.attention is None and tm.l1 == pytest.approx(float(l1(full[None], image[None])[0]), abs=1e-6)
    for j in (0, len(tm.tokens) - 1):
        enc_j = model.encode(image[None], epsilon=0.05)
        enc_j.keep[0, tm.tokens[j]] = False
        expect = (model.decode(enc_j)[0] - full).abs().sum(0).numpy()
        np.testing.assert_allclose(tm.maps[j], expect, atol=1e-5)
        assert tm.maps[j].max() > 0, "dropping a token of a random model changes the image"


@torch.no_grad()
def _silence_token(model, j: int, c: int = 30, c2: int = 31, amp: float = 1e3, gain: float = 100.0):
    """Make latent slot ``j`` unreadable by the decoder, exactly: its residual stream alone
    carries a large difference x[c] - x[c2] (every other token, grid or latent, has x[c] = x[c2]
    in every layer), and one key coordinate per head reads that difference against a constant
    query of 1. Token j's attention score is then about -200: exp() underflows to 0.0 in float32,
    so removing it changes nothing while every other token is read as before."""
    w, hd = model.config.width, model.config.width // model.config.heads
    model.decoder_embed.weight[[c, c2]] = 0
    model.decoder_embed.bias[[c, c2]] = 0
    model.decoder_latent_tokens_timestep_embed[:, [c, c2]] = 0
    model.decoder_latent_tokens_timestep_embed[j, c], model.decoder_latent_tokens_timestep_embed[j, c2] = -amp, amp
    model.decoder_mask_token[..., [c, c2]] = 0
    model.decoder_positional_embedding[[c, c2]] = 0
    for ln in [model.decoder.ln_pre] + [b.ln_1 for b in model.decoder.transformer] + \
              [b.ln_2 for b in model.decoder.transformer]:
        ln.weight[[c, c2]] = 1.0
        ln.bias[[c, c2]] = 0.0
    for block in model.decoder.transformer:
        for lin in (block.attn.out_proj, block.mlp.c_proj):   # nothing writes to c or c2
            lin.weight[[c, c2]] = 0
            lin.bias[[c, c2]] = 0
        attn = block.attn
        for h in range(model.config.heads):
            u = h * hd                                            # query / key coordinate u of head h
            attn.in_proj_weight[u] = 0
            attn.in_proj_bias[u] = 1.0
            attn.in_proj_weight[w + u] = 0
            attn.in_proj_weight[w + u, c], attn.in_proj_weight[w + u, c2] = gain, -gain
            attn.in_proj_bias[w + u] = 0
    return model


def test_map_is_exactly_zero_for_a_token_whose_removal_changes_nothing(image):
    model = build_model("tiny", seed=0).eval()
    kept = np.flatnonzero(model.encode(image[None], epsilon=0.05).keep[0].numpy())
    j = int(kept[3])
    _silence_token(model, j)
    # By construction: dropping slot j leaves the decode bit-identical.
    enc = model.encode(image[None], epsilon=0.05)
    assert enc.keep[0, j]
    tm = T.compute_token_maps(model, image, epsilon=0.05)
    i = int(np.flatnonzero(tm.tokens == j)[0])
    assert (tm.maps[i] == 0).all() and (tm.attention[i] == 0).all()
    others = np.delete(np.arange(len(tm.tokens)), i)
    assert (tm.maps[others].reshape(len(others), -1).max(-1) > 0).all()
    assert i not in set(tm.segmentation().ravel())
    assert tm.to_frame().loc[i, "mean_change"] == 0


def test_cap_samples_tokens_evenly(model, image):
    full = T.compute_token_maps(model, image, epsilon=0.05)
    k = full.kc_hat
    tm = T.compute_token_maps(model, image, epsilon=0.05, max_maps=4)
    assert len(tm.tokens) == 4 and tm.kc_hat == k and tm.notes
    assert tm.tokens[0] == full.kept[0] and tm.tokens[-1] == full.kept[-1]
    idx = np.searchsorted(full.tokens, tm.tokens)
    np.testing.assert_allclose(tm.maps, full.maps[idx], atol=1e-5)
    np.testing.assert_allclose(tm.attention, full.attention[idx], atol=1e-6)
    assert list(T.sample_tokens(3, 8)) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["quantised", "vqgan_base"])
def test_other_model_kinds(kind, image):
    torch.manual_seed(0)
    from karl.model import KARL
    model = KARL(_vq_models()[kind]).eval()
    pg = T.compute_progressive(model, image, epsilon=0.05)
    tm = T.compute_token_maps(model, image, epsilon=0.05)
    rec = model.decode(model.encode(image[None], epsilon=0.05))
    assert pg.l1[-1] == pytest.approx(float(l1(rec, image[None])[0]), abs=1e-5)
    assert tm.maps.shape == (tm.kc_hat, 32, 32) and tm.maps.min() >= 0


def test_bad_input_is_refused(model):
    with pytest.raises(AssertionError, match=r"\[3, H, W\]"):
        T.compute_token_maps(model, torch.rand(1, 3, 32, 32))
    with pytest.raises(AssertionError, match="expected images"):
        T.compute_progressive(model, torch.rand(3, 16, 16))
    with pytest.raises(AssertionError, match="num_tokens"):
        T.compute_progressive(model, torch.rand(3, 32, 32), num_tokens=[1, 10_000])


def test_app_handler_returns_strip_and_maps(model):
    import gradio as gr

    from app import tokens_tab as tt

    path = str(EXAMPLES / "05_procedural_fractal_82bits.png")
    out = tt.tokens_view(model, path, 0.05, 5)
    strip, curve, maps, seg, pick, picked, agree, status = out
    k = int(model.encode(tt.inf.prepare_image(path, 32).tensor[None], 0.05).kc_hat[0])
    assert strip[0][1] == "original" and strip[-1][1].startswith(f"{k} tok · L1 ")
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img, _ in strip)
    assert len(maps) == min(5, k) and maps[0][0].ndim == 3 and seg.shape == (256, 256, 3)
    assert len(pick["choices"]) == len(maps) and pick["value"] == 0
    assert len(curve.data) == 2 and picked is not None and agree is not None and f"KC-hat **{k}**" in status
    assert len(gr.Gallery().postprocess(strip).root) == len(strip)  # valid for the tab's components
    assert len(gr.Gallery().postprocess(maps).root) == len(maps)
    # Picking another token reuses the cached maps.
    cache = tt._cache(model)
    hits = cache.hits
    assert tt.token_pick_view(model, path, 0.05, 5, 1, "attention") is not None
    assert cache.hits == hits + 1
    assert tt.tokens_view(model, None, 0.05, 5)[0] == []
    with pytest.raises(gr.Error, match="token cap"):
        tt.tokens_view(model, path, 0.05, 0)
    with pytest.raises(gr.Error, match="no token"):
        tt.token_pick_view(model, path, 0.05, 5, 99)


def test_demo_has_the_tokens_tab(model):
    from app import ui
    demo = ui.build_demo(model, examples_dir=None)
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert "Tokens" in labels and "program prefixes decoded" in labels


def test_report_section(model, image, tmp_path):
    from analysis import report

    saved = []

    def save(obj, name):
        path = tmp_path / name
        obj.to_frame().to_csv(path, index=False)
        saved.append(path)
        return path
    parts = report._tokens_section(model, image, "probe", 0.05, save, tmp_path, max_maps=6)
    body = "".join(parts)
    assert "Program prefixes decoded" in body and "argmax token" in body and "6 of 16 kept tokens mapped" in body
    assert [p.name for p in saved] == ["tokens_progressive.csv", "token_maps.csv"]
    assert "7. What each token encodes" in report.SECTIONS.values()


def test_error_curve_axis_spans_the_token_counts(model, image):
    """Issue 25: the KC-hat label sat at x = 16 on a log axis, i.e. 10^16, so the axis ran to
    10^30 and the data filled its left 5%. The axis now spans the counts, ticked at them."""
    pg = T.compute_progressive(model, image, epsilon=0.05, num_tokens=[1, 2, 4, 8, 16])
    fig = T.plot_progressive(pg)
    ax = fig.layout.xaxis
    assert ax.type == "log" and list(ax.tickvals) == [1, 2, 4, 8, 16]
    lo, hi = ax.range
    assert 10 ** lo <= 1 and 16 <= 10 ** hi <= 16 * 1.5, ax.range
    label = next(a for a in fig.layout.annotations if a.text.startswith("KC-hat"))
    assert label.x == pytest.approx(np.log10(max(pg.kc_hat, 1))) and lo <= label.x <= hi
    empty = T.plot_progressive(replace(pg, num_tokens=np.array([0]), l1=pg.l1[:1], psnr=pg.psnr[:1]))
    assert empty.layout.xaxis.type == "linear"   # an empty program: no log of 0


def test_tokens_tab_follows_the_one_rule(model):
    """Issue 25: epsilon and cap follow the app's rule (clamp above with a notice; NaN, 0
    tokens, text: one line in the status, every output cleared, no toast)."""
    from app import tokens_tab as tt
    from app.components import SafeSlider

    path = str(EXAMPLES / "05_procedural_fractal_82bits.png")
    eps, cap, notes = tt.check_tokens_request(model, 0.5, 1000)
    assert (eps, cap) == (0.5, 256) and any("using 0.38" in n for n in notes)
    assert any("token cap 1000 is above the 256 maps" in n for n in notes)
    assert tt.check_tokens_request(model, 0, "3")[:2] == (0.0, 3)   # epsilon 0: the first bin
    out = tt.tokens_page(model, path, 0.5, 4)
    assert out[0] and "using 0.38" in out[7] and "karl-error" not in out[7]
    for e, c, msg in (("nan", 4, "epsilon must be a finite number"), (0.05, 0, "token cap must be between 1"),
                      ("abc", 4, "epsilon must be a number"), (0.05, float("inf"), "token cap must be a finite")):
        out = tt.tokens_page(model, path, e, c)
        assert out[0] == [] and out[1] is None and out[2] == [] and out[5] is None and out[6] is None
        assert out[4]["choices"] == [] and 'class="karl-error"' in out[7] and msg in out[7], out[7]
    from app import ui
    demo = ui.build_demo(model, examples_dir=None)
    sliders = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) in ("tokens-epsilon", "tokens-cap")]
    assert len(sliders) == 2 and all(isinstance(b, SafeSlider) and b.preprocess("nan") == "nan" for b in sliders)
