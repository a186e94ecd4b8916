"""The Hugging Face Hub: release directories as Hub model repos.

A Hub model repo holding ``config.json`` + ``model.safetensors`` (+ a ``README.md`` model
card) is a KARL release directory. :func:`karl.load_pretrained` stays the one loading path:

- A model argument names a Hub repo explicitly: ``"hf:org/name"`` (optionally
  ``"hf:org/name@revision"``; :data:`HUB_PREFIX`, :func:`is_hub_id`); a bare ``org/name`` is
  a local path, so a mistyped folder never turns into a network request.
- :func:`snapshot_dir`: a Hub id -> the local snapshot folder, through
  ``huggingface_hub.snapshot_download`` (the Hub cache, ``HF_HUB_CACHE`` / ``HF_HOME``);
  offline (``HF_HUB_OFFLINE=1``) it reads the cache only. An unreachable Hub fails within
  ``KARL_HUB_TIMEOUT`` seconds (default 10) with :class:`HubUnavailableError`.
- :func:`push_to_hub`: write a release + model card to a temporary folder and upload it.
- :func:`model_card`: the Hub ``README.md``: metadata header, the architecture from the
  model's config, usage, and the release's ``MODEL_CARD.md`` when there is one.

``huggingface_hub`` is imported only when a Hub id is used, so the package works without it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from karl.checkpoint import CheckpointError, save_pretrained

__all__ = ["HUB_PREFIX", "HubUnavailableError", "is_hub_id", "split_hub_id", "snapshot_dir", "push_to_hub",
           "model_card", "write_hub_folder", "hub_endpoint", "LOAD_FILES"]

HUB_PREFIX = "hf:"  # a model argument naming a Hub repo: hf:org/name[@rev]
LOAD_FILES = ("config.json", "model.safetensors")  # what loading needs; the card and its images stay remote
DEFAULT_TIMEOUT_S = 10.0
# Hub repo names: letters, digits, '-', '_', '.'; one '/' between owner and name.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
_CONNECTION_ERRORS = ("ConnectError", "ConnectTimeout", "ConnectionError", "TimeoutException",
                      "Timeout", "ReadTimeout", "NetworkError", "OfflineModeIsEnabled")


class HubUnavailableError(CheckpointError):
    """The Hub cannot be reached (or offline mode is on) and the model is not in the cache."""


# ----------------------------------------------------------------------------- ids and settings

def split_hub_id(source: str) -> tuple[str, str | None] | None:
    """``"org/name[@rev]"`` -> (repo_id, revision or None); None when it is not of that form."""
    m = _HUB_ID.match(source)
    if m is None or ".." in m["repo"] or m["repo"].endswith((".", "-")):
        return None
    return m["repo"], m["rev"]


def is_hub_id(source: Any) -> bool:
    """True for a string ``hf:org/name`` (or ``hf:org/name@rev``): a model argument naming a Hub repo."""
    return (isinstance(source, str) and source.startswith(HUB_PREFIX)
            and split_hub_id(source[len(HUB_PREFIX):]) is not None)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _settings() -> tuple[str, str, bool, float]:
    """(cache dir, endpoint, offline, timeout), read from the environment at call time.

    huggingface_hub reads its environment once at import; reading it here too lets a
    process (or a test) change HF_HUB_CACHE / HF_HOME / HF_ENDPOINT / HF_HUB_OFFLINE later.
    """
    from huggingface_hub import constants
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        cache = env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    elif env.get("HF_HOME"):
        cache = os.path.join(env["HF_HOME"], "hub")
    else:
        cache = constants.HF_HUB_CACHE
    endpoint = (env.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    offline = _truthy(env.get("HF_HUB_OFFLINE")) or constants.is_offline_mode()
    try:
        timeout = float(env.get("KARL_HUB_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    return os.path.expanduser(cache), endpoint, offline, timeout


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT, read at call time, else huggingface_hub's default)."""
    return _settings()[1]


