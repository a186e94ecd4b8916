"""karl-eval: regimes, resumability, search baselines, halting accuracy, torchrun sharding."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from karl import build_model, save_pretrained
from karl.base_tokenizers import BaseGrid
from karl.evaluate import (EvalError, Task, halting_accuracy, main, markdown_tables, open_source,
                           summarize)
from karl.model import KARL, Encoding
from karl.search import (candidate_counts, pixel_l1, search_iterative, search_prefix_binary,
                         search_prefix_linear, subset_encoding)

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(40, 48), (64, 32), (32, 32), (50, 70), (33, 90), (48, 48)]  # (w, h): crops differ


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("release")
    save_pretrained(build_model("tiny", seed=0), d)
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        sub = d / ("a" if i < 3 else "b")  # recursive listing
        sub.mkdir(exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, rng.integers(0, 256, (h, w))], -1)
        Image.fromarray(img.astype(np.uint8)).save(sub / f"img{i}.png")
    return d


def read_rows(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def keys(rows: list[dict]) -> list[tuple]:
    return [(r["image_id"], r["regime"], r["epsilon"], r["budget"]) for r in rows]


# ----------------------------------------------------------------------------- CLI runs

def test_fixed_and_variable_regimes(release, folder, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["--checkpoint", str(release), "--data", str(folder), "--out", str(out), "--fixed", "4,16,99",
               "--epsilon", "0.05,0.09", "--search", "none", "--batch-size", "4", "--no-progress",
               "--save-examples", "2"])
    assert rc == 0
    rows = read_rows(out)
    assert len(rows) == 6 * 4 and len(set(keys(rows))) == len(rows)  # k=99 > max_tokens: skipped
    assert "skipping --fixed [99]" in capsys.readouterr().err
    for r in rows:
        assert r["regime"] in ("fixed", "variable") and r["lpips"] != "" and float(r["time_s"]) > 0
        if r["regime"] == "fixed":
            assert r["tokens"] == r["budget"] and r["epsilon"] == "" and r["reached"] == ""
        else:
            assert 0 <= int(r["tokens"]) <= 16 and r["reached"] in ("0", "1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 6 and summary["config"]["lpips_net"] == "alex"
    assert [f["k"] for f in summary["fixed"]] == [4, 16]
    assert [v["epsilon"] for v in summary["variable"]] == [0.05, 0.09]
    assert [h["epsilon"] for h in summary["halting"]] == [0.05, 0.09]
    l1s = [float(r["l1"]) for r in rows if r["regime"] == "variable" and r["epsilon"] == "0.05"]
    assert summary["halting"][0] == halting_accuracy(l1s, 0.05)
    md = (out / "results.md").read_text()
    for title in ("paper Table 1", "paper Table 2", "paper Table 3"):
        assert title in md
    # the ground truth saved next to the reconstructions is the model's input crop
    from karl.data.images import list_images, load_image, preprocess, to_pil
    first = list_images(folder)[0]
    saved = np.asarray(Image.open(out / "examples" / "000_input.png"))
    assert np.array_equal(saved, np.asarray(to_pil(preprocess(load_image(first), 32))))
    assert (out / "examples" / "001_fixed_k4_4tok.png").is_file()
    assert not (out / "examples" / "002_input.png").exists()


def test_resume_skips_done_rows(release, folder, tmp_path, capsys):
    out = tmp_path / "res"

    def cli(epsilon="0.05", lpips="none", extra=()):
        return ["--checkpoint", str(release), "--data", str(folder), "--out", str(out), "--fixed", "8",
                "--epsilon", epsilon, "--search", "prefix_binary", "--lpips-net", lpips, "--no-progress", *extra]

    assert main(cli(extra=["--max-images", "4"])) == 0
    first = {k: r for k, r in zip(keys(read_rows(out)), read_rows(out))}
    assert len(first) == 4 * 3
    capsys.readouterr()
    assert main(cli()) == 0
    assert "4 images already done (skipped), 2 to do" in capsys.readouterr().err
    rows = read_rows(out)
    assert len(rows) == 6 * 3 and len(set(keys(rows))) == len(rows)
    for k, r in zip(keys(rows), rows):  # rows of the first run are kept, not recomputed
        if k in first:
            assert r == first[k]
    assert main(cli()) == 0
    assert "6 images already done (skipped), 0 to do" in capsys.readouterr().err
    assert len(read_rows(out)) == 18
    # a new target on the same images adds only its rows
    assert main(cli(epsilon="0.05,0.09")) == 0
    assert len(read_rows(out)) == 18 + 2 * 6
    # a different protocol refuses to mix with existing rows
    assert main(cli(lpips="alex")) == 2
    assert "different run" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 5 images: singular covariance
def test_rfid_records_image_count(release, tmp_path, monkeypatch):
    import karl.metrics
    monkeypatch.setattr(karl.metrics, "inception_features",  # cheap stand-in for Inception-v3
                        lambda images, device=None: images.flatten(2).mean(-1).double().cpu())
    out = tmp_path / "res"
    assert main(["--checkpoint", str(release), "--data", "procedural:5", "--out", str(out), "--fixed", "16",
                 "--epsilon", "0.05", "--search", "none", "--lpips-net", "none", "--rfid", "--no-progress"]) == 0
    rfid = json.loads((out / "summary.json").read_text())["rfid"]
    assert rfid["fixed_k16"]["n"] == 5 and rfid["fixed_k16"]["reliable"] is False
    assert np.isfinite(rfid["variable_eps0.05"]["fid"])


def test_bad_inputs_fail_clearly(release, tmp_path, capsys):
    out = str(tmp_path / "res")
    assert main(["--checkpoint", str(tmp_path / "x.pth"), "--data", "procedural:2", "--out", out]) == 2
    err = capsys.readouterr().err  # a missing file is named; the unpickling hint is for files that exist
    assert "no such checkpoint file" in err and "x.pth" in err and "--trust-official" not in err
    assert main(["--checkpoint", str(release), "--data", "./no/such/dir", "--out", out]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(EvalError, match="could not load Hugging Face data set"):
        open_source("karl-test-org/no-such-dataset", 32)  # offline in the tests (conftest)


def test_data_sources(folder):
    src = open_source(str(folder), 32, max_images=4)  # the seeded subset every tool uses, in order
    assert src.ids == ["a/img1.png", "a/img2.png", "b/img3.png", "b/img4.png"]
    assert src.load(3).shape == (3, 32, 32)
    one = open_source(str(folder / "b" / "img4.png"), 32)
    assert one.ids == ["img4.png"] and one.load(0).shape == (3, 32, 32)
    proc = open_source("procedural:3", 32)
    assert proc.ids == ["procedural/00000", "procedural/00001", "procedural/00002"]
    assert torch.equal(proc.load(1), open_source("procedural", 32, max_images=2).load(1))


# ----------------------------------------------------------------------------- search baselines

class MonotoneFake(nn.Module):
    """A stand-in model whose error falls monotonically with the tokens kept:
    recon = x * f + 0.5 * (1 - f) + 0.02 with f = kept / max_tokens, so the exact minimal
    count is known by brute force and the full budget still misses epsilon < 0.02."""

    max_tokens = 16

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def base_encode(self, images):
        return BaseGrid(images, images)

    def encode(self, images, epsilon=0.05, budget=None, base_grid=None) -> Encoding:
        b, k = images.shape[0], budget or self.max_tokens
        lat = images.flatten(1)[:, None].expand(b, k, -1)
        zeros = torch.zeros(b, k)
        return Encoding(lat, zeros, zeros == 0, None, torch.full((b,), float(epsilon)))

    def keep_prefix(self, enc, k):
        return KARL.keep_prefix(self, enc, k)

    def decode(self, enc) -> torch.Tensor:
        f = (enc.keep.sum(-1).float() / self.max_tokens).view(-1, 1, 1, 1)
        x = enc.latents[:, 0].view(-1, 3, 8, 8)
        return x * f + 0.5 * (1 - f) + 0.02

    def reconstruct(self, images, num_tokens, epsilon=0.0, base_grid=None):
        return self.decode(self.encode(images, budget=num_tokens))


def brute_force_first(errors: list[float], counts: list[int], eps: float) -> tuple[int, int]:
    """(first count with error <= eps or the last count, number of tries) over a curve."""
    for n, (k, e) in enumerate(zip(counts, errors)):
        if e <= eps:
            return k, n + 1
    return counts[-1], len(counts)


def fake_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    amp = torch.tensor([0.1, 0.4, 0.8, 1.0, 0.6]).view(-1, 1, 1, 1)
    return 0.5 + amp * (torch.rand(5, 3, 8, 8, generator=g) - 0.5)


@pytest.mark.parametrize("step", [1, 3])
@pytest.mark.parametrize("eps", [0.03, 0.06, 0.01])
def test_searches_find_the_exact_minimum_on_a_monotone_model(step, eps):
    model, x = MonotoneFake(), fake_images()
    counts = candidate_counts(16, step)
    enc = model.encode(x)
    curves = torch.stack([pixel_l1(model.decode(model.keep_prefix(enc, torch.full((5,), k))), x)
                          for k in counts], 1)  # [5, n]
    expect = [brute_force_first(c.tolist(), counts, eps) for c in curves]
    lin = search_prefix_linear(model, x, eps, step=step)
    bina = search_prefix_binary(model, x, eps, step=step)
    it = search_iterative(model, x, eps, step=step)
    for res in (lin, bina, it):
        assert res.tokens.tolist() == [k for k, _ in expect]
        assert res.reached.tolist() == [bool((c <= eps).any()) for c in curves]
        assert torch.allclose(pixel_l1(res.recon, x), curves[torch.arange(5), [counts.index(k) for k, _ in expect]])
    assert lin.decoder_runs.tolist() == [n for _, n in expect] and lin.encoder_runs.tolist() == [1] * 5
    assert it.encoder_runs.tolist() == it.decoder_runs.tolist() == [n for _, n in expect]
    assert (bina.decoder_runs <= int(np.ceil(np.log2(len(counts) + 1)))).all()
    if eps == 0.01:  # the floor of 0.02 is never beaten: the full budget, marked not reached
        assert not lin.reached.any() and lin.tokens.eq(16).all()


def test_searches_match_brute_force_on_the_tiny_model(tiny_model, tiny_images):
    """Per image (batch 1, so every decode is bitwise the brute-force one): epsilon is put at
    the median of the image's prefix-error curve, so the search has to stop mid-way."""
    model = tiny_model
    counts = candidate_counts(16, 1)
    for i in range(tiny_images.shape[0]):
        x = tiny_images[i:i + 1]
        enc = model.encode(x, epsilon=0.05, budget=16)
        curve = [float(pixel_l1(model.decode(model.keep_prefix(enc, torch.tensor([k]))), x)) for k in counts]
        eps = float(np.median(curve))
        k_lin, n_lin = brute_force_first(curve, counts, eps)
        lin = search_prefix_linear(model, x, eps, step=1)
        assert (int(lin.tokens), int(lin.decoder_runs), bool(lin.reached)) == (k_lin, n_lin, True)
        # binary: a boundary of the curve (ok at k, not ok at k - 1), within the budget
        b = search_prefix_binary(model, x, eps, step=1)
        kb = int(b.tokens)
        assert 1 <= kb <= 16 and curve[kb - 1] <= eps and (kb == 1 or curve[kb - 2] > eps)
        assert int(b.decoder_runs) <= 5 and float(pixel_l1(b.recon, x)) == curve[kb - 1]
        # iterative: fixed-token reconstructions at 2, 4, ..., 16
        it_counts = candidate_counts(16, 2)
        it_curve = [float(pixel_l1(model.reconstruct(x, num_tokens=k), x)) for k in it_counts]
        it = search_iterative(model, x, float(np.median(it_curve)), step=2)
        assert (int(it.tokens), int(it.encoder_runs)) == brute_force_first(it_curve, it_counts, float(np.median(it_curve)))
    # a whole batch in lockstep: counts within the budget, one to 16 decodes each
    res = search_prefix_linear(model, tiny_images, 0.2, step=1)
    assert ((res.tokens >= 1) & (res.tokens <= 16)).all()
    assert ((res.decoder_runs >= 1) & (res.decoder_runs <= 16)).all()


