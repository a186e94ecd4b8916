"""Analysis 7: what each kept token encodes (progressive decoding and token maps).

The *program* of an image at epsilon is its kept tokens (halting prob <= 0.75), in token order.

- Progressive decoding: the program cut to its first 1, 2, 4, ... kept tokens up to KC-hat,
  each prefix decoded (one batched decoder pass, a per-row keep mask), with L1 / PSNR / SSIM.
  The last row is exactly ``decode(encode(image))``.
- Token maps (leave-one-out): for kept token j,
  ``map_j(p) = sum_c |recon(program)(c, p) - recon(program without j)(c, p)|``:
  the pixels that change when j is dropped. Non-negative, in units of summed channel
  intensity; exactly zero for a token whose removal changes nothing. All k + 1 programs
  (full, and minus each token) go through one batched decoder pass.
- Token maps (attention, optional): the decoder's attention from each 2D grid query to
  token j in the full program, averaged over heads and layers, upsampled (nearest) to
  pixels. It says where the decoder *reads* j, not what j changes; :meth:`TokenMaps.agreement`
  compares the two per token.
- Argmax segmentation: each pixel is labelled with the token whose removal changes it most
  (-1 where no token changes it).

The leave-one-out passes use ``KARL.forward_decoder_masked`` (halted and removed tokens
masked in place) rather than the packed ``forward_decoder``: packing would shift every
later token one slot, reorder the float sums and leave ~1e-7 noise in maps that should be
exactly zero. The sequence is cut after the last kept token, so the cost is that of the
packed path plus the halted tokens in between.

Token positions (``kept``, ``tokens``) are 0-based indices into the encoder's K tokens;
the ``token`` column of the frames and the figure labels are 1-based, as in the halting plot.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from analysis._common import (PALETTE, THRESHOLD_COLOR, Exportable, check_images, chunks, default_token_counts,
                              figure_style, mark_x)

__all__ = ["ProgressiveData", "TokenMaps", "compute_progressive", "compute_token_maps",
           "plot_progressive", "plot_progressive_strip", "plot_token_map", "plot_token_maps",
           "plot_segmentation", "plot_map_agreement", "map_rgb", "segmentation_rgb", "sample_tokens"]

_BIG = ("images", "original", "maps", "attention", "reconstruction")  # not in JSON (use save_npz)


class _ArraysMixin(Exportable):
    def to_dict(self) -> dict:
        """The summary fields (plain types); the image-sized arrays are left to :meth:`save_npz`."""
        out = {}
        for k, v in vars(self).items():
            if k in _BIG:
                continue
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v
        return out

    def save_npz(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(v) for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        np.savez_compressed(path, **arrays)
        return path


@dataclass
class ProgressiveData(_ArraysMixin):
    num_tokens: np.ndarray   # [m] prefix lengths 1, 2, 4, ..., KC-hat (just [0] when KC-hat = 0)
    images: np.ndarray       # [m, 3, H, W] float32 decodes of the prefixes
    l1: np.ndarray           # [m] pixel L1 to the original
    psnr: np.ndarray         # [m] dB
    ssim: np.ndarray         # [m]
    kept: np.ndarray         # [k] kept token positions, in program order
    original: np.ndarray     # [3, H, W] float32
    epsilon: float           # requested
    epsilon_bin: float       # the loss bin the encoder was conditioned on
    budget: int

    @property
    def kc_hat(self) -> int:
        return int(len(self.kept))

    def to_frame(self) -> pd.DataFrame:
        last = [int(self.kept[n - 1]) + 1 if n > 0 else 0 for n in self.num_tokens]
        return pd.DataFrame({"num_tokens": self.num_tokens, "last_token": last, "l1": self.l1,
                             "psnr": self.psnr, "ssim": self.ssim, "kc_hat": self.kc_hat,
                             "epsilon": self.epsilon, "epsilon_bin": self.epsilon_bin})


@dataclass
class TokenMaps(_ArraysMixin):
    kept: np.ndarray            # [k] every kept token position (the program), in order
    tokens: np.ndarray          # [m] positions that have maps (== kept unless max_maps sampled)
    maps: np.ndarray            # [m, H, W] float32 >= 0, leave-one-out change per pixel
    reconstruction: np.ndarray  # [3, H, W] decode of the full program
    original: np.ndarray        # [3, H, W]
    l1: float                   # L1 of the full program's reconstruction
    epsilon: float
    epsilon_bin: float
    budget: int
    grid_size: int
    attention: np.ndarray | None = None  # [m, H, W] decoder attention (sums to <= 1 per pixel)
    notes: list[str] = field(default_factory=list)

    @property
    def kc_hat(self) -> int:
        return int(len(self.kept))

    @property
    def order(self) -> np.ndarray:
        """[m] 1-based rank of each mapped token in the program."""
        return np.searchsorted(self.kept, self.tokens) + 1

    def segmentation(self, kind: str = "removal") -> np.ndarray:
        """[H, W] index into ``tokens`` of the token that explains each pixel most; -1: none."""
        maps = self._maps(kind)
        if len(maps) == 0:
            return np.full(self.original.shape[1:], -1, dtype=np.int64)
        seg = maps.argmax(0)
        return np.where(maps.max(0) > 0, seg, -1)

    def _maps(self, kind: str) -> np.ndarray:
        if kind == "removal":
            return self.maps
        if kind == "attention":
            if self.attention is None:
                raise ValueError("no attention maps: call compute_token_maps(..., attention=True)")
            return self.attention
        raise ValueError(f"kind must be 'removal' or 'attention', got {kind!r}")

    def agreement(self) -> tuple[np.ndarray, float]:
        """Where the two definitions agree, on the g x g grid (removal maps cell-averaged):
        per-token Spearman r between the maps [m] (nan for a constant map) and the fraction
        of grid cells whose argmax token is the same."""
        from scipy.stats import spearmanr

        att = self._maps("attention")
        g, m = self.grid_size, len(self.tokens)
        pool = lambda a: rearrange(a, "m (g1 s1) (g2 s2) -> m (g1 g2) (s1 s2)", g1=g, g2=g).mean(-1)  # noqa: E731
        rem, att = pool(self.maps), pool(att)
        r = np.full(m, np.nan)
        for j in range(m):
            if np.ptp(rem[j]) > 0 and np.ptp(att[j]) > 0:
                r[j] = spearmanr(rem[j], att[j]).statistic
        same = float((rem.argmax(0) == att.argmax(0)).mean()) if m else float("nan")
        return r, same

    def to_frame(self) -> pd.DataFrame:
        """One row per mapped token: its mean and max change, and its share of the argmax
        segmentation (and of the attention, with its agreement, when computed)."""
        m, hw = len(self.tokens), int(np.prod(self.original.shape[1:]))
        flat = self.maps.reshape(m, hw)
        seg = self.segmentation()
        df = pd.DataFrame({"token": self.tokens + 1, "order": self.order, "mean_change": flat.mean(-1),
                           "max_change": flat.max(-1, initial=0.0),
                           "argmax_share": [(seg == j).sum() / hw for j in range(m)]})
        if self.attention is not None:
            r, _ = self.agreement()
            df["attention_mean"] = self.attention.reshape(m, hw).mean(-1)
            df["spearman_removal_attention"] = r
        return df.assign(kc_hat=self.kc_hat, epsilon=self.epsilon, epsilon_bin=self.epsilon_bin)


# ----------------------------------------------------------------------------- computations

def _encode(model, image: Tensor, epsilon: float, budget: int | None):
    assert isinstance(image, Tensor) and image.ndim == 3, (
        f"expected one image [3, H, W] in [0, 1], got "
        f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    x = check_images(image[None], model.image_size).to(model.device)
    enc = model.encode(x, epsilon=epsilon, budget=budget)
    return x, enc


def _decode_head(model, head: Tensor, batch_size: int) -> Tensor:
    """Base-tokenizer head -> pixels in chunks (its activations are image-sized) -> cpu float,
    at the model's precision (``KARL.decode_head``)."""
    return torch.cat([model.decode_head(head[sl]).clamp(0, 1).float().cpu()
                      for sl in chunks(head.shape[0], batch_size)])


