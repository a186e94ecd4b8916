"""KARL: single-pass adaptive image tokenizer (paper Sec. 3; sizes of the released karl_small).

Axes: b batch, n 2D grid tokens (g x g), k 1D latent tokens, d width, e factorised latent.

    images --base.encode--> grid [b, c, g, g]
    [cond | patch_embed(images) ++ grid + pos2d | latent_tokens[:T]] --encoder-->
        z [b, k, e] (factorised, optionally VQ) and halting probs [b, k]
    keep = halting_prob <= 0.75                           # the "minimal program"
    [mask tokens + pos2d | decoder_embed(z[keep]) + pos1d] --decoder--> head [b, n, out]
    head --base.decode_head--> images

Parameter names follow the released checkpoints (official_state_dict/*.keys.txt); the base
tokenizer lives under ``base.`` instead of ``base_tokenizer.{vqgan,vae}.``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from karl.base_tokenizers import BaseGrid, build_base_tokenizer
from karl.config import ModelConfig
from karl.model.encoding import Encoding, Sweep, epsilon_to_bin, halting_decision
from karl.model.layers import Transformer
from karl.model.linear_code import LinearCode
from karl.model.quantizer import FactorizedQuantizer


class Decoder(nn.Module):
    """Names match the release: ``decoder.ln_pre``, ``decoder.transformer.N``, ``ln_post``, ``ffn``."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        w = cfg.width
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.decoder_layers, cfg.heads, cfg.mlp_ratio).transformer
        self.ln_post = nn.LayerNorm(w)
        self.ffn = nn.Sequential(nn.Linear(w, 2 * w), nn.Tanh(), nn.Linear(2 * w, out_dim))

    def forward(self, x: Tensor, key_mask: Tensor, n: int) -> Tensor:
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x, key_mask)
        return self.ffn(self.ln_post(x[:, :n]))


