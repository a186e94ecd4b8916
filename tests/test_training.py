"""Training engine: phases, gradients, labels, loss goes down, resume, NaN guard, DDP."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import free_port
from karl import build_model, load_pretrained, save_pretrained
from karl.config import load_config
from karl.losses import PixelLoss, PixelReconLoss, TokenReconLoss
from karl.train.phases import budget_choices, eic_phase, halting_labels, karl_iteration, ltc_phase

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *overrides):
    return load_config(preset_name="tiny", overrides=[f"train.out_dir={tmp_path}", *overrides])


def _batches(seed=0, n=8, size=32):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images (low-frequency), so the tiny model can make progress quickly.
    while True:
        low = torch.rand(n, 3, 4, 4, generator=g)
        yield torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)


def test_budget_choices_follow_the_release():
    cfg = load_config(preset_name="small")
    assert budget_choices(cfg.train) == list(range(16, 369, 16))


def test_halting_labels_match_delta():
    labels = halting_labels(2, max_tokens=16, budget=12, device=torch.device("cpu"))
    assert labels.shape == (2, 16)
    assert labels[:, :12].sum() == 0 and labels[:, 12:].eq(1).all()     # Delta = 16 - 12 = 4
    assert halting_labels(1, 16, 16, torch.device("cpu")).sum() == 0     # Delta = 0: keep all
    assert halting_labels(1, 16, 24, torch.device("cpu")).sum() == 0     # T > max: Delta = 0


def _grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None
            and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("quantize", [False, True])
def test_every_trainable_parameter_gets_a_gradient_in_each_phase_stage1(quantize):
    cfg = load_config(preset_name="tiny")
    model = build_model(replace(cfg.model, quantize=quantize, codebook_size=32), seed=0).train()
    model.base.requires_grad_(False)   # stage 1: the base tokenizer is frozen (paper)
    images = next(_batches())
    grid = model.base_encode(images)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    recon = TokenReconLoss(model.base).with_target(grid.target)
    gen = torch.Generator().manual_seed(0)
    eic, e_t = eic_phase(model, images, model.embed_grid(images, grid.features), 8, recon, cfg.train, gen)
    missing = trainable - _grads_of(model, eic.loss)
    assert missing == set(), f"EIC: no gradient for {sorted(missing)}"
    ltc = ltc_phase(model, images, model.embed_grid(images, grid.features), 8, e_t, recon, cfg.train)
    missing = trainable - _grads_of(model, ltc.loss)
    assert missing == set(), f"LTC: no gradient for {sorted(missing)}"
    assert e_t.shape == (8,) and (e_t >= 0).all()


def test_every_parameter_gets_a_gradient_stage2():
    cfg = load_config(preset_name="tiny")
    model = build_model("tiny", seed=0).train()
    images = next(_batches())
    pixel = PixelReconLoss(model.base, images, PixelLoss(None, 0.0))
    loss, parts, recon = karl_iteration(model, images, pixel, cfg.train, torch.Generator().manual_seed(0),
                                        budget=8, base_trainable=True)
    missing = {n for n, _ in model.named_parameters()} - _grads_of(model, loss)
    assert missing == set(), f"stage 2: no gradient for {sorted(missing)}"
    assert recon["ltc"].shape == images.shape


def test_recon_losses_return_loss_parts_and_images():
    model = build_model("tiny", seed=0).eval()
    images = next(_batches(n=2))
    grid = model.base_encode(images)
    head = torch.randn(2, model.base.head_dim, model.grid_size, model.grid_size)
    unbound = TokenReconLoss(model.base)
    with pytest.raises(ValueError, match="with_target"):
        unbound(head)
    bound = unbound.with_target(grid.target)
    assert unbound.target is None and bound.target is grid.target       # binding makes a new object
    loss, parts, recon = bound(head)
    assert loss.ndim == 0 and parts and recon is None                     # stage 1: no pixels
    pixel = PixelReconLoss(model.base, images, PixelLoss(None, 0.0))
    assert pixel.with_target(grid.target) is pixel                        # compares with the images
    loss, parts, recon = pixel(head)
    assert recon.shape == images.shape and parts == {"l1": pytest.approx((recon - images).abs().mean().item())}


def test_phase_loss_weights_the_reconstruction_with_token_loss_weight():
    """Stage 2's pixel loss goes through the same weight as stage 1's token loss."""
    model = build_model("tiny", seed=0).train()
    images = next(_batches(n=2))
    pixel = PixelReconLoss(model.base, images, PixelLoss(None, 0.0))

    def total(weight):
        cfg = load_config(preset_name="tiny", overrides=["stage=2", f"train.token_loss_weight={weight}"]).train
        loss, parts, _ = karl_iteration(model, images, pixel, cfg, torch.Generator().manual_seed(0), budget=8)
        return loss.item(), parts["eic/l1"]

    (one, l1_eic), (three, _) = total(1.0), total(3.0)
    assert three - one > 2 * l1_eic * 0.99   # at least 2 x EIC's pixel L1 more (LTC's adds to it)


def test_short_training_lowers_the_loss(tmp_path):
    from karl.train.loop import Trainer
    cfg = _cfg(tmp_path, "stage=1", "train.max_steps=60", "train.log_every=10", "train.ckpt_every=1000",
               "train.lr=3e-3")
    trainer = Trainer(cfg, show_progress=False)
    trainer.run(_batches())
    logs = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r and "event" not in r]
    assert len(losses) == 6
    assert losses[-1] < losses[0], losses
    assert (tmp_path / "release" / "model.safetensors").exists()


def test_stage0_and_stage2_run(tmp_path):
    from karl.train.loop import Trainer
    t0 = Trainer(_cfg(tmp_path / "s0", "stage=0", "train.max_steps=3", "train.lpips_weight=0"),
                 show_progress=False)
    t0.run(_batches())
    cfg2 = _cfg(tmp_path / "s2", "stage=2", "train.max_steps=3", "train.gan_mid_step=1",
                f"train.init_from={tmp_path / 's0' / 'release'}", "train.lpips_weight=0")
    t2 = Trainer(cfg2, show_progress=False)
    parts = t2.run(_batches())
    assert t2.step == 3 and "d_loss" in parts and "ltc/g_loss" in parts and "eic/d_weight" in parts


def test_base_from_takes_only_the_base_and_the_ema_starts_from_loaded_weights(tmp_path):
    from karl.train.loop import Trainer
    t0 = Trainer(_cfg(tmp_path / "s0", "stage=0", "train.max_steps=2", "train.lpips_weight=0"),
                 show_progress=False)
    t0.run(_batches())
    stage0 = {k: v.clone() for k, v in t0.model.state_dict().items()}
    t1 = Trainer(_cfg(tmp_path / "s1", "stage=1", "train.max_steps=1", "train.seed=7",
                      f"train.base_from={tmp_path / 's0' / 'release'}"), show_progress=False)
    ema0 = t0.ema.state_dict()
    for k, v in t1.model.state_dict().items():
        if k.startswith("base."):
            assert torch.equal(v, ema0[k]), k          # the stage-0 release holds the EMA weights
            assert torch.equal(t1.ema.state_dict()[k], v.float()), k
    # KARL's own weights keep this run's init (seed 7), not stage 0's random ones
    assert not torch.equal(t1.model.latent_tokens, stage0["latent_tokens"])
    from safetensors.torch import save_file
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"x": torch.zeros(1)}, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((tmp_path / "s0" / "release" / "config.json").read_text())
    with pytest.raises(ValueError, match="no base tokenizer weights"):
        Trainer(_cfg(tmp_path / "s1b", "stage=1", "train.max_steps=1", f"train.base_from={bad}"),
                show_progress=False)


def test_kill_and_resume_continues_from_saved_step(tmp_path):
    from karl.train.loop import Trainer
    cfg = _cfg(tmp_path, "stage=1", "train.max_steps=10", "train.ckpt_every=4")
    first = Trainer(cfg, show_progress=False)
    data = _batches()
    with pytest.raises(KeyboardInterrupt):
        for i in range(10):
            first.train_step(next(data))
            if first.step % 4 == 0:
                first.save_state()
            if first.step == 6:
                raise KeyboardInterrupt  # simulated kill after the step-4 checkpoint
    resumed = Trainer(cfg, show_progress=False)
    assert resumed.step == 4
    assert torch.equal(resumed.model.latent_tokens, torch.load(tmp_path / "state.pt", weights_only=True)
                       ["model"]["latent_tokens"])
    resumed.run(_batches(seed=1))
    assert resumed.step == 10
    state = torch.load(tmp_path / "state.pt", weights_only=True)   # plain types only
    assert state["step"] == 10


def test_nonfinite_loss_stops_without_overwriting_state(tmp_path):
    from karl.train.loop import NonFiniteLossError, Trainer
    cfg = _cfg(tmp_path, "stage=1", "train.max_steps=5", "train.ckpt_every=2")
    trainer = Trainer(cfg, show_progress=False)
    data = _batches()
    for _ in range(2):
        trainer.train_step(next(data))
    trainer.save_state()
    before = (tmp_path / "state.pt").read_bytes()
    with torch.no_grad():
        trainer.model.latent_tokens.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.run(data)
    assert (tmp_path / "state.pt").read_bytes() == before


def test_save_load_round_trip_is_bitwise(tmp_path, tiny_images):
    model = build_model("tiny", seed=3).eval()
    save_pretrained(model, tmp_path / "rel")
    loaded = load_pretrained(tmp_path / "rel")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    enc_a, enc_b = model.encode(tiny_images), loaded.encode(tiny_images)
    assert torch.equal(model.decode(enc_a), loaded.decode(enc_b))


def test_loading_a_mismatched_checkpoint_names_the_keys(tmp_path):
    from karl.checkpoint import CheckpointError
    save_pretrained(build_model("tiny"), tmp_path / "rel")
    cfg = json.loads((tmp_path / "rel" / "config.json").read_text())
    cfg["model"]["width"] = 48
    (tmp_path / "rel" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(tmp_path / "rel")
    with pytest.raises(CheckpointError, match="not a KARL release"):
        load_pretrained(tmp_path / "nothing")


def test_cli_rejects_config_typos(tmp_path):
    from karl.cli import train_main
    assert train_main(["--preset", "tiny", "train.lrr=1"]) == 2


@pytest.mark.slow
def test_torchrun_two_process_gloo_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "karl.cli", "train", "--preset", "tiny", "stage=1", "train.max_steps=3",
           "train.batch_size=4", f"train.out_dir={tmp_path}", "data.source=synthetic"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    start = next(r for r in logs if r.get("event") == "start")
    assert start["world_size"] == 2
    assert any(r.get("event") == "end" and r["step"] == 3 for r in logs)


def test_sigterm_saves_state_and_the_same_command_resumes(tmp_path):
    import signal
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    def cmd(max_steps):
        return [sys.executable, "-m", "karl.cli", "train", "--preset", "tiny", "stage=1",
                f"train.max_steps={max_steps}", "train.ckpt_every=100000", "train.log_every=1",
                f"train.out_dir={tmp_path}", "data.source=synthetic"]
    proc = subprocess.Popen(cmd(100000), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and sum(1 for l in log.read_text().splitlines() if '"loss"' in l) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    events = [json.loads(l) for l in log.read_text().splitlines()]
    stopped = next(r for r in events if r.get("event") == "interrupted")["step"]
    assert stopped >= 3
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == stopped
    res = subprocess.run(cmd(stopped + 2), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(l) for l in log.read_text().splitlines()]
    assert [r["step"] for r in events if r.get("event") == "resume"] == [stopped]
    assert events[-1]["event"] == "end" and events[-1]["step"] == stopped + 2


# ----------------------------------------------------------------------------- resume (issue 15)

def _resume_cfg(out, *extra):
    return _cfg(out, "stage=1", "train.max_steps=6", "train.batch_size=4", "train.log_every=1",
                "train.ckpt_every=2", "data.source=synthetic", *extra)


def _crash_at(monkeypatch, step, exc):
    """Make Trainer.train_step raise ``exc`` when it is about to run ``step``."""
    from karl.train.loop import Trainer
    real = Trainer.train_step

    def step_or_crash(self, images):
        if self.step == step:
            raise exc
        return real(self, images)
    monkeypatch.setattr(Trainer, "train_step", step_or_crash)


def _weights(out):
    from safetensors.torch import load_file
    return load_file(str(out / "release" / "model.safetensors"))


def test_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """The data stream continues where it stopped: same batches, bitwise-equal weights."""
    from karl.train.loop import train
    train(_resume_cfg(tmp_path / "straight"), show_progress=False)
    _crash_at(monkeypatch, 3, KeyboardInterrupt())      # Ctrl-C: saves at step 3, mid-interval
    with pytest.raises(KeyboardInterrupt):
        train(_resume_cfg(tmp_path / "resumed"), show_progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["step"] == 3
    train(_resume_cfg(tmp_path / "resumed"), show_progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"


def test_resume_after_a_crash_does_not_repeat_log_steps(tmp_path, monkeypatch):
    from karl.train.loop import train
    out = tmp_path / "run"
    _crash_at(monkeypatch, 5, RuntimeError("simulated crash"))   # 5 steps logged, last save at 4
    with pytest.raises(RuntimeError, match="simulated"):
        train(_resume_cfg(out), show_progress=False)
    monkeypatch.undo()
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')      # a line cut by the kill
    train(_resume_cfg(out), show_progress=False)
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    resume = next(r for r in records if r.get("event") == "resume")
    assert resume["step"] == 4 and resume["dropped_log_records"] == 2   # step 5 and the cut line


def test_fresh_start_after_a_kill_before_the_first_save_starts_a_new_log(tmp_path, monkeypatch):
    """Issue 25: killed (-9) before its first checkpoint, the rerun starts fresh; its log must
    not carry the dead run's steps, and the old log is kept, renamed, with nothing lost."""
    from karl.train.loop import train
    out = tmp_path / "run"
    _crash_at(monkeypatch, 1, RuntimeError("simulated kill"))   # step 1 logged, first save at 2
    with pytest.raises(RuntimeError, match="simulated"):
        train(_resume_cfg(out), show_progress=False)
    monkeypatch.undo()
    assert not (out / "state.pt").exists()
    dead = (out / "log.jsonl").read_text()
    train(_resume_cfg(out), show_progress=False)
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert records[0] == {**records[0], "event": "new_log", "previous_log": "log.jsonl.1"}
    assert (out / "log.jsonl.1").read_text() == dead
    from karl.train.state import set_aside_log   # a second fresh start: .2, .1 untouched
    assert set_aside_log(out / "log.jsonl").name == "log.jsonl.2" and (out / "log.jsonl.1").read_text() == dead
    assert set_aside_log(out / "log.jsonl") is None


