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
    ("nope/", "no such file or folder"),        # a mistyped folder never becomes a Hub request
    ("my photos", "no such file or folder"),
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

def _consumers(text: str, size: int = 32, max_images: int | None = None):
    """{tool: (ids, images [N, 3, size, size])} of one spec as karl-eval, the report and
    karl-complexity read it (the report's ``max_images`` defaults to 64, as its CLI)."""
    from analysis.report import load_data
    from karl.complexity import _Images, collect_images
    from karl.eval import open_source

    src = open_source(text, size, max_images)
    out = {"eval": (src.ids, torch.stack([src.load(i) for i in range(len(src.ids))]))}
    images, names, _ = load_data(text, size, max_images=max_images or 64)
    out["report"] = (names, images)
    if max_images is None:  # karl-complexity scores every image of a spec
        items = collect_images([text])
        cx = [_Images(items, size)[i] for i in range(len(items))]
        out["complexity"] = ([it.id for it in items], torch.stack([t for _, t, _ in cx]))
    return out


def _assert_same_images(got: dict, ids: list[str]):
    """Every tool: the same images, in the same order; eval and the report also name them alike."""
    assert got["eval"][0] == got["report"][0] == ids
    first = got["eval"][1]
    assert all(torch.equal(first, x) for _, x in got.values()), {k: x.shape for k, (_, x) in got.items()}
    if "complexity" in got:
        assert len(got["complexity"][0]) == len(ids)


def test_every_tool_reads_a_folder_as_the_same_images(folder):
    got = _consumers(str(folder))
    _assert_same_images(got, ["a/img0.png", "a/img1.png", "a/img2.png", "b/img3.png", "b/img4.png"])
    assert [Path(i).relative_to(folder).as_posix() for i in got["complexity"][0]] == got["eval"][0]


def test_every_tool_reads_a_glob_a_file_and_a_file_list_alike(folder, tmp_path):
    got = _consumers(f"{folder}/b/*.png")
    _assert_same_images(got, [str(folder / "b" / "img3.png"), str(folder / "b" / "img4.png")])
    assert got["complexity"][0] == got["eval"][0]
    got = _consumers(str(folder / "a" / "img1.png"))
    _assert_same_images(got, ["img1.png"])
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two images\n{folder / 'b' / 'img4.png'}\n\nimgs/a/img0.png\n")
    got = _consumers(str(lst))  # a relative line is read relative to the list's folder
    _assert_same_images(got, [str(folder / "b" / "img4.png"), str(folder / "a" / "img0.png")])


def test_every_tool_reads_procedural_n_as_seeds_0_to_n_minus_1():
    from karl.data.procedural import generate

    got = _consumers("procedural:3")
    _assert_same_images(got, ["procedural/00000", "procedural/00001", "procedural/00002"])
    assert got["complexity"][0] == got["eval"][0]
    assert torch.equal(got["eval"][1][2], generate(seed=2, size=32).image)
    # a plain ``procedural`` is max_images images (64 without a limit): the first of them alike
    _assert_same_images(_consumers("procedural", max_images=2), ["procedural/00000", "procedural/00001"])


def test_max_images_is_the_same_seeded_subset_in_every_tool(folder):
    from karl.data.imageset import open_images, subset_indices

    got = _consumers(str(folder), max_images=3)
    every = open_images(folder, 32).ids
    _assert_same_images(got, [every[i] for i in subset_indices(5, 3)])
    assert "3 of 5 images" in open_images(folder, 32, max_images=3).description
    assert open_images(folder, 32, max_images=3, seed=1).ids != got["eval"][0]  # the report's --seed
    assert subset_indices(5, 3) == sorted(subset_indices(5, 3)) and subset_indices(5, 9) == list(range(5))


def test_every_tool_reads_an_imagefolder_alike(folder):
    pytest.importorskip("datasets")
    got = _consumers(f"imagefolder:{folder}")
    _assert_same_images(got, [f"imagefolder:{folder}/train/{i}" for i in range(5)])
    assert sorted(Path(i).name for i in got["complexity"][0]) == [f"img{i}.png" for i in range(5)]


def test_every_tool_reads_the_corpus_as_its_photos(folder, tmp_path, monkeypatch):
    root = tmp_path / S.DEFAULT_CORPUS
    root.mkdir(parents=True)
    for p in sorted(folder.rglob("*.png"))[:2]:
        (root / p.name).write_bytes(p.read_bytes())
    (root / "manifest.json").write_text(json.dumps({"entries": []}))  # present: nothing is built
    monkeypatch.chdir(tmp_path)
    got = _consumers("corpus")
    _assert_same_images(got, ["img0.png", "img1.png"])
    assert [Path(i).name for i in got["complexity"][0]] == ["img0.png", "img1.png"]


def test_the_apps_example_set_is_what_every_tool_reads(folder, monkeypatch):
    pytest.importorskip("gradio")
    from app import ui
    from karl import build_model

    monkeypatch.setattr(ui, "EXAMPLES_DIR", folder)
    images, names, notes = ui.load_analysis_set(build_model("tiny", seed=0), "examples", None)
    ev_ids, ev = _consumers(str(folder))["eval"]
    assert names == ev_ids and torch.equal(images, ev) and notes == []


def test_training_eval_split_of_a_folder_is_the_same_images(folder):
    from karl.data.datasets import build_dataset

    evalset = build_dataset(DataConfig(source="folder", path=str(folder)), 32, "eval")
    ev_ids, ev = _consumers(str(folder))["eval"]
    assert torch.equal(torch.stack([evalset[i] for i in range(len(evalset))]), ev)


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