class KARL(nn.Module):
    """Single-pass adaptive tokenizer: a base 2D tokenizer, an encoder with a halting head, a decoder.

    Axes: b batch, n = g * g 2D grid tokens, T the token budget (k kept), d width, e the
    factorised latent. Images are ``[b, 3, S, S]`` floats in [0, 1] with S = ``image_size``.

    Public API: :meth:`encode` (images, epsilon, budget -> :class:`Encoding`: which of the
    first T tokens are kept for pixel L1 <= epsilon), :meth:`sweep` (images at many epsilons
    in one pass -> :class:`Sweep`), :meth:`decode` (Encoding -> images),
    :meth:`reconstruct` (fixed regime: exactly k tokens, all kept), :meth:`keep_prefix`
    (tail-drop of an encoding). Training calls the stages directly: :meth:`base_encode`,
    :meth:`embed_grid`, :meth:`forward_encoder`, :meth:`quantize_latents`,
    :meth:`forward_decoder` (see ``karl/train/phases.py`` and docs/ARCHITECTURE.md).
    ``encode`` and ``reconstruct`` accept a cached ``base_grid=`` (a :class:`BaseGrid` from
    ``base_encode(images)``) to skip the base tokenizer.

    Inference precision: :meth:`base_encode`, :meth:`encode`, :meth:`forward_decoder` and
    :meth:`decode_head` (so also :meth:`sweep`, :meth:`decode`, :meth:`reconstruct`) consult
    ``precision_policy`` (None: fp32, the reference), which ``karl.precision.set_precision``
    or ``with karl.precision.at_precision(model, p):`` set; nothing patches these methods.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        w, g = cfg.width, cfg.grid_size
        assert cfg.image_size % cfg.base.downsample == 0, "image_size must be a multiple of downsample"
        assert cfg.max_tokens <= cfg.num_latent_tokens, "max_tokens exceeds the latent token table"
        self.base = build_base_tokenizer(cfg.base)
        patch_dim = w - cfg.base.latent_dim
        assert patch_dim > 0, f"width {w} must exceed the base latent dim {cfg.base.latent_dim}"
        p = cfg.pos_table_size
        self.patch_embed = nn.Conv2d(3, patch_dim, cfg.base.downsample, stride=cfg.base.downsample)
        self.encoder_positional_embedding = nn.Parameter(torch.randn(w, p, p) * w ** -0.5)
        self.decoder_positional_embedding = nn.Parameter(torch.randn(w, p, p) * w ** -0.5)
        self.decoder_mask_token = nn.Parameter(torch.randn(1, 1, w) * w ** -0.5)
        self.latent_tokens = nn.Parameter(torch.randn(cfg.num_latent_tokens, w) * w ** -0.5)
        self.decoder_latent_tokens_timestep_embed = nn.Parameter(
            torch.randn(cfg.num_latent_tokens, w) * w ** -0.5)
        # Each bin's embedding starts as the constant bin value (as in the authors' release).
        self.rec_loss_embeddings = nn.Parameter(
            repeat(torch.tensor(cfg.loss_bins), "c -> c d", d=w).clone())
        self.register_buffer("loss_bins", torch.tensor(cfg.loss_bins, dtype=torch.float32),
                             persistent=False)

        self.encoder_ln_pre = nn.LayerNorm(w)
        self.encoder = Transformer(w, cfg.encoder_layers, cfg.heads, cfg.mlp_ratio)
        self.encoder_ln_post_halt = nn.LayerNorm(w)
        self.encoder_ln_post = nn.LayerNorm(w)
        self.halting_mlp = nn.Sequential(nn.Linear(w, cfg.halting_hidden), nn.Tanh(),
                                         nn.Linear(cfg.halting_hidden, 1))
        self.pre_quantizer_mlp = nn.Linear(w, cfg.token_dim)
        if cfg.quantize:
            self.quantize = FactorizedQuantizer(cfg.codebook_size, cfg.token_dim, cfg.commitment)
        self.decoder_embed = nn.Linear(cfg.token_dim, w)
        self.decoder = Decoder(cfg, self.base.head_dim)
        self.grid_size = g
        self.linear_code = self._build_linear_code(cfg) if cfg.linear_code else None
        self._init_linear()
        # The precision the public methods run at (a karl.precision.Precision; None: fp32).
        self.precision_policy = None

    def _build_linear_code(self, cfg: ModelConfig) -> LinearCode:
        if self.base.head_dim != cfg.base.latent_dim:
            raise ValueError(f"model.linear_code needs a base whose decoder reads its latent (head_dim "
                             f"{self.base.head_dim} != latent_dim {cfg.base.latent_dim})")
        return LinearCode(cfg.base.latent_dim, cfg.grid_size, cfg.num_latent_tokens, cfg.token_dim)

    def _init_linear(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("base"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.linear_code is not None:
            # The learned parts start as small corrections of the linear code (not zero, so that
            # every parameter gets a gradient from the first step).
            nn.init.trunc_normal_(self.pre_quantizer_mlp.weight, std=1e-3)
            nn.init.trunc_normal_(self.decoder.ffn[-1].weight, std=1e-3)

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def max_tokens(self) -> int:
        return self.config.max_tokens

    @property
    def device(self) -> torch.device:
        return self.latent_tokens.device

    @property
    def precision(self) -> str:
        """The inference precision asked for (``fp32`` when none was set: karl/precision.py)."""
        return "fp32" if self.precision_policy is None else self.precision_policy.name

    @property
    def precision_stats(self) -> dict:
        """The precision guard's counts (images, near-threshold tokens, re-checked images)."""
        return {} if self.precision_policy is None else self.precision_policy.stats

    def _at_precision(self, stage: str, fn, *args):
        """``fn(*args)``, an inference stage, at the option ``precision_policy`` gives ``stage``."""
        if self.precision_policy is None:
            return fn(*args)
        return self.precision_policy.run(self, stage, fn, *args)

    def loss_bin(self, epsilon: float) -> tuple[int, float]:
        """(index, value) of the loss bin ``epsilon`` conditions on (:func:`epsilon_to_bin`)."""
        idx = int(epsilon_to_bin(epsilon, self.loss_bins.cpu()).item())
        return idx, float(self.config.loss_bins[idx])

    def bin_index(self, epsilon: float | Tensor, batch: int) -> Tensor:
        idx = epsilon_to_bin(epsilon, self.loss_bins).to(self.device)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        assert idx.shape == (batch,), f"epsilon must be a scalar or [B]={batch}, got {tuple(idx.shape)}"
        return idx

    # ------------------------------------------------------------------ encoder stages
    def _pos2d(self, table: Tensor) -> Tensor:
        """[d, P, P] table -> [n, d], nearest-sampled to the grid (64 -> 16 in the release)."""
        g = self.grid_size
        if table.shape[-1] != g:
            table = F.interpolate(table[None], size=(g, g), mode="nearest")[0]
        return rearrange(table, "d h w -> (h w) d")

    def decoder_head_weight(self) -> Tensor:
        """The weight of KARL's last decoder layer (where the GAN weight is measured when the base is frozen)."""
        return self.decoder.ffn[-1].weight

    def base_encode(self, images: Tensor) -> BaseGrid:
        """The base tokenizer's grid of ``images`` [b, 3, S, S], at the model's precision."""
        self._check_images(images)
        return self._at_precision("base_encode", self.base.encode, images)

    def embed_grid(self, images: Tensor, grid: Tensor) -> Tensor:
        """2D tokens = concat(patch embedding of pixels, base latent) + 2D position: [b, n, d]."""
        patches = self.patch_embed(images)
        tokens = rearrange(torch.cat([patches, grid.to(patches.dtype)], dim=1), "b d h w -> b (h w) d")
        return tokens + self._pos2d(self.encoder_positional_embedding)

    def forward_encoder(self, tokens2d: Tensor, bin_idx: Tensor, budget: int,
                        grid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns factorised latents z [b, T, e] and halting logits [b, T].

        ``grid`` is the base latent [b, c, g, g] the 2D tokens were embedded from; models with a
        linear code (``model.linear_code``) need it, others ignore it.
        """
        b = tokens2d.shape[0]
        assert 1 <= budget <= self.config.num_latent_tokens, (
            f"budget {budget} outside [1, {self.config.num_latent_tokens}]")
        cond = self.rec_loss_embeddings[bin_idx][:, None]                    # [b, 1, d]
        latent = repeat(self.latent_tokens[:budget], "k d -> b k d", b=b)  # [b, T, d]
        x = torch.cat([cond, tokens2d, latent], dim=1)                      # [b, 1 + n + T, d]
        assert x.shape[:2] == (b, 1 + self.grid_size ** 2 + budget), (
            f"encoder sequence {tuple(x.shape)}: expected [b, 1 + n + T, d] = [{b}, 1 + "
            f"{self.grid_size ** 2} + {budget}, d]")
        x = self.encoder_ln_pre(x)
        x = self.encoder(x)[:, -budget:]
        z = self.pre_quantizer_mlp(self.encoder_ln_post(x))
        if self.linear_code is not None:
            if grid is None:
                raise ValueError("this model has a linear code: forward_encoder needs grid= (the base latent)")
            z = z.float() + self.linear_code.encode(grid, budget)
        halt_logits = self.halting_mlp(self.encoder_ln_post_halt(x)).squeeze(-1)
        return z, halt_logits

    def quantize_latents(self, z: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Returns (latents, token ids or None, quantisation loss)."""
        if not self.config.quantize:
            return z, None, z.new_zeros(())
        return self.quantize(z)

    # ------------------------------------------------------------------ decoder stages
    def forward_decoder(self, latents: Tensor, keep: Tensor) -> Tensor:
        """Predict the base grid from the kept latents: [b, head_dim, g, g], at the model's precision.

        Kept tokens are packed to the front (padding masked out), so the decoder's sequence
        is n + max(kc_hat) long: few kept tokens cost less than many. Halted tokens neither
        attend nor are attended to. Masks are per image.
        """
        return self._at_precision("karl_decode", self._forward_decoder, latents, keep)

    def _forward_decoder(self, latents: Tensor, keep: Tensor) -> Tensor:
        b, k, _ = latents.shape
        assert keep.shape == (b, k), f"keep {tuple(keep.shape)} vs latents {tuple(latents.shape)}"
        n = self.grid_size ** 2
        tokens1d = self.decoder_embed(latents) + self.decoder_latent_tokens_timestep_embed[:k]
        packed, valid = pack_kept(tokens1d, keep)                           # [b, m, d], [b, m]
        mask_tokens = self.decoder_mask_token.expand(b, n, -1) + self._pos2d(self.decoder_positional_embedding)
        x = torch.cat([mask_tokens.to(packed.dtype), packed], dim=1)
        key_mask = torch.cat([valid.new_ones(b, n), valid], dim=1)
        out = self.decoder(x, key_mask, n)                                  # [b, n, head_dim]
        return self._add_linear_reading(rearrange(out, "b (h w) c -> b c h w", h=self.grid_size), latents, keep)

    def decode_head(self, head: Tensor) -> Tensor:
        """The base tokenizer's decoder: head [b, head_dim, g, g] -> pixels [b, 3, S, S]
        (not clamped), at the model's precision."""
        return self._at_precision("base_decode", self.base.decode_head, head)

    def _add_linear_reading(self, head: Tensor, latents: Tensor, keep: Tensor) -> Tensor:
        if self.linear_code is None:
            return head
        return head.float() + self.linear_code.decode(latents, keep, tuple(head.shape[1:]))

    def forward_decoder_masked(self, latents: Tensor, keep: Tensor) -> Tensor:
        """Reference path without packing (all K tokens in the sequence, halted ones masked)."""
        b, k, _ = latents.shape
        n = self.grid_size ** 2
        tokens1d = self.decoder_embed(latents) + self.decoder_latent_tokens_timestep_embed[:k]
        mask_tokens = self.decoder_mask_token.expand(b, n, -1) + self._pos2d(self.decoder_positional_embedding)
        x = torch.cat([mask_tokens, tokens1d], dim=1)
        key_mask = torch.cat([keep.new_ones(b, n), keep], dim=1)
        out = self.decoder(x, key_mask, n)
        return self._add_linear_reading(rearrange(out, "b (h w) c -> b c h w", h=self.grid_size), latents, keep)

    # ------------------------------------------------------------------ public API
    def _check_images(self, images: Tensor) -> None:
        s = self.image_size
        assert images.ndim == 4 and images.shape[1:] == (3, s, s), (
            f"expected images [B, 3, {s}, {s}] in [0, 1], got {tuple(images.shape)}")

    def _check_base_grid(self, grid: BaseGrid, batch: int) -> None:
        """A cached ``base_grid=`` must be this model's ``base_encode`` of the same images."""
        features = getattr(grid, "features", None)
        if not isinstance(features, Tensor):
            raise ValueError(f"base_grid must be a BaseGrid from model.base_encode(images), "
                             f"got {type(grid).__name__}")
        want = (batch, self.config.base.latent_dim, self.grid_size, self.grid_size)
        if tuple(features.shape) != want:
            raise ValueError(f"base_grid.features must be [B, latent_dim, g, g] = {list(want)} for these "
                             f"images, got {list(features.shape)}")
        if not features.is_floating_point():
            raise ValueError(f"base_grid.features must be a float tensor, got {features.dtype}")

    @torch.no_grad()
    def encode(self, images: Tensor, epsilon: float | Tensor = 0.05, budget: int | None = None,
               base_grid: BaseGrid | None = None, monotone: bool = False) -> Encoding:
        """One encoder pass: which of the first ``budget`` tokens are needed for L1 <= epsilon.

        ``epsilon`` is a float or a per-image tensor [B]; it is rounded up to the next loss bin.
        ``base_grid`` lets callers reuse a cached ``base_encode(images)``.

        ``monotone=True`` (not single pass: one encoder pass per bin up to epsilon's) returns,
        per image, the shortest of the programs predicted for epsilon's bin and every stricter
        bin. The rule is sound: a program that meets a stricter bin meets this one too, and it
        makes KC-hat non-increasing in epsilon by construction. ``epsilon`` of the result is
        the requested bin.

        At the model's precision: ``precision_policy`` runs it, its halting decisions guarded
        (karl/precision.py); exactly fp32 without one.
        """
        args = {"images": images, "epsilon": epsilon, "budget": budget, "base_grid": base_grid,
                "monotone": monotone}
        if self.precision_policy is None:
            return self._encode(**args)
        return self.precision_policy.encode(self, self._encode, args)

    def _encode(self, images: Tensor, epsilon: float | Tensor = 0.05, budget: int | None = None,
                base_grid: BaseGrid | None = None, monotone: bool = False) -> Encoding:
        """:meth:`encode` in fp32 (what the precision policy runs, guards and re-checks)."""
        budget = self.max_tokens if budget is None else int(budget)
        images = images.to(self.device)
        if base_grid is not None:
            self._check_images(images)
            self._check_base_grid(base_grid, images.shape[0])
        grid = base_grid if base_grid is not None else self.base_encode(images)
        bin_idx = self.bin_index(epsilon, images.shape[0])
        tokens2d = self.embed_grid(images, grid.features)
        if monotone:
            return self._encode_monotone(tokens2d, bin_idx, budget, grid.features)
        return self._encode_at(tokens2d, bin_idx, budget, grid.features)

    @torch.no_grad()
    def sweep(self, images: Tensor, epsilons: Sequence[float] | Tensor | None = None,
              budget: int | None = None, base_grid: BaseGrid | None = None) -> Sweep:
        """Every image at every epsilon (default: every loss bin) in one batched encoder pass.

        The base tokenizer runs once per image (or not at all with a cached ``base_grid``);
        each (image, epsilon) pair is a row of one :meth:`encode` call, so element ``[i, j]``
        of the :class:`Sweep` is ``encode(images[i:i+1], epsilons[j], budget)`` (at the
        model's precision: its base encode and ``encode`` consult ``precision_policy``).
        """
        eps = torch.as_tensor(self.config.loss_bins if epsilons is None else epsilons,
                              dtype=torch.float64).reshape(-1).cpu()
        assert eps.numel() >= 1, "sweep needs at least one epsilon"
        images = images.to(self.device)
        n, e = images.shape[0], eps.numel()
        if base_grid is not None:
            self._check_images(images)
            self._check_base_grid(base_grid, n)
        grid = base_grid if base_grid is not None else self.base_encode(images)

        def rows(x: Tensor) -> Tensor:  # [n, ...] -> [n * e, ...], image-major (no copy for n = 1)
            return x[:, None].expand(n, e, *x.shape[1:]).reshape(n * e, *x.shape[1:])
        rep = BaseGrid(features=rows(grid.features), target=rows(grid.target))
        enc = self.encode(rows(images), epsilon=eps.repeat(n), budget=budget, base_grid=rep)
        return Sweep.from_rows(enc, eps)

    def _encode_at(self, tokens2d: Tensor, bin_idx: Tensor, budget: int, grid: Tensor | None = None) -> Encoding:
        z, halt_logits = self.forward_encoder(tokens2d, bin_idx, budget, grid)
        latents, ids, _ = self.quantize_latents(z)
        probs, keep = halting_decision(halt_logits, self.config.halt_threshold)
        return Encoding(latents=latents, halting_probs=probs, keep=keep, token_ids=ids,
                        epsilon=self.loss_bins[bin_idx])

    def _encode_monotone(self, tokens2d: Tensor, bin_idx: Tensor, budget: int,
                         grid: Tensor | None = None) -> Encoding:
        best = self._encode_at(tokens2d, bin_idx, budget, grid)           # the requested bin's own program
        for b in range(int(bin_idx.max()) - 1, -1, -1):              # then ever stricter bins
            stricter = bin_idx > b
            if not bool(stricter.any()):
                continue
            cand = self._encode_at(tokens2d, torch.full_like(bin_idx, b), budget, grid)
            better = stricter & (cand.kc_hat < best.kc_hat)
            if bool(better.any()):
                best = _select(better, cand, best)
        return dataclasses.replace(best, epsilon=self.loss_bins[bin_idx])

    @torch.no_grad()
    def decode(self, encoding: Encoding) -> Tensor:
        head = self.forward_decoder(encoding.latents.to(self.device), encoding.keep.to(self.device))
        return self.decode_head(head).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, num_tokens: int, epsilon: float = 0.0,
                    base_grid: BaseGrid | None = None) -> Tensor:
        """Fixed-token regime: encode with exactly ``num_tokens`` tokens, keep all, decode."""
        enc = self.encode(images, epsilon=epsilon, budget=num_tokens, base_grid=base_grid)
        return self.decode(dataclasses.replace(enc, keep=torch.ones_like(enc.keep)))

    def keep_prefix(self, encoding: Encoding, k: int | Tensor) -> Encoding:
        """Encoding with only the first k tokens kept (tail-drop, for prefix-search baselines)."""
        b = encoding.keep.shape[0]
        k = torch.as_tensor(k, device=encoding.keep.device).reshape(-1, 1).expand(b, 1)
        idx = torch.arange(encoding.budget, device=encoding.keep.device)[None]
        return dataclasses.replace(encoding, keep=idx < k)


def _select(mask: Tensor, a: Encoding, b: Encoding) -> Encoding:
    """Per image: ``a``'s program where ``mask`` [B] is true, else ``b``'s."""
    def pick(x: Tensor | None, y: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x, y)
    return Encoding(pick(a.latents, b.latents), pick(a.halting_probs, b.halting_probs),
                    pick(a.keep, b.keep), pick(a.token_ids, b.token_ids), pick(a.epsilon, b.epsilon))


def pack_kept(tokens: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move each image's kept tokens to the front, in order, and cut to the longest program.

    tokens [b, k, d], keep [b, k] bool -> packed [b, m, d], valid [b, m] with m = max kc_hat.
    """
    b, k, d = tokens.shape
    counts = keep.sum(-1)
    m = int(counts.max().item()) if b > 0 else 0
    # Stable sort: kept (key 0) before halted (key 1), original order preserved.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :m]
    packed = torch.gather(tokens, 1, repeat(order, "b m -> b m d", d=d))
    valid = torch.arange(m, device=keep.device)[None] < counts[:, None]
    return packed, valid