def test_state_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    import karl.train.loop as loop
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(loop.os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                      real_fsync(fd)))
    monkeypatch.setattr(loop.os, "replace", lambda a, b: (calls.append(("replace", str(a))), real_replace(a, b)))
    trainer = loop.Trainer(_resume_cfg(tmp_path), show_progress=False)
    trainer.save_state()
    tmp = str(tmp_path / "state.pt.tmp")
    assert calls.index(("fsync", tmp)) < calls.index(("replace", tmp)), calls
    assert calls[-1] == ("fsync", str(tmp_path)), "the folder is synced after the rename"


def _one_line_error(capsys, argv):
    from karl.cli import train_main
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    msg = [l for l in err if l.startswith("karl-train:") and "warning" not in l]
    assert len(msg) == 1 and "Traceback" not in "\n".join(err), err
    return msg[0]


def test_resume_errors_say_what_is_wrong(tmp_path, capsys):
    from karl.train.loop import Trainer
    Trainer(_resume_cfg(tmp_path), show_progress=False).save_state()
    good = (tmp_path / "state.pt").read_bytes()
    base = ["stage=1", f"train.out_dir={tmp_path}", "data.source=synthetic", "train.max_steps=1"]
    msg = _one_line_error(capsys, ["--preset", "cpu", *base])
    assert "another model (preset 'tiny'" in msg and "width 32 vs 128" in msg and "--restart" in msg
    msg = _one_line_error(capsys, ["--preset", "tiny", "model.width=48", *base])
    assert "width 32 vs 48" in msg
    msg = _one_line_error(capsys, ["--preset", "tiny", *base, "stage=2"])
    assert "stage-1 run; this is stage 2" in msg
    (tmp_path / "state.pt").write_bytes(b"")
    assert "is empty (0 bytes)" in _one_line_error(capsys, ["--preset", "tiny", *base])
    (tmp_path / "state.pt").write_bytes(good[: len(good) // 2])
    assert "truncated or corrupt" in _one_line_error(capsys, ["--preset", "tiny", *base])


def test_all_undecodable_folder_says_so(tmp_path, capsys):
    from karl.train.loop import DataSetError, infinite_batches, DistInfo
    from karl.data.datasets import ImageFolderDataset
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "PNG")
    for i in range(3):   # a valid header, then nothing: passes the cheap check, fails to decode
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue()[:60])
    ds = ImageFolderDataset(tmp_path, 16)
    with pytest.raises(DataSetError, match=r"none of the 3 image files under .* can be decoded \(0.png: "):
        next(infinite_batches(ds, 8, DistInfo()))
    msg = _one_line_error(capsys, ["--preset", "tiny", "stage=0", f"train.out_dir={tmp_path / 'o'}",
                                   "data.source=folder", f"data.path={tmp_path}", "train.lpips_weight=0"])
    assert "none of the 3 image files" in msg


