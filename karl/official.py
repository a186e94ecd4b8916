"""Load and convert the authors' released KARL checkpoints (``karl_small_*.pth``).

The release files are ``torch.save({'model', 'ema', 'optimizer', 'epoch', 'args', ...})``
where ``args`` is an ``argparse.Namespace``. ``torch.load(weights_only=True)`` refuses that
object, and ``weights_only=False`` runs the pickle, which can execute arbitrary code: so
reading one needs an explicit opt-in (``trust=True`` / ``--trust``).

Key mapping (the release's key lists are in tests/fixtures/official_state_dict; our
parameter names equal the release's):

- ``module.`` / ``_orig_mod.`` wrappers (DDP, ``torch.compile``) are stripped;
- ``base_tokenizer.vqgan.*`` / ``base_tokenizer.vae.*`` (the fine-tuned base tokenizer)
  -> ``base.*``; the original base checkpoint is then not needed;
- ``gan_losses.*`` (LPIPS and discriminators, training only) are dropped;
- every other key keeps its name. Anything else is reported, never silently skipped.

The architecture is read from the tensor shapes (:func:`infer_config`); only the number of
attention heads cannot be, and comes from ``args`` when present (else 8, the release's).

Usage::

    model = karl.load_official("karl_small_vqgan_quantized_latents.pth", trust=True)
    karl-convert-official karl_small_vqgan_quantized_latents.pth converted/ --trust
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from karl.base_tokenizers import _KL_VAE_CONVENTIONS
from karl.checkpoint import CheckpointError, check_finite, check_state_dict, write_release
from karl.config import LOSS_BINS, BaseTokenizerConfig, ModelConfig, preset, to_dict
from karl.model import KARL

__all__ = ["UntrustedCheckpointError", "convert_official", "infer_config", "load_official", "main",
           "map_official_keys", "read_official", "select_weights"]

_WRAPPERS = ("module.", "_orig_mod.")
# BaseTokenizerConfig fields that only the KL-VAE reads (karl.base_tokenizers refuses them for
# the other kinds); a converted VQGAN's config.json omits them.
VAE_ONLY_FIELDS = _KL_VAE_CONVENTIONS
# The release's arithmetic around its KL-VAE (docs/OFFICIAL.md section 7, checked on identical
# weights): the [0, 1] image goes in as it is, KARL sees latent x 0.2325, the decoder head's
# prediction is decoded without dividing by 0.2325, and the raw output is the [0, 1] image.
# The release samples the posterior; we default to its mean (``posterior=``, docs/OFFICIAL.md).
RELEASE_VAE_CONVENTIONS: dict[str, Any] = dict(
    input_range=(0.0, 1.0), latent_scale=0.2325, decode_scale=1.0, output_range=(0.0, 1.0))
Posterior = Literal["mean", "sample"]
# The bases the authors' checkpoints embed: their key prefix -> our kind, and the key (in our
# names) that tells the kinds apart. A base the release does not ship needs no entry here.
_BASE_PREFIXES = {"base_tokenizer.vqgan.": "vqgan", "base_tokenizer.vae.": "kl_vae"}
_KIND_MARKERS = {"vqgan": "base.quantize.embedding.weight", "kl_vae": "base.post_quant_conv.weight"}
_DROPPED = ("gan_losses.",)
# Top-level names of the release's KARL (= ours, with base_tokenizer.* -> base.*).
OFFICIAL_ROOTS = frozenset({
    "patch_embed", "encoder_positional_embedding", "decoder_positional_embedding",
    "decoder_mask_token", "latent_tokens", "decoder_latent_tokens_timestep_embed",
    "rec_loss_embeddings", "encoder_ln_pre", "encoder", "encoder_ln_post_halt",
    "encoder_ln_post", "halting_mlp", "pre_quantizer_mlp", "quantize", "decoder_embed",
    "decoder",
})
# argparse attribute names tried for values the weights do not determine.
_HEADS_ARGS = ("num_heads", "heads", "n_heads", "enc_num_heads", "encoder_heads")
_IMAGE_SIZE_ARGS = ("image_size", "img_size", "input_size", "resolution")

_WHY = (
    "{path} cannot be loaded safely: {what}, so torch.load(weights_only=True) refuses it, "
    "and loading it with weights_only=False unpickles it, which can execute arbitrary code. "
    "Only do that for a file you trust (e.g. downloaded from the authors' release, whose "
    "'args' entry is an argparse.Namespace): pass trust=True to karl.load_official / "
    "convert_official, or --trust to karl-convert-official (--trust-official in karl-eval, "
    "the report and the app). Converting once to a release directory (config.json + "
    "model.safetensors) means you never need to unpickle it again."
)
# torch names the first global its safe unpickler refused: "Unsupported global: GLOBAL a.b".
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK", b"\x80"   # torch.save's zip format; the legacy raw pickle


class UntrustedCheckpointError(CheckpointError):
    """The file needs ``weights_only=False`` and the caller did not opt in."""


# --------------------------------------------------------------------------- reading

def _container(path: Path) -> str:
    """``"zip"`` or ``"legacy"``: the file looks like a ``torch.save`` output. Otherwise raise
    :class:`CheckpointError` in one line naming the file and what is wrong with it."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise CheckpointError(
                f"{path}: truncated or corrupt ({size:,} bytes): its zip directory cannot be "
                f"read ({err}); download it again") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip archive without data.pkl, not a torch.save file")
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "legacy"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head!r}, not a "
                          f"zip archive or a pickle)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _refusal(path: Path, err: BaseException) -> UntrustedCheckpointError:
    hit = _REFUSED_GLOBAL.search(str(err))
    what = (f"its pickle references {hit.group(1)}, which is not a tensor or a plain container"
            if hit else f"its pickle holds something the safe loader rejects ({_first_line(err)})")
    return UntrustedCheckpointError(_WHY.format(path=path, what=what))


