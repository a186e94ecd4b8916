"""A deterministic "monotone" KARL for tests and demos without a trained checkpoint.

A randomly initialised KARL gives token counts that need not move with epsilon, so a test
that asks "does a stricter epsilon use at least as many tokens?" could fail for no
reason. :func:`build_monotone_model` sets a handful of weights of a normal KARL (same
class, same forward pass) so that the property holds *by construction*:

1. Reserved coordinates 0..9 of the width. Grid tokens (patch embedding and 2D positions)
   are zero on 0..9; latent tokens are zero on 2..7.
2. The condition token of loss bin ``v`` is ``e_mark + v e_eps + sqrt(1 - v^2) e_fill``
   (three zero-mean unit directions on coordinates 2..7). Its norm does not depend on
   ``v``, so after the LayerNorms its ``e_eps`` component is exactly ``4 v`` (width 32)
   and its ``e_mark`` component is a constant.
3. Encoder layer 0, head 0: the query is a constant, the key reads ``e_mark``, so only the
   condition token stands out, a marker on the latent tokens keeps them out of the
   attention (so the weights do not depend on the budget either) and **no attention
   weight depends on v**; the value reads
   ``e_eps`` (only the condition token has one: ``4 v``) plus one base-latent channel of
   the grid tokens (an image-dependent offset ``B``); the output projection writes the
   result along ``e_halt`` (coordinates 0, 1). Every other residual branch of the encoder
   is zeroed. Latent token k therefore leaves the encoder as
   ``x_k = LN(latent_k) + (A v + B) e_halt`` with ``A > 0`` independent of the image.
4. The halting head reads the ``e_halt`` component ``u`` of ``LN(x_k)``, which is
   strictly increasing in ``A v + B``, and maps it through ``3 tanh(3 u / sqrt(w)) + ln 3``,
   also increasing. Hence every token's halting probability rises with epsilon, and the
   set of kept tokens at a larger epsilon is a subset of the set at a smaller one:
   **KC-hat is non-increasing in epsilon for every image.** Each latent token starts at a
   different offset along ``e_halt``, so token k halts once epsilon passes its own
   threshold (spread geometrically over the loss bins; token 1 never halts).

The reconstructions are meaningless (the decoder is random and the latents carry the image
only through ``B``): this model exercises the app, it does not tokenize anything well.
"""

from __future__ import annotations

import math

import torch

from karl.api import build_model
from karl.model import KARL

__all__ = ["build_monotone_model"]


def _direction(width: int, i: int, j: int) -> torch.Tensor:
    """Unit, zero-mean direction (e_i - e_j) / sqrt(2)."""
    d = torch.zeros(width)
    d[i], d[j] = 2 ** -0.5, -(2 ** -0.5)
    return d


