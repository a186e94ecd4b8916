"""The app's rough edges a new user met (issue 25): damaged checkpoints, the Tokens tab's
inputs and plots, the human panel, server paths, refused files, the queue size.

Handlers are called directly; one launched app (module fixture) covers what only the
server does (FileData outside the allowed folders, the queue). tests/test_app.py holds the
rest of the app's tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from app import models as M

ROOT = Path(__file__).resolve().parents[1]


def _app_main():
    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- damaged models

@pytest.mark.parametrize("trust", [False, True])
def test_app_diagnoses_a_pth_that_is_not_a_checkpoint(tmp_path, capsys, trust):
    """Random bytes or a truncated file: the converter's diagnosis, never "pass --trust-official"."""
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                  dtype=torch.uint8).numpy().tobytes())
    cut = tmp_path / "truncated.pth"
    torch.save({"ema": {"x": torch.zeros(128, 128)}, "epoch": 1}, cut)
    cut.write_bytes(cut.read_bytes()[:3000])
    mod = _app_main()
    for path, expected in ((rnd, "not a PyTorch checkpoint"), (cut, "truncated or corrupt")):
        argv = ["--checkpoint", str(path), "--no-warmup"] + ["--trust-official"] * trust
        assert mod.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err and "trust" not in err.split(str(path))[-1], err
        assert err.count(str(path)) == 1, err       # the path once, not "X: X: ..."


def test_app_refuses_a_release_with_a_nan_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    from karl import build_model, save_pretrained
    rel = save_pretrained(build_model("tiny", seed=0), tmp_path / "rel")
    state = load_file(str(rel / "model.safetensors"))
    name = sorted(state)[5]
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, str(rel / "model.safetensors"))
    with pytest.raises(M.ModelLoadError) as err:
        M.load_app_model(rel)
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors" in msg and name in msg and "non-finite" in msg