def sample_tokens(k: int, max_maps: int | None) -> np.ndarray:
    """Indices into the program of the tokens to map: all, or ``max_maps`` evenly spaced
    over the program order (first and last always in)."""
    if max_maps is None or k <= max_maps:
        return np.arange(k)
    assert max_maps >= 1, f"max_maps must be >= 1, got {max_maps}"
    return np.unique(np.linspace(0, k - 1, max_maps).round().astype(np.int64))


@torch.no_grad()
def compute_progressive(model, image: Tensor, epsilon: float = 0.05, budget: int | None = None,
                        num_tokens: list[int] | None = None, head_batch_size: int = 16) -> ProgressiveData:
    """Decode the image's program cut to its first n kept tokens, n in ``num_tokens``
    (default 1, 2, 4, ..., KC-hat), in one batched decoder pass.

    Args:
        image: [3, H, W] in [0, 1], H = W = ``model.image_size``.
        epsilon: the loss bin the program is encoded for (rounded up, as in ``encode``).
        head_batch_size: images per base-tokenizer decode (bounds memory at large sizes).
    """
    from karl.metrics import l1, psnr, ssim

    x, enc = _encode(model, image, epsilon, budget)
    keep = enc.keep[0]
    k = int(keep.sum())
    counts = [int(n) for n in (num_tokens if num_tokens is not None
                               else (default_token_counts(k) if k else [0]))]
    assert all(0 <= n <= k for n in counts), f"num_tokens must lie in [0, KC-hat = {k}], got {counts}"
    rank = torch.cumsum(keep.long(), 0)                                      # [K] 1-based rank
    rows = torch.stack([keep & (rank <= n) for n in counts])                 # [m, K]
    m = len(counts)
    head = model.forward_decoder(enc.latents.expand(m, -1, -1), rows)        # the one decoder pass
    images = _decode_head(model, head, head_batch_size)                      # [m, 3, H, W]
    ref = x.float().cpu().expand(m, -1, -1, -1)
    return ProgressiveData(
        num_tokens=np.asarray(counts, dtype=np.int64), images=images.numpy(),
        l1=l1(images, ref).double().numpy(), psnr=psnr(images, ref).double().numpy(),
        ssim=ssim(images, ref).double().numpy(), kept=keep.nonzero()[:, 0].cpu().numpy(),
        original=x[0].float().cpu().numpy(), epsilon=float(epsilon),
        epsilon_bin=float(enc.epsilon[0]), budget=int(enc.budget))