def test_folder_stream_resumes_exactly(tmp_path):
    """Map-style sets: batch k of a resumed stream equals batch k of an uninterrupted one,
    random crops included, across epoch boundaries."""
    from karl.train.loop import infinite_batches, DistInfo
    from karl.data.datasets import ImageFolderDataset
    from PIL import Image
    import itertools
    import numpy as np
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 16, seed=3)
    straight = list(itertools.islice(infinite_batches(ds, 3, DistInfo(), seed=1), 8))  # 3 per epoch
    for start in (2, 4, 7):
        resumed = next(infinite_batches(ImageFolderDataset(tmp_path, 16, seed=3), 3, DistInfo(), seed=1,
                                        start_batch=start))
        assert torch.equal(resumed, straight[start]), start
    assert not torch.equal(straight[0], straight[3]), "epochs reshuffle and re-crop"


def test_help_lists_every_preset_and_the_default_out_dir(capsys):
    from karl.cli import train_main
    from karl.config import PRESETS
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in PRESETS) and "gpu128" in text
    assert "default runs/default" in text


def test_stage1_from_a_random_base_warns(tmp_path):
    from karl.cli import _random_base_warning
    cfg = _cfg(tmp_path, "stage=1")
    assert "randomly initialised conv autoencoder" in _random_base_warning(cfg, resuming=False)
    assert _random_base_warning(cfg, resuming=True) is None
    assert _random_base_warning(_cfg(tmp_path, "stage=1", f"train.base_from={tmp_path}"), False) is None
    assert _random_base_warning(_cfg(tmp_path, "stage=0"), False) is None
