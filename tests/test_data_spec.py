"""karl.data.spec: one data spec string, parsed once, read the same way by karl-eval, the report,
karl-complexity, the app's image sets and training's DataConfig."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from karl.config import DataConfig
from karl.data import spec as S
from karl.data.spec import DataSpec, DataSpecError, HFLoadError, MissingPathError, parse_data_spec, spec_from_config


@pytest.fixture
def folder(tmp_path) -> Path:
    """Five small images in two subfolders (the listing is recursive and sorted)."""
    d = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (30, 40), (33, 33), (50, 20), (32, 32)]):
        sub = d / ("a" if i < 3 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    return d


# ----------------------------------------------------------------------------- parsing

def test_every_form_parses_to_its_kind(folder, tmp_path, monkeypatch):
    assert parse_data_spec("procedural") == DataSpec("procedural", "procedural")
    assert parse_data_spec("procedural:7").count == 7
    corpus = parse_data_spec("corpus")
    assert corpus.kind == "corpus" and corpus.path == Path(S.DEFAULT_CORPUS)
    imf = parse_data_spec(f"imagefolder:{folder}")
    assert (imf.kind, imf.path, imf.name, imf.default_split) == ("imagefolder", folder, "imagefolder", "train")
    assert parse_data_spec(str(folder)).kind == "folder"
    assert parse_data_spec(folder / "a" / "img0.png").kind == "file"
    glob = parse_data_spec(f"{folder}/**/*.png")
    assert glob.kind == "glob" and len(glob.image_files()) == 5
    hub = parse_data_spec("org/name")
    assert (hub.kind, hub.name, hub.path, hub.default_split) == ("hf", "org/name", None, "validation")
    assert parse_data_spec("  procedural:2 ").count == 2  # surrounding blanks are ignored
    # keywords win over folders of the same name; ./corpus names the folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    assert parse_data_spec("corpus").kind == "corpus" and parse_data_spec("./corpus").kind == "folder"


@pytest.mark.parametrize("text, words", [
    ("", "empty data spec"),
    ("procedural:x", "procedural:N with N >= 1"),
    ("procedural:0", "procedural:N with N >= 1"),
    ("./no/such/dir", "no such file or folder"),
    ("a/b/c", "no such file or folder"),
    ("missing.png", "no such file or folder"),
    ("imagefolder:/no/such/dir", "no such folder"),
    ("/no/such/*.png", "the glob matches no file"),
])
def test_bad_specs_give_one_line_errors(text, words):
    with pytest.raises(DataSpecError, match=words) as info:
        parse_data_spec(text)
    msg = str(info.value)
    assert "\n" not in msg and (repr(text) in msg or not text)


def test_a_spec_is_frozen_and_its_kind_checked():
    spec = parse_data_spec("procedural:3")
    with pytest.raises(AttributeError):
        spec.count = 4
    with pytest.raises(DataSpecError, match="procedural, corpus"):
        DataSpec("imagenet", "imagenet")
    with pytest.raises(DataSpecError, match="not files on disk"):
        spec.image_files()


def test_training_config_maps_onto_the_same_kinds(folder):
    assert spec_from_config(DataConfig()).kind == "procedural"
    assert spec_from_config(DataConfig(source="folder", path=str(folder))).path == folder
    assert spec_from_config(DataConfig(source="mixed")).path == Path(S.DEFAULT_CORPUS)
    assert spec_from_config(DataConfig(source="corpus", path="x")).path == Path("x")
    hub = spec_from_config(DataConfig(source="hf", hf_name="org/name"))
    assert (hub.kind, hub.name) == ("hf", "org/name")
    imf = spec_from_config(DataConfig(source="hf", path=str(folder)))
    assert (imf.kind, imf.text) == ("imagefolder", f"imagefolder:{folder}")
    for cfg, words in ((DataConfig(source="folder"), "needs data.path"),
                       (DataConfig(source="hf"), "needs data.hf_name")):
        with pytest.raises(ValueError, match=words):
            spec_from_config(cfg)


# ----------------------------------------------------------------------------- loaders

def test_hf_loader_fails_at_once_offline_with_one_line():
    # conftest sets HF_DATASETS_OFFLINE=1: an uncached name fails without trying the network
    with pytest.raises(HFLoadError, match="HF_DATASETS_OFFLINE") as info:
        S.load_hf_split(parse_data_spec("karl-test-org/surely-not-cached"), ["validation", "train"])
    assert "\n" not in str(info.value) and "split 'validation'" in str(info.value)  # no retry on other splits


def test_hf_loader_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    """Not offline, the Hub does not answer: one line at once, without datasets' retries."""
    import datasets
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets was asked"))
    with pytest.raises(HFLoadError) as err:
        S.load_hf_split(parse_data_spec("org/some_set"), ["validation"])
    msg = str(err.value)
    assert "\n" not in msg and "cannot reach 127.0.0.1:9" in msg and "HF_DATASETS_OFFLINE=1" in msg


def test_hf_loader_reads_an_imagefolder_and_checks_the_column(folder):
    pytest.importorskip("datasets")
    ds, split = S.load_hf_split(parse_data_spec(f"imagefolder:{folder}"), ["validation", "train"])
    assert split == "train" and len(ds) == 5  # an imagefolder has no validation split: the next one
    with pytest.raises(DataSpecError, match="no column 'img'"):
        S.load_hf_split(parse_data_spec(f"imagefolder:{folder}"), ["train"], image_key="img")
    with pytest.raises(DataSpecError, match="not a Hugging Face data set"):
        S.load_hf_split(parse_data_spec("procedural"), ["train"])