def _attention_to_tokens(model, latents: Tensor, keep: Tensor) -> Tensor:
    """Mean over decoder layers and heads of the attention from the n grid queries to each of
    the T latent slots, in a one-row masked pass: [T, n]. Recomputed from each attention
    block's inputs (scaled_dot_product_attention does not return its weights)."""
    n = model.grid_size ** 2
    maps: list[Tensor] = []

    def hook(attn, args, _out):
        x, key_mask = args[0], args[1]
        q, kk, _ = rearrange(F.linear(x, attn.in_proj_weight, attn.in_proj_bias),
                             "b l (three h e) -> three b h l e", three=3, h=attn.heads)
        scores = (q[:, :, :n] @ kk.transpose(-1, -2)) * q.shape[-1] ** -0.5     # [1, h, n, L]
        scores = scores.float().masked_fill(~key_mask[:, None, None, :], float("-inf"))
        maps.append(scores.softmax(-1)[0, :, :, n:].mean(0))                    # [n, T]

    handles = [blk.attn.register_forward_hook(hook) for blk in model.decoder.transformer]
    try:
        model.forward_decoder_masked(latents, keep)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps).mean(0).T                                          # [T, n]


@torch.no_grad()
def compute_token_maps(model, image: Tensor, epsilon: float = 0.05, budget: int | None = None,
                       max_maps: int | None = None, attention: bool = True,
                       head_batch_size: int = 16) -> TokenMaps:
    """Leave-one-out map of every kept token (or of ``max_maps`` sampled ones), plus the
    decoder-attention maps when ``attention``. One batched decoder pass of 1 + m programs.

    Args:
        image: [3, H, W] in [0, 1].
        max_maps: cap on the tokens mapped (evenly sampled over the program); None: all.
        head_batch_size: images per base-tokenizer decode.
    """
    x, enc = _encode(model, image, epsilon, budget)
    keep = enc.keep[0]
    kept = keep.nonzero()[:, 0]
    k = len(kept)
    picks = torch.as_tensor(sample_tokens(k, max_maps), dtype=torch.long)
    tokens = kept[picks.to(kept.device)]
    span = int(kept[-1]) + 1 if k else 1               # cut the sequence after the last kept token
    latents, keep_t = enc.latents[:, :span], keep[:span]
    rows = keep_t[None].repeat(1 + len(tokens), 1)                               # [1 + m, T]
    rows[torch.arange(1, 1 + len(tokens), device=rows.device), tokens] = False                       # row 1 + j drops token j
    head = model.forward_decoder_masked(latents.expand(rows.shape[0], -1, -1), rows)
    recon = _decode_head(model, head, head_batch_size)                           # [1 + m, 3, H, W]
    maps = (recon[1:] - recon[:1]).abs().sum(1)                                  # [m, H, W]
    att = None
    if attention and len(tokens):
        a = _attention_to_tokens(model, latents, keep_t[None])[tokens]           # [m, n]
        g, s = model.grid_size, model.image_size // model.grid_size
        a = rearrange(a, "m (h w) -> m h w", h=g)
        att = a.repeat_interleave(s, 1).repeat_interleave(s, 2).float().cpu().numpy()
    notes = [] if len(tokens) == k else [f"{len(tokens)} of {k} kept tokens mapped (evenly sampled)"]
    from karl.metrics import l1
    return TokenMaps(kept=kept.cpu().numpy(), tokens=tokens.cpu().numpy(), maps=maps.numpy(),
                     reconstruction=recon[0].numpy(), original=x[0].float().cpu().numpy(),
                     l1=float(l1(recon[:1], x.float().cpu())[0]), epsilon=float(epsilon),
                     epsilon_bin=float(enc.epsilon[0]), budget=int(enc.budget),
                     grid_size=int(model.grid_size), attention=att, notes=notes)


