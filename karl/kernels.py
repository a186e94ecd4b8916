"""Other CPU kernels for the Linear layers of a module (inference only): ``int8``, ``onednn``.

:func:`install` swaps every ``nn.Linear`` inside a module for a :class:`KernelLinear` (the
same Parameters, another kernel; as ``torch.ao``'s dynamic quantization swaps modules) and
gives every :class:`karl.model.layers.Attention` an ``in_proj_kernel`` that its ``in_proj``
consults; no method is replaced on an instance:

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
:func:`remove` puts the float layers back; inside :func:`reference` every installed layer
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

from karl.model.layers import Attention
from karl.precision_plan import cpu_flags

__all__ = ["KINDS", "Kernel", "KernelLinear", "available", "install", "remove", "installed", "reference"]

KINDS = ("int8", "onednn")
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


class Kernel:
    """A packed copy of one layer's float weights, run by ``kind``; inside :func:`reference`
    ``F.linear`` with the float weights instead."""

    def __init__(self, kind: str, weight: Tensor, bias: Tensor | None):
        self.kind = kind
        self._packed = _MAKERS[kind](weight, bias)

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if _REFERENCE.get():
            return F.linear(x, weight, bias)
        return _flat(self._packed, x)


class KernelLinear(nn.Module):
    """An ``nn.Linear`` run by a :class:`Kernel`: the same ``weight`` and ``bias`` Parameters
    (the same ``state_dict`` keys), and the float layer, which :func:`remove` puts back."""

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.kernel = Kernel(kind, linear.weight, linear.bias)
        self.__dict__["float_layer"] = linear     # not a submodule: its Parameters are these

    def forward(self, x: Tensor) -> Tensor:
        return self.kernel(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel.kind}"


def install(module: nn.Module, kind: str) -> int:
    """``kind`` kernels for the Linear layers inside ``module`` (each swapped for a
    :class:`KernelLinear`) and its attention input projections (``Attention.in_proj_kernel``);
    any other kind installed there is replaced. Returns how many layers. Raises RuntimeError
    where :func:`available` is False."""
    if kind not in KINDS:
        raise ValueError(f"kernel {kind!r} is not one of {', '.join(KINDS)}")
    if not available(kind):
        raise RuntimeError(f"{kind} Linear kernels are not available in this PyTorch build")
    remove(module)
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, Attention):
            parent.in_proj_kernel = Kernel(kind, parent.in_proj_weight, parent.in_proj_bias)
            count += 1
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, KernelLinear(child, kind))
                count += 1
    return count


def remove(module: nn.Module) -> None:
    """The float layers back (a no-op for layers :func:`install` did not touch)."""
    for parent in list(module.modules()):
        if isinstance(parent, Attention):
            parent.in_proj_kernel = None
        for name, child in list(parent.named_children()):
            if isinstance(child, KernelLinear):
                setattr(parent, name, child.float_layer)


def installed(module: nn.Module) -> str | None:
    """The kind installed in ``module`` (None: the float layers)."""
    for m in module.modules():
        kernel = m.kernel if isinstance(m, KernelLinear) else getattr(m, "in_proj_kernel", None)
        if kernel is not None:
            return kernel.kind
    return None


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Installed layers run ``F.linear`` with their float weights inside (this thread/context)."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)
