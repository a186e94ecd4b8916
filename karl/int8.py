"""Dynamic int8 for the Linear layers of a module (CPU inference only).

:func:`install` replaces, per instance, the forward of every ``nn.Linear`` in a module (and
the q/k/v projection of every :class:`karl.model.layers.Attention`) with PyTorch's dynamic
int8 kernel (``quantized::linear_dynamic``, fbgemm / oneDNN: AVX-512 VNNI or AVX2, no AMX
needed): weights int8 per output channel, activations quantized per call, per tensor,
outputs float32. The float weights stay the module's parameters (``state_dict`` and saving
are unchanged); the packed copies are plain attributes, so :func:`install` again after
changing the weights. :func:`remove` restores the float forwards.

karl.precision uses it for the KARL decoder only (``karl_decode="int8"``): the decoder does
not make halting decisions, so int8 there changes pixels, never the kept tokens.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

__all__ = ["available", "install", "remove", "installed"]

_ATTR = "_karl_int8"


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this PyTorch build runs dynamic int8 Linear on CPU (checked on a tiny layer)."""
    try:
        packed = _pack(torch.randn(8, 8), torch.zeros(8))
        torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, True)
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=1)
def _reduce_range() -> bool:
    """7-bit activations unless the CPU has VNNI (fbgemm's advice: the AVX2 path without VNNI
    can saturate its 16-bit intermediate sums with full 8-bit activations)."""
    from karl.autoprecision import cpu_flags
    return not cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _pack(weight: Tensor, bias: Tensor | None) -> object:
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quantized-tensor constructors announce a deprecation
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


def _int8_call(packed: object, x: Tensor) -> Tensor:
    shape = x.shape
    y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), packed,
                                           _reduce_range())
    return y.reshape(*shape[:-1], y.shape[-1])


def install(module: nn.Module) -> int:
    """int8 forwards for ``module``'s Linear layers and attention input projections; returns
    how many layers were replaced. Raises RuntimeError where :func:`available` is False."""
    if not available():
        raise RuntimeError("dynamic int8 Linear kernels are not available in this PyTorch build")
    from karl.model.layers import Attention
    count = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            packed = _pack(m.weight, m.bias)
            m.forward = functools.partial(_int8_call, packed)
        elif isinstance(m, Attention):
            packed = _pack(m.in_proj_weight, m.in_proj_bias)
            m.in_proj = functools.partial(_int8_call, packed)
        else:
            continue
        setattr(m, _ATTR, True)
        count += 1
    return count


def remove(module: nn.Module) -> None:
    """The float forwards back (a no-op for layers :func:`install` did not touch)."""
    for m in module.modules():
        if getattr(m, _ATTR, False):
            m.__dict__.pop("forward", None)
            m.__dict__.pop("in_proj", None)
            delattr(m, _ATTR)


def installed(module: nn.Module) -> bool:
    return any(getattr(m, _ATTR, False) for m in module.modules())