# ----------------------------------------------------------------------------- rendering (numpy)

def _inferno(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps
    return (colormaps["inferno"](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return (np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255).round().astype(np.uint8)


def _png_image(image: np.ndarray):
    """A plotly Image trace from [3, H, W] floats, as an inline PNG (far smaller than ``z``)."""
    import base64
    import io

    import plotly.graph_objects as go
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_uint8(image)).save(buf, format="PNG", optimize=True)
    return go.Image(source="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                    hoverinfo="skip")


def map_rgb(tm: TokenMaps, j: int, overlay: float = 0.0, kind: str = "removal") -> np.ndarray:
    """Map of mapped token ``j`` as [H, W, 3] uint8 (inferno, scaled to its own maximum);
    ``overlay`` in (0, 1] blends it over the grey original instead."""
    m = tm._maps(kind)[j]
    rgb = _inferno(m / m.max() if m.max() > 0 else m)
    if overlay <= 0:
        return rgb
    grey = _to_uint8(tm.original).mean(-1, keepdims=True)
    return ((1 - overlay) * grey + overlay * rgb).round().astype(np.uint8)


def _token_colors(m: int) -> np.ndarray:
    """[m, 3] uint8 distinct colours (golden-ratio hues), stable for a given index."""
    hues = (np.arange(m) * 0.618033988749895) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.65, 0.95)] for h in hues],
                    dtype=np.uint8).reshape(m, 3)