@torch.no_grad()
def build_monotone_model(preset: str = "tiny", seed: int = 0, image_gain: float = 0.3) -> KARL:
    """A KARL of ``preset`` whose KC-hat provably falls (weakly) as epsilon rises.

    ``image_gain`` scales how much the image shifts the halting thresholds (0: every image
    gets the same token count). See the module docstring for the construction.
    """
    model = build_model(preset, seed=seed).eval()
    cfg = model.config
    w, head_dim = cfg.width, cfg.width // cfg.heads
    assert w - cfg.base.latent_dim >= 10, "needs 10 patch-embedding channels to reserve"
    assert w >= 16
    e_halt, e_mark, e_eps, e_fill, e_lat = (_direction(w, i, i + 1) for i in (0, 2, 4, 6, 8))
    root_w = math.sqrt(w)

    # 1. Grid tokens carry nothing on the reserved coordinates 0..9.
    model.patch_embed.weight[:10] = 0
    model.patch_embed.bias[:10] = 0
    model.encoder_positional_embedding[:10] = 0
    for ln in (model.encoder_ln_pre, model.encoder_ln_post_halt):
        ln.weight.fill_(1.0)
        ln.bias.zero_()

    # 2. Condition tokens of constant norm: LN(cond) = sqrt(w / 2) * cond.
    bins = model.loss_bins.double().clamp(max=0.99)
    cond = e_mark[None] + bins[:, None] * e_eps[None] + (1 - bins[:, None] ** 2).sqrt() * e_fill[None]
    model.rec_loss_embeddings.copy_(cond.float())
    eps_scale = math.sqrt(w / 2)            # e_eps component of LN(cond) per unit of v (4 at w 32)

    # 3. Encoder: only layer 0's attention head 0 writes, and only along e_halt.
    for block in model.encoder.transformer:
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
        block.attn.out_proj.weight.zero_()
        block.attn.out_proj.bias.zero_()
    block = model.encoder.transformer[0]
    block.ln_1.weight.fill_(1.0)
    block.ln_1.bias.zero_()
    attn = block.attn
    attn.in_proj_weight.zero_()
    attn.in_proj_bias.zero_()
    n_tokens = 1 + cfg.grid_size ** 2      # the tokens that receive attention
    gamma = math.log(n_tokens)              # condition token gets about half the attention
    # score(cond) = q . k / sqrt(head_dim) = gamma; grid tokens score 0; latent tokens
    # (e_lat component 1/2 of LN = sqrt(w)/2) score -40 gamma: no attention at all.
    attn.in_proj_bias[0] = gamma * math.sqrt(head_dim) / eps_scale
    attn.in_proj_weight[w + 0] = e_mark - 40 * eps_scale / (root_w / 2) * e_lat
    attn.in_proj_weight[2 * w + 0] = e_eps
    attn.in_proj_weight[2 * w + 0, w - 1] = image_gain  # a base-latent channel of the grid
    s_cond = math.exp(gamma) / (math.exp(gamma) + n_tokens - 1)
    slope = 0.75 * root_w / 0.4             # A: keeps every offset inside (-sqrt(w), sqrt(w))
    alpha = slope / (eps_scale * s_cond)
    attn.out_proj.weight[:, 0] = alpha * e_halt

    # Latent tokens: e_lat marker 1/2, random on coordinates 10..w-2 (zero mean; coordinate
    # w-1 zero so they add nothing to the value), offset p_k along e_halt, unit norm.
    # Token k halts when A v + B > -p_k.
    k = torch.arange(cfg.num_latent_tokens, dtype=torch.float64)
    span = max(cfg.max_tokens - 2, 1)
    tau = 0.4 * (0.01 / 0.4) ** ((k - 1) / span)   # token k's epsilon threshold (B = 0)
    tau[0] = 10.0                                  # the first token never halts
    p = (-slope * tau).clamp(min=-0.85 * root_w)   # target e_halt component of LN(latent_k)
    g = torch.Generator().manual_seed(seed)
    rest = torch.randn(cfg.num_latent_tokens, w - 11, generator=g, dtype=torch.float64)
    rest -= rest.mean(-1, keepdim=True)
    rest = rest / rest.norm(dim=-1, keepdim=True)  # unit norm: LN(latent) = sqrt(w) * latent
    latent = torch.zeros(cfg.num_latent_tokens, w, dtype=torch.float64)
    sin = p / root_w
    latent[:, 10:w - 1] = rest * (0.75 - sin ** 2).sqrt()[:, None]
    latent += sin[:, None] * e_halt.double()[None] + 0.5 * e_lat.double()[None]
    model.latent_tokens.copy_(latent.float())

    # 4. Halting head: logit = 3 tanh(3 u / sqrt(w)) + ln 3, u = e_halt . LN(x_k); p = 0.75 at u = 0.
    head0, head1 = model.halting_mlp[0], model.halting_mlp[2]
    head0.weight.zero_()
    head0.bias.zero_()
    head0.weight[0] = 3.0 / root_w * e_halt
    head1.weight.zero_()
    head1.weight[0, 0] = 3.0
    head1.bias.fill_(math.log(3.0))
    return model
