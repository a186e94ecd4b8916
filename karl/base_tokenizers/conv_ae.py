"""Our small trainable convolutional autoencoder: the base tokenizer for offline/CPU use.

Trained in "stage 0" (pixel L1 + LPIPS) before KARL's latent distillation. Latents are
bounded with ``tanh`` so stage 1's MSE targets have a fixed scale.
"""

from __future__ import annotations

from torch import Tensor, nn

from karl.base_tokenizers.base import BaseGrid, BaseTokenizer
from karl.config import BaseTokenizerConfig


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ConvAutoencoder(BaseTokenizer):
    """Encoder: conv stem, ``len(channel_mult) - 1`` stride-2 levels, tanh latent."""

    kind = "continuous"
    trained_in_stage0 = True

    def __init__(self, cfg: BaseTokenizerConfig):
        super().__init__()
        levels = len(cfg.channel_mult) - 1
        assert 2 ** levels == cfg.downsample, (
            f"conv_ae: channel_mult {cfg.channel_mult} gives downsample {2 ** levels}, "
            f"config says {cfg.downsample}")
        self.latent_dim = self.head_dim = cfg.latent_dim
        self.downsample = cfg.downsample
        self.latent_scale = cfg.latent_scale
        chs = [cfg.channels * m for m in cfg.channel_mult]

        enc: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        for i in range(levels):
            enc += [ResBlock(chs[i], chs[i]) for _ in range(cfg.num_res_blocks)]
            enc.append(nn.Conv2d(chs[i], chs[i + 1], 4, stride=2, padding=1))
        enc += [ResBlock(chs[-1], chs[-1]), _norm(chs[-1]), nn.SiLU(),
                nn.Conv2d(chs[-1], cfg.latent_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, chs[-1], 3, padding=1), ResBlock(chs[-1], chs[-1])]
        for i in reversed(range(levels)):
            dec.append(nn.ConvTranspose2d(chs[i + 1], chs[i], 4, stride=2, padding=1))
            dec += [ResBlock(chs[i], chs[i]) for _ in range(cfg.num_res_blocks)]
        dec += [_norm(chs[0]), nn.SiLU(), nn.Conv2d(chs[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, images: Tensor) -> BaseGrid:
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [B,3,H,W], got {tuple(images.shape)}"
        z = self.encoder(images * 2 - 1).tanh() * self.latent_scale
        return BaseGrid(features=z, target=z)

    def decode(self, features: Tensor) -> Tensor:
        x = self.decoder(features / self.latent_scale)
        return (x.clamp(-1, 1) + 1) / 2