def _is_connection_error(err: BaseException) -> bool:
    """Network failures of any HTTP client huggingface_hub uses (requests, httpx, ...)."""
    seen: BaseException | None = err
    while seen is not None:
        if any(cls.__name__ in _CONNECTION_ERRORS for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _local_hint(repo_id: str) -> str:
    return (f"Pass a local release directory instead (config.json + model.safetensors), e.g. "
            f"download it where the Hub is reachable with `hf download {repo_id} --local-dir DIR` "
            "and copy DIR here, or fill the Hub cache (HF_HUB_CACHE / HF_HOME) and set HF_HUB_OFFLINE=1.")


# ----------------------------------------------------------------------------- download

def snapshot_dir(source: str, revision: str | None = None) -> Path:
    """A Hub id (``org/name[@rev]``, with or without ``hf:``) -> the local folder of its snapshot
    (downloaded, or from the cache).

    Raises:
        HubUnavailableError: the Hub is unreachable or offline mode is on, and the snapshot
            is not in the cache.
        CheckpointError: the repo or revision does not exist (or is private without a token).
    """
    parsed = split_hub_id(source.removeprefix(HUB_PREFIX))
    if parsed is None:
        raise CheckpointError(f"{source!r} is not a Hub id of the form org/name[@revision]")
    repo_id, rev = parsed
    revision = revision or rev
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{source!r} names a Hub repo but huggingface_hub is not installed "
                              "(`pip install huggingface_hub`)") from None
    cache, endpoint, offline, timeout = _settings()
    if offline:
        return _from_cache(repo_id, revision, cache, "HF_HUB_OFFLINE=1 is set (HF_HUB_OFFLINE=0 allows a download)")
    sha, net_err = _resolve_revision(repo_id, revision, endpoint, timeout)
    if sha is None:  # unreachable: a cached snapshot still serves
        return _from_cache(repo_id, revision, cache, f"the Hugging Face Hub at {endpoint} cannot be reached "
                                                     f"({net_err}; timeout {timeout:g} s)")
    try:
        path = snapshot_download(repo_id, revision=sha, cache_dir=cache, endpoint=endpoint,
                                 allow_patterns=list(LOAD_FILES), etag_timeout=timeout,
                                 library_name="karl-studio")
    except Exception as err:
        if _is_connection_error(err):
            raise HubUnavailableError(f"downloading {repo_id} from {endpoint} failed: {_short(err)}. "
                                      + _local_hint(repo_id)) from None
        raise CheckpointError(f"cannot download {repo_id} from the Hub: {_short(err)}") from None
    return Path(path)


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def _resolve_revision(repo_id: str, revision: str | None, endpoint: str,
                      timeout: float) -> tuple[str | None, str | None]:
    """(commit sha of ``revision``, None), asked with a short timeout; (None, why) if unreachable.

    snapshot_download's own first request has no timeout (a black-holed route hangs for
    minutes), so the revision is resolved here and the download then skips that request.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=timeout)
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r} on the Hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"no model repo {repo_id!r} on the Hub (or it is private: set HF_TOKEN)") from None
    except Exception as err:
        if _is_connection_error(err):
            return None, _short(err)
        raise CheckpointError(f"the Hub refused {repo_id}: {_short(err)}") from None
    return info.sha, None


def _from_cache(repo_id: str, revision: str | None, cache: str, why: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True,
                                      allow_patterns=list(LOAD_FILES)))
    except Exception as err:  # LocalEntryNotFoundError, IncompleteSnapshotError
        raise HubUnavailableError(
            f"Hugging Face Hub repo {repo_id!r}: {why} and "
            f"it is not in the Hub cache {cache} ({type(err).__name__}). " + _local_hint(repo_id)) from None


# ----------------------------------------------------------------------------- model card

def _count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_card(model, repo_id: str, model_card_md: str | Path | None = None, license: str = "mit",
               training: dict[str, Any] | None = None) -> str:
    """The Hub ``README.md``: YAML metadata, architecture, usage, then ``MODEL_CARD.md`` if given.

    The generated sections follow our MODEL_CARD.md (what the model is, how it was made,
    how to use it, intended use and limits); a release's own card is appended verbatim.
    """
    from huggingface_hub import ModelCardData
    c = model.config
    meta = ModelCardData(library_name="karl-studio", license=license, pipeline_tag="image-feature-extraction",
                         tags=["karl", "image-tokenizer", "adaptive-tokenization", "kolmogorov-complexity",
                               "arxiv:2507.07995"])
    grid = c.image_size // c.base.downsample
    rows = [("input", f"{c.image_size}x{c.image_size} RGB in [0, 1]"),
            ("base tokenizer", f"{c.base.kind} (f={c.base.downsample}, {grid}x{grid} grid)"),
            ("width / layers / heads", f"{c.width} / {c.encoder_layers}+{c.decoder_layers} / {c.heads}"),
            ("1D tokens", f"up to {c.max_tokens} of {c.token_dim} dims, "
                          f"{'quantised (' + str(c.codebook_size) + ' codes)' if c.quantize else 'continuous'}"),
            ("halting threshold", f"{c.halt_threshold:g}"),
            ("epsilon bins", f"{len(c.loss_bins)}, {min(c.loss_bins):g} ... {max(c.loss_bins):g} (pixel L1)"),
            ("parameters", f"{_count_params(model) / 1e6:.1f} M")]
    if training:
        rows += [(f"training {k}", str(training[k])) for k in ("preset", "stage", "step") if k in training]
    table = "\n".join(["| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    body = f"""# KARL: `{repo_id}`

