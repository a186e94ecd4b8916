"""Other CPU kernels for the Linear layers of a module (inference only): ``int8``, ``onednn``.

:func:`install` replaces, per instance, the forward of every ``nn.Linear`` in a module (and
the q/k/v projection of every :class:`karl.model.layers.Attention`):

- ``int8``: PyTorch's dynamic int8 kernel (``quantized::linear_dynamic``, fbgemm / oneDNN:
  AVX-512 VNNI or AVX2, no AMX needed): weights int8 per output channel, activations
  quantized per call, per tensor, outputs float32. Changes the outputs by about 1% of a
  layer's output; karl.precision uses it for the KARL decoder only (no halting decisions).
- ``onednn``: the same fp32 arithmetic through oneDNN's matmul (``mkldnn::_linear_pointwise``)
  instead of the BLAS that ``F.linear`` calls. Only the summation order differs (about 4e-6
  on a 1024 -> 4096 layer); on an AMD EPYC whose MKL path was slow it took 11 ms where
  ``F.linear`` took 24 (docs/OFFICIAL.md section 8). Where it is used for the KARL encoder,
  karl.precision re-checks decisions within ROUNDING_MARGIN of the threshold in fp32.

The float weights stay the module's parameters (``state_dict`` and saving are unchanged);
packed copies are plain attributes, so :func:`install` again after changing the weights.
:func:`remove` restores the float forwards; inside :func:`reference` every installed layer
runs ``F.linear`` (karl.precision's fp32 re-check).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KINDS", "available", "install", "remove", "installed", "reference"]

KINDS = ("int8", "onednn")
_ATTR = "_karl_kernel"
_REFERENCE = contextvars.ContextVar("karl_kernels_reference", default=False)


@functools.lru_cache(maxsize=None)
def available(kind: str) -> bool:
    """Whether this PyTorch build runs ``kind`` on this CPU (checked on a tiny layer)."""
    try:
        w, b = torch.randn(8, 8), torch.zeros(8)
        _MAKERS[kind](w, b)(torch.randn(2, 8))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=1)
def _reduce_range() -> bool:
    """7-bit activations unless the CPU has VNNI (fbgemm's advice: the AVX2 path without VNNI
    can saturate its 16-bit intermediate sums with full 8-bit activations)."""
    from karl.autoprecision import cpu_flags
    return not cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _flat(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    shape = x.shape
    y = fn(x.reshape(-1, shape[-1]).float().contiguous())
    return y.reshape(*shape[:-1], y.shape[-1])


def _int8(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quantized-tensor constructors announce a deprecation
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, _reduce_range())


def _onednn(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    w = weight.detach().float().contiguous()
    b = None if bias is None else bias.detach().float().contiguous()
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


_MAKERS = {"int8": _int8, "onednn": _onednn}


def _call(kernel: Callable[[Tensor], Tensor], weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    if _REFERENCE.get():
        return F.linear(x, weight, bias)
    return _flat(kernel, x)


def install(module: nn.Module, kind: str) -> int:
    """``kind`` forwards for ``module``'s Linear layers and attention input projections (any
    other kind installed there is replaced); returns how many layers. Raises RuntimeError
    where :func:`available` is False."""
    if kind not in KINDS:
        raise ValueError(f"kernel {kind!r} is not one of {', '.join(KINDS)}")
    if not available(kind):
        raise RuntimeError(f"{kind} Linear kernels are not available in this PyTorch build")
    from karl.model.layers import Attention
    remove(module)
    count = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.forward = functools.partial(_call, _MAKERS[kind](m.weight, m.bias), m.weight, m.bias)
        elif isinstance(m, Attention):
            m.in_proj = functools.partial(_call, _MAKERS[kind](m.in_proj_weight, m.in_proj_bias),
                                          m.in_proj_weight, m.in_proj_bias)
        else:
            continue
        setattr(m, _ATTR, kind)
        count += 1
    return count


def remove(module: nn.Module) -> None:
    """The float forwards back (a no-op for layers :func:`install` did not touch)."""
    for m in module.modules():
        if getattr(m, _ATTR, None):
            m.__dict__.pop("forward", None)
            m.__dict__.pop("in_proj", None)
            delattr(m, _ATTR)


def installed(module: nn.Module) -> str | None:
    """The kind installed in ``module`` (None: the float forwards)."""
    return next((getattr(m, _ATTR) for m in module.modules() if getattr(m, _ATTR, None)), None)


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Installed layers run ``F.linear`` with their float weights inside (this thread/context)."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)