def segmentation_rgb(tm: TokenMaps, kind: str = "removal") -> np.ndarray:
    """The argmax-token segmentation as [H, W, 3] uint8 (black: no token changes the pixel)."""
    seg = tm.segmentation(kind)
    lut = np.concatenate([_token_colors(len(tm.tokens)), np.zeros((1, 3), np.uint8)])
    return lut[seg]  # index -1 -> the last (black) row


# ----------------------------------------------------------------------------- figures

def plot_progressive(pg: ProgressiveData):
    """L1 (and PSNR) vs the number of program tokens decoded; epsilon and KC-hat marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=pg.num_tokens, y=pg.l1, mode="lines+markers", name="L1",
                             line=dict(color=PALETTE[0]),
                             hovertemplate="%{x} tokens: L1 %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=pg.num_tokens, y=pg.psnr, mode="lines+markers", name="PSNR (dB)",
                             yaxis="y2", line=dict(color=PALETTE[2], dash="dot"),
                             hovertemplate="%{x} tokens: %{y:.2f} dB<extra></extra>"))
    fig.add_hline(y=pg.epsilon, line_dash="dash", line_color=THRESHOLD_COLOR,
                  annotation_text=f"epsilon {pg.epsilon:g}", annotation_position="top right")
    # Token counts 1, 2, 4, ... on a log axis ticked at the counts themselves, its range set
    # from the data; linear when a count is 0 (an empty program).
    counts = pg.num_tokens.astype(np.float64)
    log_x = bool(counts.min() >= 1)
    hi = max(float(counts.max()), pg.kc_hat, 1.0)
    xrange = ([np.log10(max(counts.min(), 1)) - 0.08, np.log10(hi) + 0.08] if log_x
              else [-0.05 * hi - 0.5, hi * 1.05 + 0.5])
    mark_x(fig, max(pg.kc_hat, 1), f"KC-hat {pg.kc_hat}", log_x, side="left", line_dash="dot",
           line_color="#555")
    fig.update_layout(title=f"Progressive decoding of the program (epsilon bin {pg.epsilon_bin:g})",
                      xaxis=dict(title="program tokens decoded (first n kept)", type="log" if log_x else "linear",
                                 range=xrange, tickvals=[int(c) for c in counts]),
                      yaxis=dict(title="pixel L1", rangemode="tozero"),
                      yaxis2=dict(title="PSNR (dB)", overlaying="y", side="right", showgrid=False),
                      **figure_style(), legend_orientation="h", legend_y=-0.2)
    return fig


def plot_progressive_strip(pg: ProgressiveData):
    """The film strip: the original, then each prefix's decode with its token count and L1."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = ["original"] + [f"{n} tok<br>L1 {e:.3f}" for n, e in zip(pg.num_tokens, pg.l1)]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.01)
    for i, img in enumerate([pg.original, *pg.images]):
        fig.add_trace(_png_image(img), row=1, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title="Program prefixes decoded", **figure_style(),
                      height=260, margin=dict(l=10, r=10, t=90, b=10))
    return fig