A KARL single-pass adaptive image tokenizer ("Single-pass Adaptive Image Tokenization for
Minimum Program Search", arXiv 2507.07995): for an image and a target reconstruction error
epsilon, one encoder pass decides how many 1D tokens are needed (KC-hat, an estimate of the
image's Kolmogorov complexity at that error). Made with KARL studio.

{table}

## Usage

```python
from karl import load_pretrained
model = load_pretrained("hf:{repo_id}")       # or a local copy of this repo
enc = model.encode(images, epsilon=0.05)      # images [B, 3, {c.image_size}, {c.image_size}] in [0, 1]
enc.kc_hat, enc.continuous_kc                 # tokens kept per image
```

```bash
karl-complexity /path/to/images --checkpoint hf:{repo_id} --epsilon 0.05 0.1 --out scores.csv
```

## Intended use and limits

Research on image complexity and adaptive tokenization. Token counts depend on the training
data and scale of this checkpoint; read its card below before comparing numbers.
"""
    extra = ""
    if model_card_md is not None and Path(model_card_md).is_file():
        extra = "\n---\n\n" + Path(model_card_md).read_text()
    return f"---\n{meta.to_yaml()}\n---\n\n{body}{extra}"


def _linked_images(card: Path) -> list[Path]:
    """Image files a markdown card links relatively (``![..](loss_curve.png)``) that exist."""
    names = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card.read_text())
    return [card.parent / n for n in names if "://" not in n and (card.parent / n).is_file()]


def write_hub_folder(model, folder: str | Path, repo_id: str, model_card_md: str | Path | None = None,
                     license: str = "mit", extra: dict[str, Any] | None = None) -> Path:
    """Write what :func:`push_to_hub` uploads: the release files, ``README.md`` and the card's images."""
    folder = Path(folder)
    save_pretrained(model, folder, extra)
    card_path = Path(model_card_md) if model_card_md is not None else None
    if card_path is not None and not card_path.is_file():
        raise FileNotFoundError(f"model card {card_path} does not exist")
    training = (extra or {}).get("training")
    (folder / "README.md").write_text(model_card(model, repo_id, card_path, license, training))
    if card_path is not None:
        for img in _linked_images(card_path):
            rel = img.relative_to(card_path.parent)
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(img, folder / rel)
    return folder


# ----------------------------------------------------------------------------- upload

def push_to_hub(model, repo_id: str, *, model_card_md: str | Path | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload KARL model", license: str = "mit",
                extra: dict[str, Any] | None = None) -> str:
    """Upload ``model`` as a release (``config.json`` + ``model.safetensors`` + card) to ``repo_id``.

    Returns the commit URL. Raises :class:`HubUnavailableError` (offline or unreachable),
    :class:`CheckpointError` (bad id, refused by the Hub).
    """
    parsed = split_hub_id(repo_id)
    if parsed is None or parsed[1] is not None:
        raise CheckpointError(f"{repo_id!r} is not a Hub repo id of the form org/name")
    from huggingface_hub import HfApi
    _, endpoint, offline, timeout = _settings()
    save_hint = (f"Save it locally with karl.save_pretrained(model, DIR) and upload DIR later "
                 f"(`hf upload {repo_id} DIR`).")
    if offline:
        raise HubUnavailableError(f"cannot push {repo_id}: HF_HUB_OFFLINE=1 is set. " + save_hint)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="karl_push_") as tmp:
        write_hub_folder(model, tmp, repo_id, model_card_md, license, extra)
        try:
            _probe(api, repo_id, timeout)
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        except HubUnavailableError:
            raise
        except Exception as err:
            if _is_connection_error(err):
                raise HubUnavailableError(f"cannot reach the Hugging Face Hub at {endpoint} to push "
                                          f"{repo_id}: {_short(err)}. " + save_hint) from None
            raise CheckpointError(f"the Hub refused the upload to {repo_id}: {_short(err)}") from None
    return str(getattr(info, "commit_url", info))


def _probe(api, repo_id: str, timeout: float) -> None:
    """Fail within ``timeout`` when the Hub does not answer (create_repo has no timeout)."""
    _, endpoint, _, _ = _settings()
    try:
        api.model_info(repo_id, timeout=timeout)
    except Exception as err:
        if _is_connection_error(err):
            raise HubUnavailableError(f"cannot reach the Hugging Face Hub at {endpoint} (timeout "
                                      f"{timeout:g} s): {_short(err)}. Save the model locally with "
                                      f"karl.save_pretrained(model, DIR) and upload DIR later "
                                      f"(`hf upload {repo_id} DIR`).") from None
        # 404 (a new repo), 401, ...: the Hub answered; create_repo reports real refusals