def test_subset_encoding_keeps_rows(tiny_model, tiny_images):
    enc = tiny_model.encode(tiny_images, budget=8)
    sub = subset_encoding(enc, torch.tensor([2, 0]))
    assert torch.equal(sub.latents, enc.latents[[2, 0]]) and sub.keep.shape == (2, 8)


# ----------------------------------------------------------------------------- summary

def test_halting_accuracy_hand_made():
    h = halting_accuracy([0.02, 0.045, 0.055, 0.065, 0.085], 0.05, margins=(0.0, 0.01, 0.02, 0.03, 0.04))
    assert h["n"] == 5
    assert h["exceed"] == {"0": 0.6, "0.01": 0.4, "0.02": 0.2, "0.03": 0.2, "0.04": 0.0}
    assert h["mean_l1_exceeding"] == pytest.approx((0.055 + 0.065 + 0.085) / 3)
    assert h["mean_excess"] == pytest.approx((0.005 + 0.015 + 0.035) / 3)
    none = halting_accuracy([0.01, 0.02], 0.05)
    assert none["exceed"]["0"] == 0.0 and none["mean_l1_exceeding"] is None


def test_summarize_compares_single_pass_with_search():
    def row(i, regime, tokens, time_s, dec):
        return {"image_id": f"im{i}", "regime": regime, "epsilon": "0.05", "budget": "16", "tokens": str(tokens),
                "reached": "1", "encoder_runs": "1", "decoder_runs": str(dec), "l1": "0.04", "psnr": "30",
                "ssim": "0.9", "lpips": "", "time_s": str(time_s)}
    rows = [row(0, "variable", 8, 0.01, 1), row(1, "variable", 12, 0.01, 1),
            row(0, "prefix_binary", 4, 0.05, 4), row(1, "prefix_binary", 12, 0.03, 5)]
    tasks = [Task("variable", 0.05, 16), Task("prefix_binary", 0.05, 16)]
    s = summarize(rows, tasks)
    sp = s["single_pass_vs_search"][0]
    assert sp["oracle"] == "prefix_binary" and sp["karl_tokens"] == 10 and sp["oracle_tokens"] == 8
    assert sp["token_ratio"] == pytest.approx(1.25)
    assert sp["speedup_vs_search"]["prefix_binary"] == pytest.approx(4.0)
    cmp = s["search"][0]["vs_karl"]
    assert cmp["share_karl_more"] == 0.5 and cmp["mean_abs_diff"] == 2
    assert s["search"][0]["decoder_runs"] == 4.5 and s["variable"][0]["lpips"] is None
    assert "| prefix_binary | 0.05 | 8.0 |" in markdown_tables(s)