def plot_token_map(tm: TokenMaps, j: int, kind: str = "removal"):
    """Original | map of mapped token ``j`` (index into ``tm.tokens``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    assert 0 <= j < len(tm.tokens), f"token index {j} outside [0, {len(tm.tokens)})"
    label = "change when removed (sum over RGB)" if kind == "removal" else "decoder attention"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("original", label), horizontal_spacing=0.04)
    fig.add_trace(_png_image(tm.original), row=1, col=1)
    fig.add_trace(go.Heatmap(z=tm._maps(kind)[j], colorscale="Inferno", colorbar_title=kind,
                             hovertemplate="x %{x}, y %{y}: %{z:.4f}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", scaleanchor="x2", row=1, col=2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=f"Token {int(tm.tokens[j]) + 1} (#{int(tm.order[j])} of {tm.kc_hat} kept)",
                      **figure_style())
    return fig


def plot_token_maps(tm: TokenMaps, kind: str = "removal", cols: int = 8, max_side: int = 32):
    """Every mapped token's map as one mosaic, each tile scaled to its own maximum (tiles are
    average-pooled to at most ``max_side`` px); hover gives the token and its raw value."""
    import plotly.graph_objects as go

    maps, m = tm._maps(kind), len(tm.tokens)
    if m == 0:
        return go.Figure().update_layout(title="No kept tokens at this epsilon", **figure_style())
    f = max(1, maps.shape[-1] // max_side)
    pooled = rearrange(maps, "m (h a) (w b) -> m h w (a b)", a=f, b=f).mean(-1)
    peak = pooled.reshape(m, -1).max(-1)
    norm = pooled / np.where(peak > 0, peak, 1)[:, None, None]
    cols = min(cols, m)
    rows, s = -(-m // cols), pooled.shape[-1]
    z = np.full((3, rows * (s + 1), cols * (s + 1)), np.nan)      # normalised, raw, token (1-based)
    for j in range(m):
        r, c = divmod(j, cols)
        tile = np.s_[r * (s + 1):r * (s + 1) + s, c * (s + 1):c * (s + 1) + s]
        z[0][tile], z[1][tile], z[2][tile] = norm[j], pooled[j], tm.tokens[j] + 1
    fig = go.Figure(go.Heatmap(z=z[0], customdata=np.dstack([z[1], z[2]]), colorscale="Inferno", zmin=0,
                               zmax=1, colorbar_title="/ max", hoverongaps=False,
                               hovertemplate="token %{customdata[1]:.0f}: %{customdata[0]:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    what = "change when removed" if kind == "removal" else "decoder attention"
    fig.update_layout(title=f"{what} per token, {m} of {tm.kc_hat} kept tokens, in program order",
                      **figure_style(), height=max(300, 120 * rows))
    return fig


def plot_segmentation(tm: TokenMaps, kind: str = "removal"):
    """Original | argmax-token segmentation (hover: the token that explains the pixel most)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    seg = tm.segmentation(kind)
    label = np.where(seg >= 0, tm.tokens[np.maximum(seg, 0)] + 1, 0)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("original", "argmax token"), horizontal_spacing=0.04)
    fig.add_trace(_png_image(tm.original), row=1, col=1)
    fig.add_trace(go.Image(z=segmentation_rgb(tm, kind), customdata=label,
                           hovertemplate="token %{customdata}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    n_used = len(np.unique(seg[seg >= 0]))
    fig.update_layout(title=f"Which token explains each pixel most ({n_used} of {len(tm.tokens)} tokens win "
                            "a pixel; black: none)", **figure_style())
    return fig


def plot_map_agreement(tm: TokenMaps):
    """Spearman r between each token's removal map and its attention map, on the grid."""
    import plotly.graph_objects as go

    r, same = tm.agreement()
    fig = go.Figure(go.Bar(x=tm.tokens + 1, y=r, marker_color=PALETTE[0],
                           hovertemplate="token %{x}: r = %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line_color="#888", line_width=1)
    med = np.nanmedian(r) if np.isfinite(r).any() else float("nan")
    # Two short lines: one long line overflowed a half-width plot (issue 25).
    fig.update_layout(title=(f"Removal vs attention maps: median Spearman r {med:.2f}<br>"
                             f"argmax token agrees on {same:.0%} of grid cells"),
                      xaxis_title="token (1-based)", yaxis_title="Spearman r", yaxis_range=[-1, 1],
                      **figure_style())
    return fig
