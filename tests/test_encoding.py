"""karl/model/encoding.py and KARL.sweep (issue 24, section 1): one sweep over many epsilons,
one epsilon -> bin rule, one keep rule for inference and training, one validation rule for
user-given epsilon / budget / cap on every surface (karl, the app, the command lines)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from karl import build_model
from karl.config import LOSS_BINS, load_config
from karl.model import (RequestError, Sweep, check_budget, check_count, check_epsilon, epsilon_to_bin,
                        halting_decision, parse_epsilons)

# Epsilons on, between, below and above the loss bins (0.075: the old nearest-in-log-space
# lookup of the analyses picked the 0.07 row; the model conditions on 0.09).
EPSILONS = [0.0, 0.003, 0.005, 0.0051, 0.05, 0.075, 0.07, 0.38, 0.5]


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def shifted():
    """A tiny model whose halting logits depend on the bin and the image, so programs differ
    between bins and images (the random tiny model keeps every token everywhere)."""
    model = build_model("tiny", seed=0).eval()
    offsets = torch.randn(len(LOSS_BINS), model.config.num_latent_tokens,
                          generator=torch.Generator().manual_seed(1)) * 3
    encoder = model.forward_encoder

    def forward_encoder(tokens2d, bin_idx, budget, grid=None):
        z, logits = encoder(tokens2d, bin_idx, budget, grid)
        return z, logits + offsets[bin_idx, :budget] + 4 * tokens2d.mean(dim=(1, 2))[:, None]
    model.forward_encoder = forward_encoder
    return model


def _images(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- sweep

@pytest.mark.parametrize("budget", [None, 8])
def test_sweep_equals_encode_per_epsilon(shifted, budget):
    x = _images()
    sw = shifted.sweep(x, EPSILONS, budget=budget)
    k = budget or shifted.max_tokens
    assert sw.keep.shape == sw.halting_probs.shape == (3, len(EPSILONS), k) and sw.budget == k
    assert sw.latents.shape[:3] == (3, len(EPSILONS), k)
    assert not bool((sw.kc_hat == sw.kc_hat[:1, :1]).all()), "programs should differ in this test"
    for j, eps in enumerate(EPSILONS):
        enc = shifted.encode(x, epsilon=eps, budget=budget)
        col = sw.encoding(j)
        assert torch.equal(col.keep, enc.keep) and torch.equal(col.epsilon, enc.epsilon)
        torch.testing.assert_close(col.halting_probs, enc.halting_probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(col.latents, enc.latents, atol=1e-5, rtol=0)
        assert torch.equal(sw.kc_hat[:, j], enc.kc_hat)
        torch.testing.assert_close(sw.continuous_kc[:, j], enc.continuous_kc, atol=1e-5, rtol=0)
    # per image too: a row of the batch equals that image alone
    one = shifted.sweep(x[1:2], EPSILONS, budget=budget)
    assert torch.equal(one.keep[0], sw.keep[1])


def test_sweep_defaults_to_every_loss_bin_and_reuses_a_base_grid(shifted):
    x = _images(2)
    sw = shifted.sweep(x)
    assert sw.epsilons.tolist() == list(LOSS_BINS) and sw.epsilons.dtype == torch.float64
    assert torch.equal(sw.bins, shifted.loss_bins)
    cached = shifted.sweep(x, base_grid=shifted.base_encode(x))
    assert torch.equal(cached.keep, sw.keep)
    with pytest.raises(ValueError, match="base_grid"):
        shifted.sweep(x, base_grid=shifted.base_encode(x[:1]))


def test_sweep_decisions_and_cat(shifted):
    x = _images(4)
    whole = shifted.sweep(x, [0.01, 0.1])
    parts = Sweep.cat([shifted.sweep(x[:1], [0.01, 0.1]).decisions(), shifted.sweep(x[1:], [0.01, 0.1]).decisions()])
    assert parts.latents is None and parts.token_ids is None
    assert torch.equal(parts.keep, whole.keep) and torch.equal(parts.kc_hat, whole.kc_hat)
    with pytest.raises(ValueError, match="no latents"):
        parts.encoding(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        whole.keep = whole.keep


def test_sweep_of_a_quantised_model_carries_token_ids():
    cfg = load_config(preset_name="tiny").model
    model = build_model(replace(cfg, quantize=True, codebook_size=32), seed=0).eval()
    x = _images(2)
    sw = model.sweep(x, [0.02, 0.2])
    assert sw.token_ids is not None and sw.token_ids.shape == sw.keep.shape
    assert torch.equal(sw.encoding(1).token_ids, model.encode(x, epsilon=0.2).token_ids)


# ----------------------------------------------------------------------------- epsilon -> bin

def test_one_epsilon_to_bin_rule_everywhere(tiny):
    """encode, KARL.loss_bin, Sweep.column, the analyses' rows and the app all round epsilon
    up to the same loss bin."""
    from analysis._common import epsilon_row
    from analysis.halting import HaltingData
    from app import inference as inf

    sw = tiny.sweep(_images(1))
    data = HaltingData.from_sweep(sw, tiny.config.halt_threshold)
    for eps in EPSILONS:
        idx = int(epsilon_to_bin(eps, tiny.loss_bins))
        assert float(tiny.encode(_images(1), epsilon=eps).epsilon[0]) == pytest.approx(LOSS_BINS[idx])
        assert tiny.loss_bin(eps) == (idx, LOSS_BINS[idx])
        assert sw.column(eps) == data.index_of(eps) == epsilon_row(LOSS_BINS, eps) == idx
    assert data.index_of(0.075) == LOSS_BINS.index(0.09)
    r = inf.tokenize(tiny, _images(1)[0].permute(1, 2, 0).numpy(), 0.075, None)
    assert r.epsilon_bin == 0.09 and r.epsilon == 0.075
    # rows at other epsilons than the bins: the smallest row >= epsilon, in any row order
    assert epsilon_row([0.2, 0.05, 0.1], 0.07) == 2 and epsilon_row([0.2, 0.05, 0.1], 0.9) == 0


# ----------------------------------------------------------------------------- keep rule

def test_keep_rule_boundary():
    logits = torch.tensor([[-2.0, 0.0, 1.0986123, 3.0]])
    t = float(torch.tensor(1.0986123).sigmoid())               # a probability exactly at the threshold
    probs, keep = halting_decision(logits.half(), t)
    assert probs.dtype == torch.float32
    probs, keep = halting_decision(logits, t)
    assert keep.tolist() == [[True, True, True, False]]        # <= threshold: kept


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.75])
def test_inference_and_training_keep_by_the_same_rule(threshold):
    """encode's keep and LTC's kept count both follow halting_decision at the config's threshold."""
    from karl.losses import TokenReconLoss
    from karl.train.phases import ltc_conditions, ltc_phase

    cfg = load_config(preset_name="tiny", overrides=["train.ltc_free_condition_fraction=0"])
    model = build_model(replace(cfg.model, halt_threshold=threshold), seed=0).eval()
    with torch.no_grad():  # spread the halting probabilities so that the threshold matters
        model.halting_mlp[-1].weight.mul_(300)
    x = _images(6)
    enc = model.encode(x, epsilon=0.05)
    assert torch.equal(enc.keep, enc.halting_probs <= threshold)
    assert 0 < int(enc.kc_hat.sum()) < enc.keep.numel(), "the threshold should split the tokens"

    grid = model.base_encode(x)
    tokens2d = model.embed_grid(x, grid.features)
    e_t = torch.full((6,), 0.05)
    with torch.no_grad():
        out = ltc_phase(model, x, tokens2d, model.max_tokens, e_t, TokenReconLoss(model.base).with_target(grid.target),
                        cfg.train, torch.Generator().manual_seed(0), grid.features)
        cond, _ = ltc_conditions(model, e_t, cfg.train, torch.Generator().manual_seed(0))
        _, logits = model.forward_encoder(tokens2d, cond, model.max_tokens, grid.features)
    _, keep = halting_decision(logits, threshold)
    assert torch.equal(keep, enc.keep)                        # the same bin, the same decisions
    assert out.parts["ltc/kept"] == pytest.approx(keep.float().sum(-1).mean().item())