# ----------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def test_torchrun_two_processes_merge(release, folder, tmp_path):
    args = ["--checkpoint", str(release), "--data", str(folder), "--fixed", "16", "--epsilon", "0.05",
            "--search", "prefix_binary", "--lpips-net", "none", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "karl.evaluate", *args, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 6 * 3 and len(set(keys(rows))) == 18
    assert not list((out / "parts").glob("*.csv"))  # merged into per_image.csv
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 6 and summary["config"]["world_size"] == 2
    # same numbers as one process
    single = tmp_path / "single"
    assert main([*args, "--out", str(single)]) == 0
    ref = {k: r for k, r in zip(keys(read_rows(single)), read_rows(single))}
    assert set(ref) == set(keys(rows))
    for k, r in zip(keys(rows), rows):
        assert r["tokens"] == ref[k]["tokens"] and float(r["l1"]) == pytest.approx(float(ref[k]["l1"]), abs=1e-4)


def test_runner_is_driven_by_an_explicit_context_without_argparse(tmp_path):
    from karl.eval import Context, Plan, evaluate_shard, open_source
    from karl.eval.results import _read_csv
    model = build_model("tiny", seed=0).eval()
    plan = Plan(fixed=[4], epsilons=[], searches=[], budget=model.max_tokens, linear_step=1,
                binary_step=1, iterative_step=1, prefix_condition=None, lpips_net=None)
    ctx = Context(model, open_source("procedural:3", model.image_size), plan, tmp_path, torch.device("cpu"),
                  batch_size=2, save_examples=1, progress=False)
    assert evaluate_shard(ctx, plan.tasks()) is None  # with_rfid=False: no collector
    rows = _read_csv(tmp_path / "per_image.csv")
    assert [(r["regime"], r["tokens"]) for r in rows] == [("fixed", "4")] * 3
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["000_fixed_k4_4tok.png", "000_input.png"]
