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
    from analysis.report import load_model as report_load
    from app.models import load_app_model
    from karl.evaluate import load_model as eval_load
    from karl.official import load_any
    eval_load(str(rel)), report_load(str(rel)), load_app_model(rel), load_any(rel)
    assert calls == [str(rel)] * 4