# ----------------------------------------------------------------------------- validation rule

@pytest.mark.parametrize("value,match", [
    (-0.1, "epsilon must be between 0 and 0.38, got -0.1"), (float("nan"), "must be a finite number"),
    ("nan", "must be a finite number"), ("inf", "finite"), ("abc", "epsilon must be a number"),
    (None, "epsilon must be a number"), (True, "epsilon must be a number")])
def test_check_epsilon_refuses(value, match):
    with pytest.raises(RequestError, match=match) as err:
        check_epsilon(value, LOSS_BINS)
    assert "None" not in str(err.value) or value is None


def test_check_epsilon_accepts_and_clamps_with_a_notice():
    assert check_epsilon(0, LOSS_BINS) == (0.0, []) and check_epsilon(" 0.05 ", LOSS_BINS) == (0.05, [])
    eps, notes = check_epsilon(0.5, LOSS_BINS)
    assert eps == 0.5 and notes == ["epsilon 0.5 is above the largest loss bin; using 0.38"]


def test_counts_round_the_same_way_for_budget_and_cap():
    """Issue 24: a cap of 3.7 gave 3 maps but a budget of 3.7 gave 4; 0.5 passed and became 0."""
    assert check_budget(3.7, 16) == (4, []) and check_count(3.7, "cap", 256, "maps", "x") == (4, [])
    assert check_budget(2.5, 16)[0] == check_count("2.5", "cap", 256, "maps", "x")[0] == 3
    assert check_budget(0.5, 16)[0] == 1 and check_budget(None, 16) == check_budget("", 16) == (16, [])
    assert check_budget(1000, 16) == (16, ["budget 1000 is above the 16 tokens this model was trained "
                                           "to halt within; using 16"])
    for bad, match in ((0.4, "budget must be between 1 and 16 tokens, got 0.4"), (0, "got 0"),
                       ("nan", "finite"), ("x", "budget must be a number")):
        with pytest.raises(RequestError, match=match):
            check_budget(bad, 16)


