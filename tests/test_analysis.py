"""The analyses on the tiny random model: shapes, ranges, figures, loaders, report, notebook."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import analysis as A
from karl import LOSS_BINS, build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _in_range(x, lo, hi):
    x = np.asarray(x, dtype=float)
    return bool(((x >= lo - 1e-9) & (x <= hi + 1e-9)).all())


def _write_png(path: Path, seed: int, size: int = 40, flat: bool = False) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    arr = np.full((size, size + 8, 3), 120, np.uint8) if flat else rng.integers(0, 256, (size, size + 8, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def savoias_root(tmp_path):
    """A mini Savoias: Scenes 0-3, Art 0-11 without 2 and 4-9 (numeric, not lexicographic order)."""
    root = tmp_path / "Savoias"
    for cat, numbers in (("Scenes", [0, 1, 2, 3]), ("Art", [0, 1, 3, 10, 11])):
        for j, n in enumerate(numbers):
            _write_png(root / "Images" / cat / f"{n}.png", seed=j, flat=j % 2 == 0)
    xlsx = root / "Ground truth" / "xlsx"
    xlsx.mkdir(parents=True)
    pd.DataFrame({"gt": [10.0, 80.0, 20.0, 90.0]}).to_excel(xlsx / "global_ranking_scenes.xlsx", index=False)
    pd.DataFrame({"gt": [0.0, 100.0, 30.0, 60.0, *range(1, 7), 70.0, 80.0]}).to_excel(
        xlsx / "global_ranking_art.xlsx", index=False)
    return root


# ----------------------------------------------------------------------------- 1. halting

def test_halting_shapes_ranges_and_figures(model, images):
    h = A.compute_halting(model, images[0])
    e, k = len(LOSS_BINS), model.max_tokens
    assert h.probs.shape == (e, k) and h.keep.shape == (e, k) and h.keep.dtype == bool
    assert _in_range(h.probs, 0, 1) and h.threshold == 0.75
    assert np.array_equal(h.keep, h.probs <= 0.75)
    assert np.array_equal(h.kc_hat, h.keep.sum(-1)) and _in_range(h.continuous_kc, 0, k)
    # the batched epsilons equal one encode per epsilon
    enc = model.encode(images[:1], epsilon=0.05)
    np.testing.assert_allclose(h.probs[LOSS_BINS.index(0.05)], enc.halting_probs[0].numpy(), atol=1e-5)

    fig = A.plot_halting(h, 0.05)
    assert len(fig.data) == 4 and sum(len(t.y) for t in fig.data[:2]) == k
    # Issue 25: every token kept with p(halt) ~ 0.001 drew invisible bars: the points show.
    every = A.HaltingData(epsilons=h.epsilons, probs=np.full_like(h.probs, 1e-3), keep=np.ones_like(h.keep),
                          threshold=0.75, kc_hat=np.full(e, k), continuous_kc=np.full(e, k * 0.999))
    dots = A.plot_halting(every, 0.05).data[2]
    assert dots.mode == "markers" and list(dots.x) == list(range(1, k + 1)) and dots.marker.size >= 6
    assert any(s.line.dash == "dash" and s.y0 == 0.75 for s in fig.layout.shapes)
    heat = A.plot_halting_heatmap(h)
    assert np.asarray(heat.data[0].z).shape == (e, k) and len(heat.data) == 2
    assert len(h.to_frame()) == e * k


# ----------------------------------------------------------------------------- 2. KC curve

def test_kc_curve_batched_equals_unbatched(model, images):
    eps = [0.01, 0.05, 0.2]
    c = A.compute_kc_curve(model, images, eps, batch_size=64)
    c2 = A.compute_kc_curve(model, images, eps, batch_size=2)  # one image per pass
    assert c.kc_hat.shape == (5, 3) and c.continuous_kc.shape == (5, 3)
    assert _in_range(c.kc_hat, 0, model.max_tokens) and _in_range(c.continuous_kc, 0, model.max_tokens)
    np.testing.assert_array_equal(c.kc_hat, c2.kc_hat)
    np.testing.assert_allclose(c.continuous_kc, c2.continuous_kc, atol=1e-4)
    s = c.summary()
    assert list(s.epsilon) == eps and (s.kc_q25 <= s.kc_q75).all()

    one = A.plot_kc_curve(A.compute_kc_curve(model, images[0], eps), mark_epsilon=0.05)
    assert len(one.data) == 2 and list(one.data[0].y) == list(c.kc_hat[0])
    assert any(sh.x0 == 0.05 for sh in one.layout.shapes)
    # The label sits in the log axis' own coordinates (log10), not at 10^0.05.
    lo, hi = one.layout.xaxis.range
    assert [a.x for a in one.layout.annotations if "epsilon =" in a.text] == [pytest.approx(np.log10(0.05))]
    assert lo <= np.log10(0.05) <= hi
    many = A.plot_kc_curve(c, names=[f"im{i}" for i in range(5)])
    assert many.data[1].fill == "tonexty" and np.allclose(many.data[2].y, c.kc_hat.mean(0))
    assert len(many.data) == 3 + 5


def test_figures_take_the_studio_template_whether_or_not_it_is_plotly_default(model, images):
    """figure_style names the template unless plotly already applies it as its default (the
    app sets that at start, which builds figures faster): the figure is the same either way."""
    import plotly.io as pio

    from analysis._common import FIGURE_TEMPLATE, use_figure_template

    h = A.compute_halting(model, images[0])
    c = A.compute_kc_curve(model, images[0], [0.01, 0.05, 0.2])
    before = pio.templates.default
    try:
        pio.templates.default = "plotly"
        named = [A.plot_halting(h, 0.05, title="t"), A.plot_kc_curve(c, mark_epsilon=0.05)]
        use_figure_template()
        assert pio.templates.default == FIGURE_TEMPLATE
        default = [A.plot_halting(h, 0.05, title="t"), A.plot_kc_curve(c, mark_epsilon=0.05)]
    finally:
        pio.templates.default = before
    for a, b in zip(named, default):
        assert a.layout.template == pio.templates[FIGURE_TEMPLATE]
        assert json.loads(a.to_json()) == json.loads(b.to_json())  # key order aside
    assert named[0].layout.title.text == "t"


# ----------------------------------------------------------------------------- 3. structure vs noise

def test_probes_token_sweep_and_delta(model, images):
    probes, names = A.standard_probe_images(32)
    assert probes.shape == (4, 3, 32, 32) and names == ["noise", "chessboard", "natural", "fractal"]
    assert _in_range(probes, 0, 1) and probes[1].unique().numel() == 2  # black and white squares

    sweep = A.compute_token_sweep(model, probes, names)
    assert list(sweep.token_counts) == [1, 2, 4, 8, 16]
    assert sweep.l1.shape == (4, 5) and _in_range(sweep.l1, 0, 1) and _in_range(sweep.ssim, -1, 1)
    fig = A.plot_token_sweep(sweep)
    assert len(fig.data) == 8 and list(fig.data[0].y) == list(sweep.l1[0])

    d = A.compute_delta(model, torch.cat([probes, images]), epsilon=0.05)
    assert d.small_budget == 2 and d.full_budget == 16
    np.testing.assert_allclose(d.delta, d.l1_small - d.l1_full)
    assert _in_range(d.kc_hat, 0, 16) and len(d.to_frame()) == 9
    fig = A.plot_kc_vs_delta(d, labels=names + ["data"] * 5)
    assert len(fig.data) == 5 and list(fig.data[-1].y) == list(d.delta[4:])


# ----------------------------------------------------------------------------- 4. gallery

def test_gallery_buckets_and_html(images):
    g = A.compute_gallery([0, 1, 4, 5, 8, 16], bucket_size=4)
    assert list(g.bucket) == [0, 0, 0, 1, 1, 3]  # (lo, hi] buckets; 0 in the first; 16 in the last
    assert [(lo, hi) for lo, hi, _ in g.buckets] == [(0, 4), (4, 8), (12, 16)]
    html = A.gallery_html(images, [1, 3, 9, 16, 2], bucket_size=4, names=list("abcde"))
    assert html.count("data:image/png;base64,") == 5 and "KC-hat" in html


# ----------------------------------------------------------------------------- 5. human complexity

def test_load_savoias_layout(savoias_root):
    with pytest.warns(UserWarning, match="7 of 16 images are missing"):
        df = A.load_savoias(savoias_root)
    assert list(df.columns) == ["path", "category", "index", "human_score"]
    assert len(df) == 9 and set(df.category) == {"Scenes", "Art"}
    art = df[df.category == "Art"]
    assert list(art["index"]) == [0, 1, 3, 10, 11]  # numeric order; paired by number
    assert list(art.human_score) == [0.0, 100.0, 60.0, 70.0, 80.0]
    assert Path(art.path.iloc[-2]).name == "10.png"
    assert list(df[df.category == "Scenes"]["index"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="missing"):
        A.load_savoias(savoias_root, strict=True)
    with pytest.raises(ValueError, match="no Images/"):
        A.load_savoias(savoias_root / "Images")


def test_load_scores_csv(tmp_path):
    for i in range(3):
        _write_png(tmp_path / "imgs" / f"x{i}.png", seed=i)
    pd.DataFrame({"image": [f"x{i}.png" for i in range(3)], "score": [1, 2, 3]}).to_csv(tmp_path / "s.csv", index=False)
    df = A.load_scores_csv(tmp_path / "s.csv", tmp_path / "imgs")
    assert list(df.columns) == ["path", "category", "index", "human_score"] and (df.category == "all").all()
    with pytest.raises(FileNotFoundError):
        A.load_scores_csv(tmp_path / "s.csv")  # images are not next to the CSV


def test_classic_proxies_order_noise_above_flat(tmp_path):
    flat, noise = torch.full((1, 3, 32, 32), 0.5), torch.rand(1, 3, 32, 32)
    px = A.classic_proxies(torch.cat([flat, noise]))
    assert list(px.columns) == ["jpeg_bpp", "png_bpp", "edge_density"]
    assert (px.iloc[1] > px.iloc[0]).all() and _in_range(px.edge_density, 0, 1)
    _write_png(tmp_path / "a.png", 0)
    assert len(A.classic_proxies([tmp_path / "a.png"])) == 1


def test_correlations_with_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    df = pd.DataFrame({"category": ["a"] * 30 + ["b"] * 30, "human_score": x,
                       "kc_hat": np.r_[np.exp(x[:30]), -x[30:]], "continuous_kc": rng.normal(size=60),
                       "png_bpp": np.ones(60)})
    corr = A.compute_human_correlations(df, n_boot=200)
    assert len(corr) == 6 and set(corr.measure) == {"kc_hat", "continuous_kc", "png_bpp"}
    a = corr[(corr.category == "a") & (corr.measure == "kc_hat")].iloc[0]
    b = corr[(corr.category == "b") & (corr.measure == "kc_hat")].iloc[0]
    assert a.spearman == pytest.approx(1.0) and b.spearman == pytest.approx(-1.0) and b.pearson == pytest.approx(-1.0)
    finite = corr.dropna(subset=["spearman"])
    for col in ("spearman", "spearman_low", "spearman_high", "pearson", "pearson_low", "pearson_high"):
        assert _in_range(finite[col], -1, 1)
    assert (finite.spearman_low <= finite.spearman + 1e-9).all() and (finite.spearman <= finite.spearman_high + 1e-9).all()
    assert corr[corr.measure == "png_bpp"].spearman.isna().all()  # a constant measure -> NaN
    fig = A.plot_human_correlations(corr)
    assert len(fig.data) == 3 and len(fig.data[0].y) == 2

    scores = pd.DataFrame({"kc_hat": [0, 16, 15, 3, 8], "human_score": [0, 100, 55, 12, 12], "category": "a"})
    heat = A.plot_human_heatmap(scores, max_tokens=16, kc_bucket=4, score_bucket=20)
    z = np.asarray(heat.data[0].z, dtype=float)
    assert z.shape == (5, 4) and np.nansum(heat.data[0].text) == 5
    np.testing.assert_allclose(np.nansum(z, 1)[[0, 2, 4]], 1.0)


# ----------------------------------------------------------------------------- 6. description length

def test_description_length(model):
    from karl.data.procedural import FAMILIES

    dl = A.compute_description_length(model, n_per_family=2, seed=0, epsilon=0.05)
    samples, corr = dl  # unpacks
    assert list(samples.columns[:6]) == ["family", "seed", "complexity", "bits", "kc_hat", "continuous_kc"]
    assert len(samples) == 2 * len(FAMILIES) and (samples.bits > 0).all()
    assert _in_range(samples.kc_hat, 0, model.max_tokens)
    assert list(corr.family) == [*FAMILIES, "all"]
    assert _in_range(corr.spearman_continuous.dropna(), -1, 1)
    fig = A.plot_description_length(dl)
    assert len(fig.data) == len(FAMILIES)


def test_save_csv_and_json(model, images, tmp_path):
    c = A.compute_kc_curve(model, images[:2], [0.05, 0.1])
    back = pd.read_csv(c.save_csv(tmp_path / "c.csv"))
    assert list(back.columns) == ["image", "epsilon", "kc_hat", "continuous_kc"] and len(back) == 4
    assert json.loads(c.save_json(tmp_path / "c.json").read_text())["kc_hat"] == c.kc_hat.tolist()


# ----------------------------------------------------------------------------- report and notebook

def test_report_builds_offline(model, savoias_root, tmp_path):
    from analysis.report import SECTIONS, build_report

    imgs = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = build_report(model, imgs, [f"im{i}" for i in range(6)], tmp_path / "r.html",
                       human_df=A.load_savoias(savoias_root), n_per_family=1, n_boot=20)
    text = out.read_text()
    assert "plotly" in text and re.search(r"<script[^>]*\bsrc=", text) is None  # js inlined: offline
    for title in SECTIONS.values():
        assert title in text
    csvs = {p.name for p in (tmp_path / "r_data").iterdir()}
    assert {"halting.csv", "kc_curve.csv", "token_sweep.csv", "delta.csv", "gallery.csv",
            "human_scores.csv", "human_correlations.csv", "description_length.csv"} <= csvs
    corr = pd.read_csv(tmp_path / "r_data" / "human_correlations.csv")
    assert set(corr.category) == {"Scenes", "Art"} and set(corr.measure) >= {"kc_hat@0.05", "continuous_kc@0.05",
                                                                           "jpeg_bpp", "edge_density"}


def test_report_cli_folder_and_csv(tmp_path):
    from analysis.report import main

    for i in range(3):
        _write_png(tmp_path / "data" / f"{i}.png", seed=i)
    pd.DataFrame({"path": [f"{i}.png" for i in range(3)], "score": [3, 1, 2]}).to_csv(tmp_path / "data" / "h.csv", index=False)
    assert main(["--preset", "tiny", "--data", str(tmp_path / "data"), "--max-images", "2",
                 "--human", str(tmp_path / "data" / "h.csv"), "--max-human-images", "2",
                 "--out", str(tmp_path / "cli.html"),
                 "--n-per-family", "1", "--bootstrap", "10", "--device", "cpu"]) == 0
    assert len(pd.read_csv(tmp_path / "cli_data" / "human_scores.csv")) == 2
    assert len(pd.read_csv(tmp_path / "cli_data" / "gallery.csv")) == 2


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel: run `python -m ipykernel install --user --name python3`")
    nb = nbformat.read(ROOT / "notebooks" / "analysis_walkthrough.ipynb", as_version=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}},
                                shutdown_kernel="immediate").execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