def test_ensure_corpus_builds_only_when_the_manifest_is_missing(tmp_path, monkeypatch):
    from karl.data import corpus
    calls = []
    monkeypatch.setattr(corpus, "build_corpus", lambda root, verbose=True: calls.append(root) or [])
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / corpus.MANIFEST).write_text("{}")
    assert S.ensure_corpus(tmp_path / "ok") == tmp_path / "ok" and calls == []
    with pytest.raises(DataSpecError, match="no corpus photos are installed"):
        S.ensure_corpus(tmp_path / "empty")  # the (fake) build found nothing
    assert calls == [tmp_path / "empty"]


# ----------------------------------------------------------------------------- every consumer

def _consumers(text: str, size: int = 32):
    """(ids, images) of the spec as read by karl-eval, the report and karl-complexity."""
    from analysis.report import load_data
    from karl.complexity import _Images, collect_images
    from karl.eval import open_source

    src = open_source(text, size)
    ev = (src.ids, torch.stack([src.load(i) for i in range(len(src.ids))]))
    images, names, _ = load_data(text, size, max_images=64)
    items = collect_images([text])
    cx = [_Images(items, size)[i] for i in range(len(items))]
    return ev, (names, images), ([it.id for it in items], torch.stack([t for _, t, _ in cx]))


def test_eval_report_and_complexity_read_the_same_folder(folder):
    (ev_ids, ev), (rep_names, rep), (cx_ids, cx) = _consumers(str(folder))
    assert ev_ids == rep_names == ["a/img0.png", "a/img1.png", "a/img2.png", "b/img3.png", "b/img4.png"]
    assert [Path(i).relative_to(folder).as_posix() for i in cx_ids] == ev_ids
    assert torch.equal(ev, rep) and torch.equal(ev, cx)


def test_eval_report_and_complexity_read_the_same_glob_and_file(folder):
    (ev_ids, ev), (rep_names, rep), (cx_ids, cx) = _consumers(f"{folder}/b/*.png")
    assert ev_ids == rep_names == cx_ids == [str(folder / "b" / "img3.png"), str(folder / "b" / "img4.png")]
    assert torch.equal(ev, rep) and torch.equal(ev, cx)
    (ev_ids, ev), (rep_names, rep), (_, cx) = _consumers(str(folder / "a" / "img1.png"))
    assert ev_ids == rep_names == ["img1.png"] and torch.equal(ev, rep) and torch.equal(ev, cx)


def test_every_consumer_reads_procedural_n_and_an_imagefolder(folder):
    pytest.importorskip("datasets")
    from analysis.report import load_data
    from karl.complexity import collect_images
    from karl.eval import open_source

    assert len(open_source("procedural:3", 32).ids) == 3
    assert len(load_data("procedural:3", 32, max_images=64)[1]) == 3
    assert [it.id for it in collect_images(["procedural:3"])] == ["procedural/00000", "procedural/00001",
                                                                 "procedural/00002"]
    text = f"imagefolder:{folder}"
    assert len(open_source(text, 32).ids) == len(load_data(text, 32)[1]) == len(collect_images([text])) == 5


def test_eval_and_complexity_read_the_corpus_as_its_folder(folder, tmp_path, monkeypatch):
    from karl.complexity import collect_images
    from karl.eval import open_source

    root = tmp_path / S.DEFAULT_CORPUS
    root.mkdir(parents=True)
    for p in sorted(folder.rglob("*.png"))[:2]:
        (root / p.name).write_bytes(p.read_bytes())
    (root / "manifest.json").write_text(json.dumps({"entries": []}))  # present: nothing is built
    monkeypatch.chdir(tmp_path)
    assert open_source("corpus", 32).ids == ["img0.png", "img1.png"]
    assert [Path(it.id).name for it in collect_images(["corpus"])] == ["img0.png", "img1.png"]


def test_the_apps_example_set_is_the_same_folder_spec(folder, monkeypatch):
    pytest.importorskip("gradio")
    from app import ui
    from karl import build_model

    monkeypatch.setattr(ui, "EXAMPLES_DIR", folder)
    images, names, notes = ui.load_analysis_set(build_model("tiny", seed=0), "examples", None)
    files = parse_data_spec(folder).image_files()
    assert names == [f.name for f in files] and images.shape == (5, 3, 32, 32) and notes == []


def test_consumers_turn_bad_specs_into_their_one_line_errors(tmp_path, capsys):
    from analysis.report import main as report_main
    from karl.complexity import ComplexityError, collect_images
    from karl.eval import EvalError, open_source

    with pytest.raises(EvalError, match="--data 'procedural:x'"):
        open_source("procedural:x", 32)
    with pytest.raises(ComplexityError, match="no such folder, image file, file list or glob match"):
        collect_images([str(tmp_path / "nope")])
    with pytest.raises(ComplexityError, match="is no local file or folder either"):
        collect_images(["karl-test-org/surely-not-cached"])
    assert report_main(["--preset", "tiny", "--data", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("analysis.report: error: --data") and "\n" not in err
    with pytest.raises(MissingPathError):
        parse_data_spec(str(tmp_path / "nope"))
