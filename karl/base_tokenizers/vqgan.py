"""The MaskGIT/MAGE VQGAN (f=16, 1024 x 256 codebook): KARL's discrete base tokenizer.

Architecture as read from the released key layout
(``official_state_dict/karl_small_vqgan_quantized.keys.txt``, prefix ``base_tokenizer.vqgan.``):

- no attention anywhere; GroupNorm(32, eps 1e-6) + swish;
- res-block convs have no bias; ``encoder.conv_in`` has no bias, every other stem/head conv has;
- encoder: non-learned 2x2 average pooling after every level but the last (no downsample keys);
- decoder: ``up.{i}`` for level ``i`` run from the last level to the first; every level but
  level 0 ends with nearest 2x upsampling + ``upsample.conv`` (3x3, bias);
- the res-block shortcut (``nin_shortcut``, 1x1, out -> out channels) is applied to the
  block's *output*, not to its input, as in MaskGIT: ``y = h + nin_shortcut(h)``.

Images are ``[0, 1]`` in and out (MaskGIT's VQGAN uses no normalisation).
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


class MaskGITResBlock(nn.Module):
    """norm-swish-conv twice; bias-free convs; shortcut applied to the output (MaskGIT quirk)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        # MaskGIT computes the shortcut from the transformed features, hence out -> out.
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        residual = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + residual


class _Level(nn.Module):
    """One resolution level: ``block.{j}`` res blocks (+ ``upsample`` in the decoder)."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, upsample: bool = False):
        super().__init__()
        self.block = nn.ModuleList(
            MaskGITResBlock(c_in if j == 0 else c_out, c_out) for j in range(num_blocks))
        self.upsample = Upsample(c_out) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        return x if self.upsample is None else self.upsample(x)


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = MaskGITResBlock(ch, ch)
        self.block_2 = MaskGITResBlock(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x))


class MaskGITEncoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, embed_dim: int):
        super().__init__()
        chs = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        ins = [ch] + chs[:-1]
        self.down = nn.ModuleList(_Level(ins[i], chs[i], num_res_blocks) for i in range(len(chs)))
        self.mid = _Mid(chs[-1])
        self.norm_out = _norm(chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)                               # [B, ch, H, W]
        for i, level in enumerate(self.down):
            h = level(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        h = self.mid(h)                                   # [B, ch*mult[-1], g, g]
        return self.conv_out(F.silu(self.norm_out(h)))    # [B, embed_dim, g, g]


class MaskGITDecoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, embed_dim: int):
        super().__init__()
        chs = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(embed_dim, chs[-1], 3, padding=1)
        self.mid = _Mid(chs[-1])
        # up[i] is level i; it receives the channels of level i+1 (or the mid block's).
        ins = chs[1:] + [chs[-1]]
        self.up = nn.ModuleList(
            _Level(ins[i], chs[i], num_res_blocks, upsample=i > 0) for i in range(len(chs)))
        self.norm_out = _norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))    # [B, 3, H, W], about [0, 1]


class VectorQuantizer(nn.Module):
    """Plain L2 nearest-neighbour codebook lookup (MaskGIT); no l2-normalisation."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def indices(self, z: Tensor) -> Tensor:
        """``z`` [B, d, g, g] -> nearest code indices [B, g, g]."""
        b, _, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d").float()
        book = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return rearrange(dist.argmin(1), "(b h w) -> b h w", b=b, h=h, w=w)

    def lookup(self, indices: Tensor) -> Tensor:
        """Indices [B, g, g] -> code vectors [B, d, g, g]."""
        return rearrange(self.embedding(indices), "b h w d -> b d h w")


class VQGANTokenizer(BaseTokenizer):
    """MaskGIT-architecture VQGAN behind :class:`BaseTokenizer`.

    Axes: b batch, d embed dim (256), g grid side, c codebook size (1024).
    ``features`` are the pre-quantisation encoder outputs; ``target`` the nearest code ids.
    """

    kind = "discrete"

    def __init__(self, cfg: BaseTokenizerConfig):
        super().__init__()
        levels = len(cfg.channel_mult) - 1
        if 2 ** levels != cfg.downsample:
            raise ValueError(f"vqgan: channel_mult {cfg.channel_mult} gives downsample "
                             f"{2 ** levels}, config says {cfg.downsample}")
        self.latent_dim = cfg.latent_dim
        self.downsample = cfg.downsample
        self.head_dim = cfg.codebook_size
        self.codebook_size = cfg.codebook_size
        args = (cfg.channels, tuple(cfg.channel_mult), cfg.num_res_blocks, cfg.latent_dim)
        self.encoder = MaskGITEncoder(*args)
        self.decoder = MaskGITDecoder(*args)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.latent_dim)

    def _check_images(self, images: Tensor) -> None:
        assert images.ndim == 4 and images.shape[1] == 3, \
            f"expected images [B, 3, H, W], got {tuple(images.shape)}"
        assert images.shape[-1] % self.downsample == 0 and images.shape[-2] % self.downsample == 0, \
            f"image side {tuple(images.shape[-2:])} not divisible by {self.downsample}"

    def _check_grid(self, x: Tensor, channels: int, what: str) -> None:
        assert x.ndim == 4 and x.shape[1] == channels, \
            f"{what}: expected [B, {channels}, g, g], got {tuple(x.shape)}"

    def encode(self, images: Tensor) -> BaseGrid:
        self._check_images(images)
        z = self.encoder(images)                                  # [B, d, g, g]
        with torch.no_grad():
            ids = self.quantize.indices(z)                        # [B, g, g]
        return BaseGrid(features=z, target=ids)

    def quantize_features(self, features: Tensor) -> Tensor:
        """Snap ``features`` to their nearest codes (straight-through gradient)."""
        self._check_grid(features, self.latent_dim, "decode")
        q = self.quantize.lookup(self.quantize.indices(features.detach()))
        return features + (q - features).detach()

    def decode(self, features: Tensor) -> Tensor:
        return self.decode_code(self.quantize_features(features))

    def soft_code(self, logits: Tensor) -> Tensor:
        """Logits [B, c, g, g] -> softmax-weighted code [B, d, g, g]."""
        self._check_grid(logits, self.codebook_size, "soft_code")
        probs = logits.float().softmax(dim=1)
        return torch.einsum("bchw,cd->bdhw", probs, self.quantize.embedding.weight.float())

    def decode_code(self, code: Tensor) -> Tensor:
        self._check_grid(code, self.latent_dim, "decode_code")
        return self.decoder(code).clamp(0.0, 1.0)

    def code_of(self, indices: Tensor) -> Tensor:
        assert indices.ndim == 3 and not indices.is_floating_point(), \
            f"code_of: expected long indices [B, g, g], got {indices.dtype} {tuple(indices.shape)}"
        return self.quantize.lookup(indices)
