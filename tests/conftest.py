import os
import re
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_model():
    from karl import build_model
    return build_model("tiny", seed=0).eval()


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g)


# --------------------------------------------------------------------------- reference fixtures
# The reference files live in tests/fixtures/ so a fresh clone runs the tests that read them;
# the shared checkout (../shared) is only a fallback for trees that predate the copy.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared"
_SHARED_EQUIVALENT = {
    "official_state_dict": SHARED / "reference" / "official_state_dict",
    "lpips": SHARED / "fixtures" / "lpips",
}
KEY_LINE = re.compile(r"^(\S+) \(([\d, ]*)\) (\S+)$")


def fixture_dir(name: str) -> Path:
    """tests/fixtures/<name>, or its copy in the shared checkout when the local one is absent."""
    local = FIXTURES / name
    if local.is_dir():
        return local
    return _SHARED_EQUIVALENT.get(name, local)


def read_key_list(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Parse an official key list (``name (d0, d1, ...) dtype`` per line): name -> (shape, dtype name).

    Skips the calling test when the file is absent; an unparsable line fails it, because a silently
    dropped line would hide a key from the layout checks.
    """
    if not path.exists():
        pytest.skip(f"official key list not available: {path}")
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        m = KEY_LINE.match(line.strip())
        assert m, f"unparsable line in {path.name}: {line!r}"
        out[m.group(1)] = (tuple(int(s) for s in m.group(2).split(",") if s.strip()), m.group(3))
    return out


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for tests that start a rendezvous server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