def read_official(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Unpickle a release ``.pth`` on the CPU (memory-mapped when possible).

    Without ``trust`` only ``torch.load(weights_only=True)`` is tried, which is safe but
    refuses the authors' files (their ``args`` Namespace): then
    :class:`UntrustedCheckpointError` says why and how to opt in. A file that is empty,
    truncated or not a checkpoint raises :class:`CheckpointError` in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    mmap = _container(path) == "zip"          # legacy (non-zip) files cannot be memory-mapped
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not trust and "Weights only load failed" in str(err):
            raise _refusal(path, err) from None
        raise CheckpointError(f"{path}: corrupt or truncated, cannot unpickle it "
                              f"({_first_line(err)})") from None
    except (ImportError, AttributeError) as err:    # a class the pickle names is not here
        raise CheckpointError(f"{path}: its pickle needs code that is not installed here "
                              f"({_first_line(err)})") from None
    except (RuntimeError, EOFError, IndexError, ValueError, KeyError, OSError) as err:
        # miniz ("failed reading zip archive"), a short pickle, a damaged record ...
        raise CheckpointError(f"{path}: corrupt or truncated, torch.load failed "
                              f"({_first_line(err)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return dict(obj)


def select_weights(ckpt: Mapping[str, Any],
                   weights: Literal["ema", "model"] | None = None) -> tuple[dict[str, Tensor], str]:
    """The state dict to use: ``ema`` (inference weights), else ``model``; or a bare state dict.

    Returns (state dict, which one: "ema" / "model" / "state_dict").
    """
    order = (weights,) if weights else ("ema", "model")
    for name in order:
        inner = ckpt.get(name)
        if isinstance(inner, Mapping) and inner:
            sd = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
            if len(sd) != len(inner):
                bad = sorted(k for k, v in inner.items() if not isinstance(v, Tensor))[:5]
                raise CheckpointError(f"['{name}'] holds non-tensor entries, e.g. {bad}")
            return sd, name
        if inner is not None and not (isinstance(inner, Mapping) and not inner):
            hint = "; pass weights='model' (--weights model) to use the raw weights" * (
                name == "ema")
            raise CheckpointError(f"['{name}'] is a {type(inner).__name__}, not a state dict{hint}")
    if weights is None and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return dict(ckpt), "state_dict"
    raise CheckpointError(f"checkpoint has no {' / '.join(repr(n) for n in order)} state dict; "
                          f"top-level keys: {sorted(ckpt)[:12]}")


# --------------------------------------------------------------------------- mapping

def _unwrap_key(key: str) -> str:
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    return key


def map_official_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Release names -> ours (see the module docstring). Floating tensors become float32.

    Raises:
        CheckpointError: listing every key that has no place in our model.
    """
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    bases = set()
    for raw, value in state_dict.items():
        key = _unwrap_key(raw)
        if key.startswith(_DROPPED):
            continue
        prefix = next((p for p in _BASE_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            bases.add(prefix)
            key = "base." + key[len(prefix):]
        elif key.split(".", 1)[0] not in OFFICIAL_ROOTS:
            unmapped.append(raw)
            continue
        if key in out:
            raise CheckpointError(f"two checkpoint keys map to {key!r} (one is {raw!r})")
        out[key] = value.float() if value.is_floating_point() else value
    if unmapped:
        raise CheckpointError(_listing("checkpoint keys with no place in KARL", unmapped))
    if len(bases) > 1:
        raise CheckpointError(f"checkpoint holds two base tokenizers: {sorted(bases)}")
    return out


def _listing(title: str, items: list[str], limit: int = 30) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title} ({len(items)}): " + ", ".join(sorted(items)[:limit]) + more


# --------------------------------------------------------------------------- config

def _arg(args: Any, names: tuple[str, ...]) -> tuple[Any, str] | None:
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    if not isinstance(values, Mapping):
        return None
    for name in names:
        v = values.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v, name
    return None


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix{i}.`` (e.g. transformer blocks)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"non-contiguous {prefix}N indices: {sorted(idx)}")
    return len(idx)


def _shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"cannot infer the architecture: key {key!r} is missing")
    return tuple(sd[key].shape)


def _base_config(sd: Mapping[str, Tensor], posterior: Posterior = "mean") -> BaseTokenizerConfig:
    """Read the base tokenizer's architecture from our ``base.*`` keys; a KL-VAE gets the
    release's conventions (:data:`RELEASE_VAE_CONVENTIONS`), the VQGAN keeps ours (equal)."""
    kind = next((k for k, marker in _KIND_MARKERS.items() if marker in sd), None)
    if kind is None:
        raise CheckpointError(f"no {' or '.join(p + '*' for p in _BASE_PREFIXES)} keys found: "
                              "the release checkpoints embed their base tokenizer")
    ch = _shape(sd, "base.encoder.conv_in.weight")[0]
    levels = _count(sd, "base.encoder.down.")
    mult = tuple(_shape(sd, f"base.encoder.down.{i}.block.0.conv1.weight")[0] // ch
                 for i in range(levels))
    common = dict(kind=kind, downsample=2 ** (levels - 1), channels=ch, channel_mult=mult,
                  num_res_blocks=_count(sd, "base.encoder.down.0.block."))
    if kind == "vqgan":
        if posterior != "mean":
            raise CheckpointError("posterior='sample' applies to the VAE release only; this "
                                  "checkpoint embeds a VQGAN")
        codes, dim = _shape(sd, "base.quantize.embedding.weight")
        return replace(preset("small").model.base, latent_dim=dim, codebook_size=codes, **common)
    dim = _shape(sd, "base.post_quant_conv.weight")[0]
    return replace(preset("small_vae").model.base, latent_dim=dim, posterior=posterior,
                   **RELEASE_VAE_CONVENTIONS, **common)


def infer_config(state_dict: Mapping[str, Tensor], args: Any = None,
                 heads: int | None = None, posterior: Posterior = "mean") -> ModelConfig:
    """The :class:`ModelConfig` whose KARL has exactly these tensor shapes.

    Args:
        state_dict: release names (``base_tokenizer.*``, optional ``module.``) or ours.
        args: the checkpoint's ``argparse.Namespace`` (or a dict): source of ``heads`` and
            ``image_size``, which the shapes do not determine.
        heads: explicit head count; overrides ``args``. Default 8 (the release).
        posterior: VAE files only: grid from the posterior ``mean`` (deterministic, our
            default) or a ``sample`` (what the release computes).
    """
    sd = {_unwrap_key(k): v for k, v in state_dict.items()}
    if any(k.startswith(tuple(_BASE_PREFIXES)) for k in sd):
        sd = map_official_keys(sd)
    num_tokens, width = _shape(sd, "latent_tokens")
    bins = _shape(sd, "rec_loss_embeddings")[0]
    if bins != len(LOSS_BINS):
        raise CheckpointError(f"rec_loss_embeddings has {bins} loss bins; KARL's release has "
                              f"{len(LOSS_BINS)} and their values are not stored in the file")
    if heads is None:
        heads = (_arg(args, _HEADS_ARGS) or (8, ""))[0]
    if width % heads:
        raise CheckpointError(f"width {width} is not divisible by {heads} heads; pass heads=")
    quant = "quantize.embedding.weight" in sd
    codebook, token_dim = (_shape(sd, "quantize.embedding.weight") if quant
                           else (ModelConfig.codebook_size, 0))
    base = _base_config(sd, posterior)
    image_size = (_arg(args, _IMAGE_SIZE_ARGS) or (256, ""))[0]
    cfg = ModelConfig(
        image_size=image_size, width=width,
        encoder_layers=_count(sd, "encoder.transformer."),
        decoder_layers=_count(sd, "decoder.transformer."),
        heads=heads,
        mlp_ratio=_shape(sd, "encoder.transformer.0.mlp.c_fc.weight")[0] / width,
        num_latent_tokens=num_tokens, max_tokens=min(256, num_tokens),
        pos_table_size=_shape(sd, "encoder_positional_embedding")[-1],
        token_dim=_shape(sd, "pre_quantizer_mlp.weight")[0],
        quantize=quant, codebook_size=codebook,
        halting_hidden=_shape(sd, "halting_mlp.0.weight")[0],
        base=base)
    if quant and token_dim != cfg.token_dim:
        raise CheckpointError(f"codebook dim {token_dim} != pre_quantizer_mlp out {cfg.token_dim}")
    return cfg


# --------------------------------------------------------------------------- load / convert

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(v: Any) -> Any:
    """JSON-safe copy of an args value (anything exotic becomes its repr)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return repr(v)


def _prepare(path: str | Path, trust: bool, weights: Literal["ema", "model"] | None,
             heads: int | None, posterior: Posterior = "mean",
             ) -> tuple[ModelConfig, dict[str, Tensor], dict[str, Any]]:
    """Read, select, map and check: (config, our state dict, provenance)."""
    path = Path(path)
    ckpt = read_official(path, trust=trust)
    raw, used = select_weights(ckpt, weights)
    state = map_official_keys(raw)
    check_finite(state, path)                      # a damaged file loads nowhere
    args = ckpt.get("args")
    cfg = infer_config(state, args=args, heads=heads, posterior=posterior)
    with torch.device("meta"):                      # shapes only: no memory, no init cost
        check_state_dict(KARL(cfg), state)
    args_dict = vars(args) if isinstance(args, argparse.Namespace) else args
    heads_from = ("argument" if heads is not None else
                  f"args.{hit[1]}" if (hit := _arg(args, _HEADS_ARGS)) else "default (8)")
    epoch = ckpt.get("epoch")
    provenance = {
        "format": "karl-official-pth", "file": path.name, "weights": used,
        "epoch": epoch if isinstance(epoch, (int, float, str, type(None))) else repr(epoch),
        "num_tensors": len(state),
        "dropped": sorted({k.split(".", 1)[0] for k in map(_unwrap_key, raw)
                           if k.startswith(_DROPPED)}),
        "heads_from": heads_from,
        "decoder_mask": "per image (the release mixes masks across a batch; docs/OFFICIAL.md)",
        "base_conventions": ("release (docs/OFFICIAL.md)" if cfg.base.kind == "kl_vae"
                             else "ours (equal to the release's)"),
        "args": _plain(args_dict) if isinstance(args_dict, Mapping) else None,
    }
    return cfg, state, provenance


def load_official(path: str | Path, trust: bool = False, device: str | torch.device = "cpu",
                  weights: Literal["ema", "model"] | None = None,
                  heads: int | None = None, posterior: Posterior = "mean",
                  precision: str = "fp32") -> KARL:
    """Build our KARL from an authors' ``.pth``, strictly (every tensor used, shapes equal).

    Args:
        path: ``karl_small_{vqgan,vae}_{quantized,continuous}_latents.pth`` or similar.
        trust: allow ``torch.load(weights_only=False)`` (executes the pickle; see module doc).
        device: where the model goes.
        weights: ``"ema"`` or ``"model"``; default: ``ema`` if present, else ``model``.
        heads: attention heads, when ``args`` does not say (default 8).
        posterior: VAE files: ``"mean"`` (deterministic) or ``"sample"`` (the release's).
        precision: ``fp32`` / ``bf16`` / ``fp16`` / ``auto`` (:mod:`karl.precision`).

    Raises:
        UntrustedCheckpointError: the file needs unpickling and ``trust`` is False.
        CheckpointError: unmapped, missing or mis-shaped keys (all listed).
    """
    from karl.precision import set_precision
    cfg, state, provenance = _prepare(path, trust, weights, heads, posterior)
    model = KARL(cfg)
    model.load_state_dict(state, strict=True)
    model.provenance = provenance
    return set_precision(model.to(device).eval(), precision)


def convert_official(in_path: str | Path, out_dir: str | Path, trust: bool = False,
                     weights: Literal["ema", "model"] | None = None,
                     heads: int | None = None, posterior: Posterior = "mean") -> Path:
    """Write a release directory (``config.json`` + ``model.safetensors``) from a ``.pth``.

    ``config.json`` records the source file name, its sha256, the epoch and which weights
    (``ema`` / ``model``) were used. Load the result with :func:`karl.load_pretrained`.
    """
    cfg, state, provenance = _prepare(in_path, trust, weights, heads, posterior)
    provenance["sha256"] = _sha256(Path(in_path))
    config = to_dict(cfg)
    if cfg.base.kind != "kl_vae":   # the VAE's conventions mean nothing for this base: not listed
        for name in VAE_ONLY_FIELDS:
            config["base"].pop(name, None)
    return write_release(out_dir, config, _unshare(state), extra={"source": provenance})


def _unshare(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy tensors whose storage another tensor already uses (safetensors refuses shared
    memory; pickles may hold tied weights or views of one buffer)."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


# --------------------------------------------------------------------------- CLI

def _posterior_note(base: dict) -> str:
    """VAE files: which posterior the grid comes from, and how to get the release's."""
    if base.get("kind") != "kl_vae":
        return ""
    if base.get("posterior") == "sample":
        return "; posterior: sample (as the release computes; seed model.base.generator for fixed noise)"
    return ("; posterior: mean (deterministic; the release samples it: convert with --posterior "
            "sample, or set \"posterior\": \"sample\" in config.json)")


def main(argv: list[str] | None = None) -> int:
    """``karl-convert-official IN.pth OUT_DIR --trust``; exit 2 when not trusted."""
    p = argparse.ArgumentParser(
        prog="karl-convert-official",
        description="Convert an authors' KARL .pth into a release directory (config.json + "
                    "model.safetensors) that karl-eval, the report and the app load.")
    p.add_argument("input", help="karl_small_*.pth from the authors' release")
    p.add_argument("output", help="directory to write")
    p.add_argument("--trust", action="store_true",
                   help="allow unpickling the file (torch.load(weights_only=False) can run code "
                        "stored in it); required for the authors' files")
    p.add_argument("--weights", choices=("ema", "model"),
                   help="which weights to take (default: ema, else model)")
    p.add_argument("--heads", type=int, help="attention heads if the file's args do not say (8)")
    p.add_argument("--posterior", choices=("mean", "sample"), default="mean",
                   help="VAE files: base grid from the posterior mean (deterministic, default) "
                        "or a sample (what the release computes)")
    a = p.parse_args(argv)
    try:
        out = convert_official(a.input, a.output, trust=a.trust, weights=a.weights, heads=a.heads,
                               posterior=a.posterior)
    except UntrustedCheckpointError as e:
        print(f"karl-convert-official: refused: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"karl-convert-official: {e}", file=sys.stderr)
        return 1
    import json
    meta = json.loads((out / "config.json").read_text())
    m, src = meta["model"], meta["source"]
    print(f"wrote {out}: {m['base']['kind']} base, quantize={m['quantize']}, width {m['width']}, "
          f"{m['encoder_layers']}+{m['decoder_layers']} layers, {src['num_tensors']} tensors "
          f"from ['{src['weights']}'] (epoch {src['epoch']}); dropped {src['dropped']}"
          f"{_posterior_note(m['base'])}")
    print(f"next: karl-eval --checkpoint {out} ...   or   python app.py --checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
