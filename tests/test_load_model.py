"""karl.api.load_model: the one loader behind karl-eval, karl-complexity, the report and the app."""

import argparse

import pytest
import torch

from karl import build_model, load_model, save_pretrained
from karl.api import ModelNotFoundError
from karl.official import UntrustedCheckpointError


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_release_dir_and_its_safetensors_load_the_same_model(tmp_path):
    src = build_model("tiny", seed=3)
    rel = save_pretrained(src, tmp_path / "rel")
    a, b = load_model(rel), load_model(str(rel / "model.safetensors"))
    assert _same_weights(a, src) and _same_weights(b, src)
    assert not a.training and a.precision == "fp32"


def test_random_preset_is_seeded_and_in_eval_mode():
    a, b = load_model("random:tiny"), load_model("random:tiny")
    assert _same_weights(a, b) and not a.training and a.config == build_model("tiny").config


def test_missing_paths_and_untrusted_pth_fail_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*random:PRESET"):
        load_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is not a directory"):
        load_model(tmp_path / "notes.txt")
    pth = tmp_path / "k.pth"
    torch.save({"args": argparse.Namespace(), "model": {}}, pth)
    with pytest.raises(UntrustedCheckpointError, match="--trust-official"):
        load_model(pth)
    with pytest.raises(ModelNotFoundError, match="no such checkpoint file"):
        load_model(tmp_path / "missing.pth", trust=True)


def test_every_caller_routes_through_the_one_loader(tmp_path, monkeypatch):
    import karl.api
    calls = []
    real = karl.api.load_model
    monkeypatch.setattr(karl.api, "load_model", lambda spec, **kw: calls.append(str(spec)) or real(spec, **kw))
    rel = save_pretrained(build_model("tiny", seed=0), tmp_path / "rel")
    from app.models import load_app_model
    from karl.evaluate import load_model as eval_load
    from karl.model_args import load_model_from_args
    args = argparse.Namespace(checkpoint=str(rel), preset=None, trust_official=False, device="cpu",
                              precision="fp32")
    eval_load(str(rel)), load_model_from_args(args), load_app_model(rel)
    assert calls == [str(rel)] * 3


def _help(main, argv=()) -> str:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(out.getvalue().split())   # argparse wraps lines by width


def test_every_command_line_takes_the_same_model_options():
    """Issue 24: one helper (karl.model_args) adds them; the defaults used to differ (device)."""
    from analysis.human_study import main as human_main
    from analysis.report import main as report_main
    from app.cli import main as app_main
    from karl.complexity import main as complexity_main
    from karl.evaluate import main as eval_main
    helps = {"eval": _help(eval_main), "complexity": _help(complexity_main, ["x"]),
             "report": _help(report_main), "human_study": _help(human_main, ["x"]), "app": _help(app_main)}
    for name, text in helps.items():
        for option in ("--checkpoint MODEL", "--preset NAME", "--trust-official", "--device DEVICE",
                       "--precision {fp32,bf16,fp16,int8,auto}", "hf:ORG/NAME[@REV]",
                       "default: cuda if available, cuda:LOCAL_RANK under torchrun, else cpu"):
            assert option in text, (name, option)


def test_a_mistyped_folder_fails_at_once_on_the_command_line(tmp_path, capsys):
    """A bare org/name is a local path: no Hub request, one line naming the hf: spelling."""
    import time

    from karl.complexity import main as complexity_main
    from karl.evaluate import main as eval_main
    t = time.perf_counter()
    assert complexity_main(["procedural:2", "--checkpoint", "nope/x", "--out", str(tmp_path / "c.csv")]) == 2
    assert eval_main(["--checkpoint", "nope/x", "--data", "procedural:2", "--out", str(tmp_path / "e")]) == 2
    assert time.perf_counter() - t < 5
    err = capsys.readouterr().err
    assert err.count("checkpoint nope/x does not exist (for the Hugging Face Hub repo nope/x write hf:nope/x)") == 2


def test_non_finite_weights_are_refused_on_every_load_path(tmp_path):
    """Issue 25: a release with a NaN in one tensor must not load (it served "L1 is nan")."""
    from safetensors.torch import load_file, save_file

    from karl.checkpoint import CheckpointError
    rel = save_pretrained(build_model("tiny", seed=0), tmp_path / "rel")
    weights = rel / "model.safetensors"
    state = load_file(str(weights))
    names = list(state)
    state[names[3]] = state[names[3]].clone().view(-1).index_fill(0, torch.tensor([0, 1]), float("nan")).view(
        state[names[3]].shape)
    state[names[7]] = torch.full_like(state[names[7]], float("inf"))
    save_file(state, str(weights))
    for spec in (rel, weights):
        with pytest.raises(CheckpointError) as err:
            load_model(spec)
        msg = str(err.value)
        assert "\n" not in msg and str(weights) in msg and "non-finite weights in 2 of" in msg
        assert f"{names[3]} (2 NaN)" in msg and names[7] in msg and "inf" in msg
    pth = tmp_path / "damaged.pth"   # an authors'-style file, converted on load
    torch.save({"args": argparse.Namespace(), "ema": {"latent_tokens": torch.tensor([[0.0, float("nan")]])}}, pth)
    with pytest.raises(CheckpointError, match=r"damaged.pth: non-finite weights in 1 of 1 tensors, first "
                                              r"latent_tokens \(1 NaN\)"):
        load_model(pth, trust=True)


@pytest.mark.parametrize("blob,expected", [(b"\x13\x37" * 2048, "not a PyTorch checkpoint"),
                                           (b"", "empty"), (None, "truncated")])
def test_untrusted_pth_that_is_not_a_checkpoint_is_diagnosed_not_refused(tmp_path, blob, expected):
    """The converter's diagnosis, with or without trust; --trust-official is never suggested
    for a file that is not a checkpoint (issue 25)."""
    from karl.checkpoint import CheckpointError
    path = tmp_path / "random.pth"
    if blob is None:   # a real checkpoint cut in half
        torch.save({"args": argparse.Namespace(), "ema": {"x": torch.zeros(256, 256)}}, path)
        blob = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(blob)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_model(path, trust=trust)
        assert not isinstance(err.value, UntrustedCheckpointError)
        assert expected in str(err.value) and "--trust" not in str(err.value) and "unpickl" not in str(err.value)
