"""The LDM/MAR KL-16 VAE (z 16 channels, f=16): KARL's continuous base tokenizer.

Architecture as read from the released key layout
(``official_state_dict/karl_small_vae_continuous.keys.txt``, prefix ``base_tokenizer.vae.``):

- GroupNorm(32, eps 1e-6) + swish; every conv has a bias; the res-block shortcut
  ``nin_shortcut`` is a 1x1 conv on the block *input* (in -> out), LDM style;
- encoder: ``down.{i}`` with ``num_res_blocks`` blocks, single-head self-attention
  (``attn.{j}``, 1x1 q/k/v/proj_out) after every block of the last (lowest-resolution)
  level only, and a learned stride-2 ``downsample.conv`` (3x3, pad right/bottom) after
  every level but the last;
- mid block (encoder and decoder): ``block_1`` -> ``attn_1`` -> ``block_2``;
- ``encoder.conv_out`` (3x3) gives 2 x z channels (mean, logvar), then ``quant_conv``
  (1x1, 32 -> 32); ``post_quant_conv`` (1x1, 16 -> 16) before the decoder;
- decoder: ``up.{i}`` for level ``i`` run last to first, ``num_res_blocks + 1`` blocks each,
  no attention, nearest 2x + ``upsample.conv`` (3x3) on every level but level 0.

Conventions (``BaseTokenizerConfig``; the interface is always ``[0, 1]`` images):

- ``input_range``: the encoder sees the image mapped to this range (LDM/MAR: ``[-1, 1]``;
  the KARL release feeds the ``[0, 1]`` image unchanged);
- ``latent_scale``: KARL sees the latent times this (0.2325 for MAR's KL-16);
- ``decode_scale``: the decoder gets features divided by this (default ``latent_scale``;
  the KARL release decodes the head's prediction unscaled: 1.0);
- ``output_range``: the decoder's output is read in this range and mapped to ``[0, 1]``
  (the release takes the raw output as the image);
- ``posterior``: in eval mode the grid is the posterior ``mean`` (deterministic) or a
  ``sample`` (the release); training always samples. Noise is drawn on the CPU from
  ``self.generator`` (default: the global RNG, like the release) then moved to the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from karl.base_tokenizers.base import BaseGrid, BaseTokenizer, Upsample
from karl.config import BaseTokenizerConfig


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        _, _, hh, ww = x.shape
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)     # [B, 1, hw, c], scale c^-0.5
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=hh, w=ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))          # asymmetric pad keeps h/2 exactly


class _Level(nn.Module):
    """``block.{j}`` (+ ``attn.{j}`` after each block) then ``downsample`` or ``upsample``."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, *, attn: bool = False,
                 down: bool = False, up: bool = False):
        super().__init__()
        self.block = nn.ModuleList(ResBlock(c_in if j == 0 else c_out, c_out)
                                   for j in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(num_blocks)) if attn else None
        self.downsample = Downsample(c_out) if down else None
        self.upsample = Upsample(c_out) if up else None

    def forward(self, x: Tensor) -> Tensor:
        for j, blk in enumerate(self.block):
            x = blk(x)
            if self.attn is not None:
                x = self.attn[j](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = ResBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResBlock(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class KLEncoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        chs = [ch * m for m in ch_mult]
        last = len(chs) - 1
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        ins = [ch] + chs[:-1]
        self.down = nn.ModuleList(
            _Level(ins[i], chs[i], num_res_blocks, attn=i == last, down=i < last)
            for i in range(len(chs)))
        self.mid = _Mid(chs[-1])
        self.norm_out = _norm(chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], 2 * z_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))    # [B, 2z, g, g]


class KLDecoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        chs = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, chs[-1], 3, padding=1)
        self.mid = _Mid(chs[-1])
        ins = chs[1:] + [chs[-1]]                         # up[i] receives level i+1's channels
        self.up = nn.ModuleList(
            _Level(ins[i], chs[i], num_res_blocks + 1, up=i > 0)
            for i in range(len(chs)))
        self.norm_out = _norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))    # [B, 3, H, W] in about [-1, 1]


class KLVAETokenizer(BaseTokenizer):
    """LDM/MAR KL-16 VAE behind :class:`BaseTokenizer`.

    ``features`` = ``target`` = posterior mean (eval) or a posterior sample (train mode),
    times ``latent_scale``: ``[B, latent_dim, g, g]``.
    """

    kind = "continuous"

    def __init__(self, cfg: BaseTokenizerConfig):
        super().__init__()
        levels = len(cfg.channel_mult) - 1
        if 2 ** levels != cfg.downsample:
            raise ValueError(f"kl_vae: channel_mult {cfg.channel_mult} gives downsample "
                             f"{2 ** levels}, config says {cfg.downsample}")
        self.latent_dim = self.head_dim = cfg.latent_dim
        self.downsample = cfg.downsample
        self.latent_scale = cfg.latent_scale
        self.decode_scale = cfg.latent_scale if cfg.decode_scale is None else cfg.decode_scale
        self.input_range = tuple(cfg.input_range)
        self.output_range = tuple(cfg.output_range)
        self.sample_posterior = cfg.posterior == "sample"
        self.generator: torch.Generator | None = None   # CPU generator for posterior noise
        z = cfg.latent_dim
        args = (cfg.channels, tuple(cfg.channel_mult), cfg.num_res_blocks, z)
        self.encoder = KLEncoder(*args)
        self.decoder = KLDecoder(*args)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images [B, 3, H, W] in [0, 1] -> (mean, logvar), each [B, z, g, g], unscaled."""
        assert images.ndim == 4 and images.shape[1] == 3, \
            f"expected images [B, 3, H, W], got {tuple(images.shape)}"
        assert images.shape[-1] % self.downsample == 0 and images.shape[-2] % self.downsample == 0, \
            f"image side {tuple(images.shape[-2:])} not divisible by {self.downsample}"
        lo, hi = self.input_range
        x = images if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * images
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample(self, mean: Tensor, logvar: Tensor) -> Tensor:
        """mean + std * N(0, 1), the noise drawn as the release draws it (CPU, then moved)."""
        noise = torch.randn(mean.shape, generator=self.generator)
        return mean + (0.5 * logvar).exp() * noise.to(mean.device, mean.dtype)

    def encode(self, images: Tensor) -> BaseGrid:
        mean, logvar = self.posterior(images)
        z = self.sample(mean, logvar) if self.training or self.sample_posterior else mean
        z = z * self.latent_scale
        return BaseGrid(features=z, target=z)

    def decode(self, features: Tensor) -> Tensor:
        assert features.ndim == 4 and features.shape[1] == self.latent_dim, \
            f"decode: expected [B, {self.latent_dim}, g, g], got {tuple(features.shape)}"
        z = features if self.decode_scale == 1.0 else features / self.decode_scale
        x = self.decoder(self.post_quant_conv(z))
        lo, hi = self.output_range
        x = x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)
        return x.clamp(0.0, 1.0)
