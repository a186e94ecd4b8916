"""A fixed linear code of the base latent: the starting point of KARL's tokens on a small budget.

Token ``i`` carries the principal components ``[i * e, (i + 1) * e)`` of the flattened base
latent (PCA of training latents, whitened to unit variance). Any set of kept tokens then has
a linear reading: ``mean + sum_i z_i * scale_i @ basis_i``, and a prefix of ``k`` tokens is the
best linear ``k * e``-float code of the training latents. KARL adds this reading to its
transformer's output (encoder: ``z = mlp(x) + code``; decoder: ``head = ffn(x) + reading``),
so training starts from an ordered code that already transfers to unseen photos and learns
the non-linear rest, instead of first discovering a code from scratch.

Why: on two CPU cores a transformer autoencoder trained from scratch on a frozen TAEF2 base
stayed at held-out L1 0.13 after an hour, flat in the token count (KARL_FACTS section 9),
while this code alone reaches 0.034 with 64 x 24 floats (measured on the 64-px held-out crops
of the photo corpus; docs/ARCHITECTURE.md). It is not in the paper: ``model.linear_code`` is
off by default and on in the ``cpu_tae`` preset only.

The basis is fitted once, at the start of training (``fit``), and travels in the checkpoint
as buffers; a model whose code was never fitted refuses to run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearCode(nn.Module):
    def __init__(self, latent_dim: int, grid_size: int, num_tokens: int, token_dim: int):
        super().__init__()
        self.dim = latent_dim * grid_size * grid_size
        self.token_dim = token_dim
        self.num_components = min(num_tokens * token_dim, self.dim)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("basis", torch.zeros(self.num_components, self.dim))  # orthonormal rows
        self.register_buffer("scale", torch.ones(self.num_components))             # std per component
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _check(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("the model's linear code was never fitted: train it with the training "
                               "loop (which fits it first) or load a release")

    @torch.no_grad()
    def fit(self, latents: Tensor) -> dict[str, float]:
        """PCA of base latents [N, c, g, g] (N > c * g * g recommended); returns fit statistics."""
        x = latents.flatten(1).double()
        if x.shape[1] != self.dim:
            raise ValueError(f"latents of {x.shape[1]} floats, the code expects {self.dim}")
        if x.shape[0] < 2 or not torch.isfinite(x).all():
            raise ValueError("fitting the linear code needs at least 2 finite latents")
        mean = x.mean(0)
        _, s, v = torch.linalg.svd(x - mean, full_matrices=False)
        m = min(self.num_components, v.shape[0])
        std = s[:m] / max(1, x.shape[0] - 1) ** 0.5
        # Components with (almost) no variance get a floor so that whitening stays bounded.
        std = std.clamp(min=float(std[0]) * 1e-3)
        self.mean.copy_(mean.float())
        self.basis.zero_()
        self.basis[:m].copy_(v[:m].float())
        self.scale.fill_(float(std[-1]))
        self.scale[:m].copy_(std.float())
        self.fitted.fill_(True)
        explained = float((s[:m] ** 2).sum() / (s ** 2).sum().clamp(min=1e-30))
        return {"samples": x.shape[0], "components": m, "explained_variance": explained}

    def encode(self, latents: Tensor, num_tokens: int) -> Tensor:
        """Base latents [b, c, g, g] -> the first ``num_tokens`` tokens' code [b, T, e] (fp32)."""
        self._check()
        n = num_tokens * self.token_dim
        with torch.autocast(latents.device.type, enabled=False):
            x = latents.flatten(1).float() - self.mean
            coeff = x @ self.basis[:n].T / self.scale[:n]
            coeff = torch.nn.functional.pad(coeff, (0, n - coeff.shape[1]))  # tokens past the latent's size
        return coeff.view(latents.shape[0], num_tokens, self.token_dim)

    def decode(self, tokens: Tensor, keep: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """The linear reading of the kept tokens [b, k, e] -> base latents [b, *shape] (fp32)."""
        self._check()
        b, k, e = tokens.shape
        with torch.autocast(tokens.device.type, enabled=False):
            coeff = (tokens.float() * keep[..., None].float()).reshape(b, k * e)
            n = min(k * e, self.num_components)
            x = self.mean + (coeff[:, :n] * self.scale[:n]) @ self.basis[:n]
        return x.view(b, *shape)