def test_parse_epsilons():
    assert parse_epsilons(["0.05", "0.1,0.05", "0.10"], LOSS_BINS) == ([0.05, 0.1], [])
    assert parse_epsilons("none", LOSS_BINS) == ([], [])
    eps, notes = parse_epsilons("0,0.9", LOSS_BINS)
    assert eps == [0.0, 0.9] and len(notes) == 1 and "using 0.38" in notes[0]
    with pytest.raises(RequestError, match="--epsilon must be a finite number"):
        parse_epsilons("0.05,nan", LOSS_BINS)


def test_app_surfaces_follow_the_rule(tiny):
    """Tokenize, /complexity, Batch and the Tokens tab: the same values, the same answers."""
    from app import inference as inf
    from app import tokens_tab as tt

    assert inf.InputError is RequestError
    assert inf.check_request(tiny, "0.5", 3.7) == (0.5, 4, ["epsilon 0.5 is above the largest loss bin; "
                                                            "using 0.38"])
    eps, cap, notes = tt.check_tokens_request(tiny, "0.5", 3.7)
    assert (eps, cap) == (0.5, 4) and notes == ["epsilon 0.5 is above the largest loss bin; using 0.38"]
    for surface in (lambda e: inf.check_request(tiny, e, 4), lambda e: tt.check_tokens_request(tiny, e, 4)):
        with pytest.raises(RequestError, match="epsilon must be a finite number .*, got nan"):
            surface("nan")
        with pytest.raises(RequestError, match="epsilon must be between 0 and 0.38, got -1"):
            surface(-1)
    r = inf.tokenize(tiny, _images(1)[0].permute(1, 2, 0).numpy(), 0.05, 3.7)
    assert r.budget == 4 and r.keep.shape == (4,)


# ----------------------------------------------------------------------------- command lines

@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny):
    from karl import save_pretrained
    d = tmp_path_factory.mktemp("release")
    save_pretrained(tiny, d)
    return d


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(d / f"{i}.png")
    return d


def test_karl_complexity_follows_the_rule(release, images_dir, tmp_path, capsys, caplog):
    from karl.complexity import main

    out = tmp_path / "c.csv"
    for bad, msg in (("nan", "--epsilon must be a finite number"), ("-0.1", "--epsilon must be between 0 and 0.38"),
                     ("x", "--epsilon must be a number")):
        assert main([str(images_dir), "--epsilon", bad, "--checkpoint", str(release), "--out", str(out),
                     "--no-progress"]) == 2
        assert msg in capsys.readouterr().err
    assert main([str(images_dir), "--epsilon", "0", "0.5", "--checkpoint", str(release), "--out", str(out),
                 "--no-progress"]) == 0
    assert "epsilon 0.5 is above the largest loss bin; using 0.38" in caplog.text
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["epsilon"], r["epsilon_bin"]) for r in rows} == {("0", "0.005"), ("0.5", "0.38")}


def test_karl_eval_follows_the_rule(tiny, capsys):
    from karl.eval.cli import build_parser, make_plan
    from karl.eval.regimes import EvalError

    def plan(*extra):
        args = build_parser().parse_args(["--checkpoint", "x", "--data", "y", "--out", "z", "--fixed", "none",
                                          "--search", "none", *extra])
        return make_plan(args, tiny)
    assert plan("--epsilon", "0,0.05").epsilons == [0.0, 0.05]        # 0 was refused, unlike the app
    assert plan("--epsilon", "0.5").epsilons == [0.5]
    assert "epsilon 0.5 is above the largest loss bin; using 0.38" in capsys.readouterr().err
    for bad, msg in (("nan", "finite number"), ("-1", "between 0 and 0.38"), ("a", "must be a number")):
        with pytest.raises(EvalError, match=msg):
            plan("--epsilon", bad)
    with pytest.raises(EvalError, match="--prefix-condition must be a finite number"):
        plan("--epsilon", "0.05", "--prefix-condition", "nan")


@pytest.mark.parametrize("parse", ["report", "human_study"])
def test_analysis_command_lines_follow_the_rule(parse, capsys):
    from analysis._common import epsilon_arg, epsilons_arg

    assert epsilons_arg("0.05,0.1") == (0.05, 0.1) and epsilon_arg("0") == 0.0
    assert epsilon_arg("0.5") == 0.5 and "using 0.38" in capsys.readouterr().err
    for bad in ("nan", "-0.1", "abc"):
        with pytest.raises(argparse.ArgumentTypeError):
            epsilon_arg(bad)
    if parse == "report":
        from analysis.report import main
        with pytest.raises(SystemExit):
            main(["--epsilon", "nan"])
    else:
        from analysis.human_study import parse_args
        with pytest.raises(SystemExit):
            parse_args([".", "--epsilons", "0.05,nan"])
    assert "must be a finite number" in capsys.readouterr().err
