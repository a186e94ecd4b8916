"""Human complexity on Savoias (issue 14): a generated tree in the real layout.

The fake tree (analysis.savoias.make_fake_savoias): seven category folders, numbering from
0, .png (even) and .jpg (odd) files, ``Ground truth/xlsx`` + ``npy``. Image i is grey noise
of a seeded random amplitude a_i and row i of the xlsx is 100 a_i, so a correct pairing
makes every image's pixel spread rank exactly like its score; pairing by position after a
missing file breaks that.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import analysis as A
from analysis.human import compute_human_measures, correlation_table, input_size_note
from analysis.savoias import SAVOIAS_CATEGORIES, SavoiasLayoutError, make_fake_savoias

MISSING = ("Advertisement/3", "Advertisement/4", "Interior Design/0")


def _load_quiet(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = A.load_savoias(root, **kw)
    return df, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.fixture(params=["Visualizations", "Visualization"])
def fake(request, tmp_path):
    vis = request.param
    missing = (*MISSING, f"{vis}/5")
    return make_fake_savoias(tmp_path / "Savoias", n_per_category=6, size=16, missing=missing, vis_folder=vis), vis


# ----------------------------------------------------------------------------- loader

def test_pairs_by_number_and_lists_missing_in_one_warning(fake):
    root, vis = fake
    df, messages = _load_quiet(root)
    assert len(messages) == 1, messages
    assert "4 of 42 images are missing" in messages[0]
    for m in (*MISSING, f"{vis}/5"):
        assert m in messages[0]
    assert df.attrs["missing"] == [*MISSING[:2], MISSING[2], f"{vis}/5"]
    assert list(dict.fromkeys(df.category)) == list(SAVOIAS_CATEGORIES)  # both spellings -> "Visualizations"
    assert len(df) == 42 - 4 and {Path(p).suffix for p in df.path} == {".png", ".jpg"}
    for cat, key in SAVOIAS_CATEGORIES.items():
        gt = pd.read_excel(root / "Ground truth" / "xlsx" / f"global_ranking_{key}.xlsx")["gt"].to_numpy()
        g = df[df.category == cat]
        assert [int(Path(p).stem) for p in g.path] == list(g["index"])
        np.testing.assert_array_equal(g.human_score.to_numpy(), gt[g["index"].to_numpy()])
        # the score is a known function of the pixels: pixel spread ranks exactly like it
        spread = [np.asarray(Image.open(p).convert("L"), dtype=float).std() for p in g.path]
        assert spearmanr(spread, g.human_score).statistic == pytest.approx(1.0)


def test_strict_raises_on_missing(fake):
    root, _ = fake
    with pytest.raises(SavoiasLayoutError, match=r"4 images are missing.*Advertisement/3"):
        A.load_savoias(root, strict=True)
    df, _ = _load_quiet(root, categories=["Art", "visualization"])
    assert set(df.category) == {"Art", "Visualizations"}


def test_not_savoias_layout_is_a_clear_error(tmp_path):
    plain = tmp_path / "photos"
    plain.mkdir()
    Image.new("RGB", (8, 8)).save(plain / "0.png")
    with pytest.raises(SavoiasLayoutError, match="not a Savoias folder: it has no Images/"):
        A.load_savoias(plain)
    (plain / "Images" / "cats").mkdir(parents=True)
    with pytest.raises(SavoiasLayoutError, match="holds none of the Savoias categories"):
        A.load_savoias(plain)
    with pytest.raises(FileNotFoundError):
        A.load_human(tmp_path / "nowhere")


def test_inconsistent_trees_are_refused(tmp_path):
    root = make_fake_savoias(tmp_path / "S", n_per_category=4, size=8)
    art = root / "Images" / "Art"
    (art / "0.png").rename(art / "4.png")  # numbered 1..4 instead of 0..3
    with pytest.raises(SavoiasLayoutError, match="numbers its images from 0"):
        A.load_savoias(root)
    (art / "4.png").rename(art / "0.png")
    Image.new("RGB", (8, 8)).save(art / "1.png")  # 1.jpg exists too
    with pytest.raises(SavoiasLayoutError, match="share the number 1"):
        A.load_savoias(root)
    (art / "1.png").unlink()
    (root / "Images" / "Visualization").mkdir()
    with pytest.raises(SavoiasLayoutError, match="both"):
        A.load_savoias(root)
    (root / "Images" / "Visualization").rmdir()
    (root / "Ground truth" / "xlsx" / "global_ranking_sup.xlsx").unlink()
    with pytest.raises(SavoiasLayoutError, match="global_ranking_sup.xlsx is missing"):
        A.load_savoias(root)


def test_extra_folders_and_files_are_named_in_the_warning(tmp_path):
    root = make_fake_savoias(tmp_path / "S", n_per_category=3, size=8)
    (root / "Images" / "Extra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "Images" / "Art" / "cover.png")
    (root / "Images" / "Art" / "Thumbs.db").write_bytes(b"x")
    df, messages = _load_quiet(root)
    assert len(df) == 21 and len(messages) == 1
    assert "['Extra']" in messages[0] and "Art/cover.png" in messages[0] and "Thumbs" not in messages[0]


# ----------------------------------------------------------------------------- measures

def test_measures_stream_in_batches_on_256_crops(tiny_model, tmp_path, monkeypatch):
    import analysis.human as H
    from karl.data.images import load_image, preprocess

    root = make_fake_savoias(tmp_path / "S", n_per_category=3, size=20)
    df, _ = _load_quiet(root, categories=["Art", "Objects", "Scenes"])
    (Path(df.path[4])).write_bytes(b"not an image")  # one unreadable file
    loads, rows, calls = [], [], []
    real_load, real_encode = H._load_batch, tiny_model.encode
    monkeypatch.setattr(H, "_load_batch", lambda p, *a: loads.append(len(p)) or real_load(p, *a))
    monkeypatch.setattr(tiny_model, "encode", lambda x, **kw: rows.append(len(x)) or real_encode(x, **kw))
    with pytest.warns(UserWarning, match="1 unreadable images were skipped"):
        h = compute_human_measures(tiny_model, df, batch_size=4, show_progress=False,
                                   on_progress=lambda d, n: calls.append((d, n)))
    assert loads == [4, 4, 1] and max(rows) <= 4 and calls[-1] == (9, 9)
    assert len(h) == 8 and df.path[4] not in set(h.path)
    assert [c for c in h.columns if c.startswith("kc_hat@")] == ["kc_hat@0.02", "kc_hat@0.05", "kc_hat@0.1", "kc_hat@0.2"]
    np.testing.assert_array_equal(h["kc_hat"], h["kc_hat@0.05"])
    # rows keep their own image: model outputs and proxies recomputed one image at a time
    for i in (0, 5, 7):
        img = load_image(h.path[i])
        enc = real_encode(preprocess(img, tiny_model.image_size)[None], epsilon=0.05)
        assert h.kc_hat[i] == int(enc.kc_hat[0])
        assert h.continuous_kc[i] == pytest.approx(float(enc.continuous_kc[0]), abs=1e-4)
        px = A.classic_proxies(preprocess(img, 256)[None]).iloc[0]  # the 256-px centre crop
        np.testing.assert_allclose(h.loc[i, list(px.index)].to_numpy(float), px.to_numpy(), rtol=1e-9)
    note = input_size_note(h)
    assert "32 x 32" in note and "256 x 256 centre crop" in note
    assert h.attrs["model_input"] == 32 and h.attrs["proxy_size"] == 256


def test_constant_kc_hat_is_reported_as_constant():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 100, 20)
    df = pd.DataFrame({"category": "Art", "human_score": s, "kc_hat": 16, "continuous_kc": s + rng.normal(0, 5, 20),
                       "jpeg_bpp": s, "png_bpp": -s, "edge_density": s, "kc_hat@0.1": 16})
    corr = A.compute_human_correlations(df, n_boot=50)
    kc = corr[corr.measure == "kc_hat"].iloc[0]
    assert np.isnan(kc.spearman) and kc.note == "constant (16)"
    assert corr[corr.measure == "png_bpp"].spearman.iloc[0] == pytest.approx(-1.0)
    table = correlation_table(corr)
    assert table.loc[0, "KC-hat"] == "constant (16)" and table.loc[0, "KC-hat @ 0.1"] == "constant (16)"
    assert re.fullmatch(r"1\.00 \[1\.00, 1\.00\]", table.loc[0, "JPEG bpp"])
    assert list(table.columns[:3]) == ["category", "n", "KC-hat"]


# ----------------------------------------------------------------------------- report and app

def test_report_cli_on_a_real_layout_copy(tmp_path, capsys):
    from analysis.report import main

    root = make_fake_savoias(tmp_path / "Savoias", n_per_category=8, size=24,
                             missing=["Advertisement/3", "Visualization/0"], vis_folder="Visualization")
    args = ["--preset", "tiny", "--data", "procedural", "--max-images", "2", "--human", str(root),
            "--out", str(tmp_path / "r.html"), "--n-per-family", "1", "--bootstrap", "50", "--device", "cpu"]
    with pytest.warns(UserWarning, match="2 of 56 images are missing"):
        assert main(args) == 0
    text = (tmp_path / "r.html").read_text()
    for cat in SAVOIAS_CATEGORIES:
        assert f"<td>{cat}</td>" in text
    assert "the model saw every image at 32 x 32" in text and "Advertisement/3, Visualization/0" in text
    assert "human score vs KC-hat bucket" in text
    scores = pd.read_csv(tmp_path / "r_data" / "human_scores.csv")
    assert len(scores) == 54 and set(scores.category) == set(SAVOIAS_CATEGORIES)
    assert (scores.path.map(lambda p: int(Path(p).stem)) == scores["index"]).all()
    corr = pd.read_csv(tmp_path / "r_data" / "human_correlations.csv")
    jpeg = corr[corr.measure == "jpeg_bpp"]
    assert len(jpeg) == 7 and (jpeg.spearman > 0.9).all()  # the scores are the noise amplitude
    assert {"kc_hat@0.02", "kc_hat@0.2"} <= set(corr.measure)
    assert len(pd.read_csv(tmp_path / "r_data" / "human_kc_by_epsilon.csv")) == 7
    # Issue 25: the table in the terminal too, and a wide CSV.
    printed = capsys.readouterr().out
    assert "Spearman r with the human score" in printed and "cKC@0.2" in printed and "32 x 32" in printed
    assert len(pd.read_csv(tmp_path / "r_data" / "human_correlations_wide.csv")) == 7
    assert "at the full 16 tokens" in text   # the report names the constant columns

    assert main(args + ["--human-strict"]) == 2  # one-line error, no report
    assert main([*args[:7], str(tmp_path), *args[8:]]) == 2  # not Savoias


def test_app_panel_handler(tiny_model, tmp_path, monkeypatch):
    import gradio as gr

    import app.human
    from app.human import human_view

    monkeypatch.setattr(app.human, "N_BOOT", 50)

    root = make_fake_savoias(tmp_path / "Savoias", n_per_category=5, size=16, missing=["Art/1"])
    seen = []
    with pytest.warns(UserWarning, match="Art/1"):
        status, spear, pear, bars, heat, by_eps, files = human_view(
            tiny_model, str(root), 0.05, 3, progress=lambda f, desc="": seen.append(f))
    assert "21 images in 7 categories" in status and "Art/1" in status and "32 x 32" in status
    assert spear["visible"] and pear["visible"] and by_eps["visible"]   # hidden until a result
    spear, pear, by_eps = spear["value"], pear["value"], by_eps["value"]
    assert list(spear.category) == list(SAVOIAS_CATEGORIES) and "JPEG bpp" in pear.columns
    assert {"KC-hat @ 0.05", "sum(1 - p) @ 0.05", "KC-hat @ 0.2", "sum(1 - p) @ 0.2"} <= set(spear.columns)
    assert "at the full 16 tokens" in status   # the constant columns are named
    assert len(bars.data) >= 5 and np.asarray(heat.data[0].z).shape[1] == 8 and len(by_eps) == 7
    assert seen[-1] == pytest.approx(1.0)
    written = pd.read_csv(files[0])
    assert written.path.str.startswith("Images/").all()  # no server paths in the download
    with pytest.raises(gr.Error, match="not a Savoias folder"):
        human_view(tiny_model, str(tmp_path), 0.05, 0)
    with pytest.raises(gr.Error, match="Enter the folder"):
        human_view(tiny_model, "  ", 0.05, 0)
    # Issue 25: n = NaN answered "None"; the one rule gives a line.
    for n, msg in ((float("nan"), "images per category must be a finite number"),
                   (-2, "images per category must be 0"), ("x", "images per category must be a number")):
        with pytest.raises(gr.Error, match=msg):
            human_view(tiny_model, str(root), 0.05, n)
    # Served beyond this machine: refused before the file system is touched, whatever the path.
    for path in (str(root), "/no/such/folder", "/etc"):
        with pytest.raises(gr.Error) as err:
            human_view(tiny_model, path, 0.05, 0, server_paths=False)
        assert "Reading folders on the server is off" in str(err.value) and path not in str(err.value)


# ----------------------------------------------------------------------------- the study from the terminal (issue 25)

def test_human_study_cli_prints_the_table_and_writes_wide_csvs(tmp_path, capsys):
    """``python -m analysis.human_study DIR``: needs no --data, prints the per-category table,
    writes the wide CSV, reports KC-hat and continuous KC at several epsilons side by side
    with the proxies and names the constant columns."""
    from analysis.human_study import main

    root = make_fake_savoias(tmp_path / "Savoias", n_per_category=5, size=16, missing=["Art/1"])
    out = tmp_path / "study"
    argv = [str(root), "--preset", "tiny", "--bootstrap", "20", "--epsilons", "0.05,0.1,0.2",
            "--out-dir", str(out)]
    with pytest.warns(UserWarning, match="Art/1"):
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Spearman r with the human score" in text and "Art/1" in text and "32 x 32" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("category"))
    assert header.split() == ["category", "n", "KC@0.05", "cKC@0.05", "KC@0.1", "cKC@0.1", "KC@0.2",
                              "cKC@0.2", "JPEG", "PNG", "edges"]
    for cat in SAVOIAS_CATEGORIES:
        assert cat in text
    assert "Constant or nearly constant columns" in text and "at the full 16 tokens" in text
    wide = pd.read_csv(out / "human_correlations_wide.csv")
    assert list(wide.category) == list(SAVOIAS_CATEGORIES) and wide.loc[1, "n"] == 4   # Art lost one
    assert (wide["jpeg_bpp"] > 0.9).all() and {"jpeg_bpp low", "jpeg_bpp high", "jpeg_bpp pearson"} <= set(wide)
    assert {"kc_hat@0.1", "continuous_kc@0.1"} <= set(wide.columns) and "kc_hat" not in wide.columns
    sat = pd.read_csv(out / "human_saturation.csv").set_index("measure")
    assert sat.loc["kc_hat@0.05", "at_budget"] == 1.0 and sat.loc["kc_hat@0.05", "verdict"] == "constant"
    assert sat.loc["continuous_kc@0.05", "verdict"] != "constant"
    scores = pd.read_csv(out / "human_scores.csv")
    assert len(scores) == 34 and (scores.path.map(lambda p: int(Path(p).stem)) == scores["index"]).all()
    assert main([str(tmp_path), "--preset", "tiny", "--out-dir", str(out)]) == 2   # not Savoias
    assert "not a Savoias folder" in capsys.readouterr().err


def test_saturation_counts_images_at_the_budget():
    from analysis.human_study import saturation, saturation_note

    df = pd.DataFrame({"category": ["a"] * 5 + ["b"] * 5, "kc_hat@0.05": [32] * 9 + [20],
                       "continuous_kc@0.05": np.linspace(10, 31.9, 10), "kc_hat@0.2": [32] * 10})
    sat = saturation(df, max_tokens=32).set_index("measure")
    assert sat.loc["kc_hat@0.05", "at_budget"] == 0.9 and sat.loc["kc_hat@0.05", "verdict"] == "nearly constant"
    assert sat.loc["kc_hat@0.05", "constant_categories"] == 1 and sat.loc["kc_hat@0.2", "verdict"] == "constant"
    assert sat.loc["continuous_kc@0.05", "at_budget"] == pytest.approx(0.1)
    note = saturation_note(sat.reset_index(), 32)
    assert "KC-hat @ 0.05: 90% of images at the full 32 tokens" in note and "sum(1 - p)" not in note
    df["kc_hat@0.1"] = [5] * 5 + list(range(5))       # constant in one category only
    assert saturation(df, 32).set_index("measure").loc["kc_hat@0.1", "verdict"] == "partly constant"
