"""karl-complexity: inputs, scores equal to the Python API, resume, skipped files, exit codes."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from karl import build_model, save_pretrained
from karl.complexity import FIELDS, collect_images, main, resolved_precision
from karl.data.images import load_image, preprocess


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    model = build_model("tiny", seed=3).eval()
    save_pretrained(model, d)
    return d, model


@pytest.fixture(scope="module")
def monotone_release(tmp_path_factory):
    """Hand-set weights whose KC-hat varies with the image and falls with epsilon."""
    from app.demo_model import build_monotone_model
    d = tmp_path_factory.mktemp("monotone")
    model = build_monotone_model("tiny").eval()
    save_pretrained(model, d)
    return d, model


@pytest.fixture
def folder(tmp_path):
    """Five readable images (one in a subfolder, different sizes) and one corrupt file."""
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray((rng.random((36 + 4 * i, 44, 3)) * 255).astype("uint8")).save(d / f"{i}.png")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(d / "sub" / "flat.jpg")
    (d / "bad.png").write_bytes(b"not an image")
    return d


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == FIELDS
        return list(reader)


def run(args, release_dir, out) -> int:
    return main([*map(str, args), "--checkpoint", str(release_dir), "--out", str(out), "--no-progress"])


def test_scores_equal_the_python_api_per_image(monotone_release, folder, tmp_path):
    rdir, model = monotone_release
    out = tmp_path / "res" / "scores.csv"
    assert run([folder, "--epsilon", "0.02", "0.2", "--batch-size", "2"], rdir, out) == 0
    rows = read_rows(out)
    assert len(rows) == 5 * 2  # 5 readable images x 2 epsilons; bad.png skipped
    assert (out.parent / "skipped.txt").read_text().startswith(f"{folder / 'bad.png'}\tnot an image")
    for r in rows:  # each row equals a one-image encode/decode through the Python API
        x = preprocess(load_image(r["path"]), model.image_size)[None]
        enc = model.encode(x, epsilon=float(r["epsilon"]))
        l1 = (model.decode(enc) - x).abs().mean().item()
        assert int(r["kc_hat"]) == int(enc.kc_hat[0])
        assert float(r["continuous_kc"]) == pytest.approx(float(enc.continuous_kc[0]), abs=1e-4)
        assert float(r["l1"]) == pytest.approx(l1, abs=1e-5)
        assert float(r["epsilon_bin"]) == {"0.02": 0.02, "0.2": 0.2}[r["epsilon"]]
    kc = {(Path(r["path"]).name, r["epsilon"]): int(r["kc_hat"]) for r in rows}
    assert len(set(kc.values())) > 2  # the comparison above is not between constants
    assert all(kc[n, "0.2"] < kc[n, "0.02"] for n, _ in kc)


def test_resume_skips_done_rows_and_repairs_a_cut_line(release, folder, tmp_path, capsys):
    rdir, _ = release
    out = tmp_path / "scores.csv"
    assert run([folder, "--epsilon", "0.05"], rdir, out) == 0
    first = out.read_text()
    capsys.readouterr()
    assert run([folder, "--epsilon", "0.05"], rdir, out) == 0
    assert "scored 0 images now; 5 images have rows" in capsys.readouterr().out
    assert out.read_text() == first
    # a crash mid-row: the partial line is dropped and that image is scored again
    lines = first.splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:7])
    assert run([folder, "--epsilon", "0.05", "0.1"], rdir, out) == 0
    rows = read_rows(out)
    assert sorted((r["path"], r["epsilon"]) for r in rows) == sorted(
        (r["path"], e) for r in read_rows_from(first) for e in ("0.05", "0.1"))


def read_rows_from(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


def test_a_rerun_with_another_model_or_precision_refuses(release, folder, tmp_path, capsys):
    rdir, _ = release
    out = tmp_path / "scores.csv"
    assert run([folder], rdir, out) == 0
    other = tmp_path / "other"
    save_pretrained(build_model("tiny", seed=4), other)
    capsys.readouterr()
    assert run([folder], rdir, out) == 0
    assert run([folder, "--precision", "bf16"], rdir, out) == 2
    assert "differs in precision" in capsys.readouterr().err
    assert run([folder], other, out) == 2
    assert "differs in checkpoint" in capsys.readouterr().err
    assert run([folder, "--overwrite", "--precision", "bf16"], rdir, out) == 0  # bf16 autocast on CPU runs
    assert len(read_rows(out)) == 5


def test_inputs_globs_lists_and_dedup(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder.parent)
    lst = tmp_path / "lists" / "files.txt"
    lst.parent.mkdir()
    lst.write_text(f"# a comment\n\n{folder / '0.png'}\nimgs/1.png\nmissing.png\n")
    items = collect_images([str(lst), "imgs/*.png", str(folder / "sub" / "flat.jpg")])
    ids = [it.id for it in items]
    assert ids[:3] == [str(folder / "0.png"), "imgs/1.png", "missing.png"]
    assert "imgs/0.png" in ids and "imgs/bad.png" in ids and ids[-1].endswith("flat.jpg")
    assert len(ids) == len(set(ids))
    assert len(collect_images(["imgs"])) == 6  # folders are recursive


def test_imagefolder_input(release, folder, tmp_path):
    rdir, _ = release
    out = tmp_path / "scores.csv"
    assert run([f"imagefolder:{folder}"], rdir, out) == 0
    rows = read_rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == ["0.png", "1.png", "2.png", "3.png", "flat.jpg"]
    assert "bad.png" in (tmp_path / "skipped.txt").read_text()


def test_exit_codes(release, tmp_path, capsys):
    rdir, _ = release
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    assert run([bad], rdir, tmp_path / "o.csv") == 1  # nothing readable
    skipped = sorted((tmp_path / "skipped.txt").read_text().splitlines())
    assert skipped[0] == f"{bad / 'a.png'}\tempty file"
    assert skipped[1].startswith(f"{bad / 'b.jpg'}\t") and len(skipped) == 2
    assert run([tmp_path / "nope"], rdir, tmp_path / "o.csv") == 2
    assert "no such folder" in capsys.readouterr().err
    assert run([bad, "--epsilon", "x"], rdir, tmp_path / "o.csv") == 2
    assert run([bad], tmp_path / "no_model", tmp_path / "o.csv") == 2


def test_precision_choice(monkeypatch):
    """karl.precision's names: auto is measured on the model (fp32 without one); bad names fail."""
    monkeypatch.delenv("KARL_PRECISION_AUTO", raising=False)
    cpu = torch.device("cpu")
    assert resolved_precision("fp32", cpu) == "fp32" and resolved_precision("bf16", cpu) == "bf16"
    assert resolved_precision("auto", cpu) == "fp32"
    with pytest.raises(RuntimeError, match="--precision"):
        resolved_precision("int4", cpu)