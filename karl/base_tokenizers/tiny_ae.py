"""A frozen pretrained base: the "tiny autoencoder" family (TAESD, TAEF2, ...).

These autoencoders (madebyollin/taesd, MIT) are small distillations of large latent-diffusion
VAEs: a plain ``nn.Sequential`` of 3x3 convolutions and residual blocks, [0, 1] images in and
out, latents at 1/8 of the side. The project ships TAEF2 (the FLUX.2 autoencoder's tiny
version; 32 latent channels) in ``karl/base_tokenizers/weights/`` with its MIT notice, so a
model built with ``base.kind=tae`` has a pretrained base without any download.

The architecture is rebuilt here from the weights' key layout; the number of latent channels
is read from the weights and must equal ``base.latent_dim``. Loading is strict: a missing,
unexpected or mis-shaped tensor is a :class:`TinyAECheckpointError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from karl.base_tokenizers.base import BaseGrid, BaseTokenizer
from karl.config import BaseTokenizerConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = {"taef2": ("taef2_encoder.safetensors", "taef2_decoder.safetensors")}
_WIDTH = 64


class TinyAECheckpointError(ValueError):
    """The encoder / decoder weights do not fit the tiny-autoencoder architecture."""


class _Pool(nn.Sequential):
    """The global-context branch some blocks add before their convolutions."""

    def __init__(self, c: int):
        super().__init__(nn.Conv2d(c, 4 * c, 1, bias=False), nn.GroupNorm(4, 4 * c), nn.ReLU(),
                         nn.Conv2d(4 * c, c, 1, bias=False))


class _Block(nn.Module):
    """``relu(conv(x) + x)`` with three 3x3 convs; ``pool=True`` adds ``x + pool(x)`` first."""

    def __init__(self, c: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1))
        self.pool = _Pool(c) if pool else None

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class _SoftClamp(nn.Module):
    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(z / 3) * 3


def _conv(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def tiny_encoder(latent: int, c: int = _WIDTH) -> nn.Sequential:
    down = [_conv(c, c, stride=2, bias=False)]
    return nn.Sequential(
        _conv(3, c), _Block(c),
        *down, _Block(c), _Block(c), _Block(c),
        _conv(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c),
        _conv(c, c, stride=2, bias=False), _Block(c, True), _Block(c, True), _Block(c, True),
        _conv(c, latent))


def tiny_decoder(latent: int, c: int = _WIDTH) -> nn.Sequential:
    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), _conv(c, c, bias=False)]
    return nn.Sequential(
        _SoftClamp(), _conv(latent, c), nn.ReLU(),
        _Block(c, True), _Block(c, True), _Block(c, True),
        *up(), _Block(c), _Block(c), _Block(c),
        *up(), _Block(c), _Block(c), _Block(c),
        *up(), _Block(c),
        _conv(c, 3))


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise TinyAECheckpointError(f"tiny-autoencoder weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise TinyAECheckpointError(f"{path}: not a readable state dict ({type(err).__name__})") from None
    if not isinstance(sd, dict):
        raise TinyAECheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def resolve_weights(name_or_dir: str | None) -> tuple[Path, Path]:
    """``None`` / ``"taef2"`` -> the bundled files; a directory -> its ``*encoder*`` /
    ``*decoder*`` (``.safetensors`` or ``.pth``) files."""
    name = name_or_dir or "taef2"
    if name in BUNDLED:
        enc, dec = BUNDLED[name]
        return WEIGHTS_DIR / enc, WEIGHTS_DIR / dec
    folder = Path(name)
    if not folder.is_dir():
        raise TinyAECheckpointError(
            f"base.checkpoint={name!r}: expected one of {sorted(BUNDLED)} or a folder holding "
            "the encoder and decoder weights")
    found = []
    for part in ("encoder", "decoder"):
        files = sorted(p for p in folder.iterdir() if part in p.name and p.suffix in (".safetensors", ".pth"))
        if len(files) != 1:
            raise TinyAECheckpointError(f"{folder}: expected one *{part}*.safetensors/.pth file, found {len(files)}")
        found.append(files[0])
    return found[0], found[1]


def latent_channels(encoder_state: dict[str, Tensor]) -> int:
    """The encoder's last convolution's output channels: the latent width of these weights."""
    last = max((k for k in encoder_state if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
    return int(encoder_state[last].shape[0])


def _load_strict(module: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise TinyAECheckpointError(
            f"{path} does not fit the tiny-autoencoder architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, mis-shaped {shapes[:5]}")
    module.load_state_dict(sd, strict=True)


class TinyAutoencoder(BaseTokenizer):
    """A pretrained tiny autoencoder as KARL's 2D base (continuous; ``features`` = latent x
    ``latent_scale``, 1/3 for TAEF2's roughly [-3, 3] latents)."""

    kind = "continuous"

    def __init__(self, cfg: BaseTokenizerConfig):
        super().__init__()
        if cfg.downsample != 8:
            raise ValueError(f"base kind 'tae' downsamples by 8, config says {cfg.downsample}")
        enc_path, dec_path = resolve_weights(cfg.checkpoint)
        enc_sd, dec_sd = _read_state(enc_path), _read_state(dec_path)
        channels = latent_channels(enc_sd)
        if channels != cfg.latent_dim:
            raise TinyAECheckpointError(
                f"{enc_path} has {channels} latent channels but base.latent_dim={cfg.latent_dim}")
        self.latent_dim = self.head_dim = channels
        self.downsample = 8
        self.latent_scale = cfg.latent_scale
        self.encoder = tiny_encoder(channels)
        self.decoder = tiny_decoder(channels)
        _load_strict(self.encoder, enc_sd, enc_path)
        _load_strict(self.decoder, dec_sd, dec_path)
        # channels-last: oneDNN's convolutions run about 2x faster on it here (fp32 and bf16)
        self.to(memory_format=torch.channels_last)

    def encode(self, images: Tensor) -> BaseGrid:
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [B,3,H,W], got {tuple(images.shape)}"
        z = self.encoder(images.contiguous(memory_format=torch.channels_last))
        z = z.contiguous() * self.latent_scale
        return BaseGrid(features=z, target=z)

    def decode(self, features: Tensor) -> Tensor:
        z = (features / self.latent_scale).contiguous(memory_format=torch.channels_last)
        return self.decoder(z).contiguous().clamp(0, 1)
