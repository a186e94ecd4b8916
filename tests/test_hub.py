"""Hugging Face Hub loading and pushing, offline: a local folder laid out like the Hub cache."""

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from karl import build_model, load_pretrained
from karl.checkpoint import CheckpointError
from karl.hub import HubUnavailableError, is_hub_id, split_hub_id, write_hub_folder

REPO = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"


def lay_out_snapshot(folder: Path, cache: Path, repo_id: str, sha: str = SHA) -> Path:
    """Copy ``folder`` into ``cache`` as huggingface_hub does: blobs, snapshot symlinks, refs/main."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(sha)
    return snap


@pytest.fixture
def hub_folder(tmp_path):
    """What push_to_hub uploads for a tiny model, with a MODEL_CARD.md that links an image."""
    model = build_model("tiny", seed=1).eval()
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    (card_dir / "MODEL_CARD.md").write_text("# Model card: tiny\n\n## Evaluation\n\nL1 0.5\n\n![curve](curve.png)\n")
    (card_dir / "curve.png").write_bytes(b"\x89PNG fake")
    folder = write_hub_folder(model, tmp_path / "upload", "org/tiny", card_dir / "MODEL_CARD.md",
                              extra={"training": {"preset": "tiny", "stage": 1, "step": 7}})
    return model, folder


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, hub_folder):
    model, folder = hub_folder
    cache = tmp_path / "hf_cache"
    lay_out_snapshot(folder, cache, "org/tiny")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model, cache


def test_hub_repos_are_named_explicitly_with_hf_prefix(tmp_path, monkeypatch):
    assert split_hub_id("org/name") == ("org/name", None)
    assert split_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    for s in ("hf:org/name", "hf:my-org/karl_cpu.v2", "hf:org/name@main"):
        assert is_hub_id(s), s
    for s in ("org/name", "name", "hf:name", "hf:a/b/c", "hf:org/", "hf:../name", "hf:org/..", "", "hf:o rg/n"):
        assert not is_hub_id(s), s
    assert not is_hub_id(Path("hf:org/name"))  # a Path is always local


def test_a_bare_org_slash_name_is_a_local_path_and_never_asks_the_hub(tmp_path, monkeypatch):
    """Issue 24: a mistyped folder fails at once, naming the hf: spelling, with no network."""
    from karl.api import ModelNotFoundError, load_model, parse_model_ref
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")  # TEST-NET-1: would hang if asked
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="does not exist.*write hf:org/name"):
        load_model("org/name")
    with pytest.raises(CheckpointError, match="not a KARL release directory"):
        load_pretrained("org/name")
    assert time.perf_counter() - t < 2
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_model_ref("org/name").kind == "release"  # an existing local folder
    assert parse_model_ref("hf:org/name@v1").kind == "hub" and parse_model_ref("hf:org/name@v1").revision == "v1"


def test_model_card_has_metadata_architecture_and_the_release_card(hub_folder):
    _, folder = hub_folder
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "curve.png"}
    card = (folder / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: karl-studio" in header and "license: mit" in header and "arxiv:2507.07995" in header
    assert "| input | 32x32 RGB in [0, 1] |" in card
    assert "| 1D tokens | up to 16 of 4 dims, continuous |" in card
    assert "| training step | 7 |" in card
    assert 'load_pretrained("hf:org/tiny")' in card and "--checkpoint hf:org/tiny" in card
    assert card.rstrip().endswith("![curve](curve.png)")  # MODEL_CARD.md appended verbatim


def _equal_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_from_hub_cache_offline_is_bitwise_equal(offline_cache):
    model, _ = offline_cache
    assert _equal_weights(load_pretrained("hf:org/tiny"), model)
    assert _equal_weights(load_pretrained(f"hf:org/tiny@{SHA}"), model)  # a pinned commit
    assert _equal_weights(load_pretrained("hf:org/tiny", revision=SHA), model)


def test_hf_home_layout_and_missing_repo_offline(tmp_path, monkeypatch, hub_folder):
    model, folder = hub_folder
    lay_out_snapshot(folder, tmp_path / "home" / "hub", "org/tiny")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_pretrained("hf:org/tiny").config == model.config
    with pytest.raises(HubUnavailableError) as err:
        load_pretrained("hf:org/other")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=1" in msg and "not in the Hub cache" in msg and "local release directory" in msg


def test_eval_and_app_accept_a_hub_id(offline_cache):
    model, _ = offline_cache
    from karl.evaluate import load_model
    assert load_model("hf:org/tiny").config == model.config
    from app.models import ModelLoadError, load_app_model
    loaded = load_app_model("hf:org/tiny")
    assert loaded.model.config == model.config and "Hugging Face Hub" in loaded.source
    with pytest.raises(ModelLoadError, match="local release directory"):
        load_app_model("hf:org/missing")


def test_push_refuses_offline_and_bad_ids(monkeypatch):
    from karl import push_to_hub
    model = build_model("tiny", seed=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="save_pretrained"):
        push_to_hub(model, "org/tiny")
    with pytest.raises(CheckpointError, match="org/name"):
        push_to_hub(model, "not-an-id")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: connections are refused


def test_unreachable_hub_fails_fast_with_a_hint_and_falls_back_to_the_cache(tmp_path, hub_folder):
    """A fresh process (huggingface_hub reads HF_HUB_OFFLINE at import) against a closed port."""
    _, folder = hub_folder
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from karl import build_model, load_pretrained, push_to_hub
        from karl.hub import HubUnavailableError
        from pathlib import Path
        t = time.perf_counter()
        try:
            load_pretrained("hf:org/tiny")
            print("LOADED-UNEXPECTEDLY")
        except HubUnavailableError as e:
            print("LOAD-ERROR", round(time.perf_counter() - t, 1), e)
        try:
            push_to_hub(build_model("tiny"), "org/tiny")
        except HubUnavailableError as e:
            print("PUSH-ERROR", e)
        from test_hub import lay_out_snapshot
        lay_out_snapshot(Path({str(folder)!r}), Path({str(cache)!r}), "org/tiny")
        print("CACHED", load_pretrained("hf:org/tiny").config.image_size)
    """)
    port = _closed_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"), "KARL_HUB_TIMEOUT": "5",
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    out = r.stdout
    assert r.returncode == 0, r.stderr[-2000:]
    load_line = next(line for line in out.splitlines() if line.startswith("LOAD-ERROR"))
    assert float(load_line.split()[1]) < 20, load_line
    assert f"127.0.0.1:{port} cannot be reached" in load_line and "local release directory" in load_line
    assert "PUSH-ERROR cannot reach the Hugging Face Hub" in out and "save_pretrained" in out
    assert "CACHED 32" in out  # unreachable Hub, cached snapshot: loads
    assert wall < 60, wall
