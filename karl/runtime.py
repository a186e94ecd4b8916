"""Runtime tuning for CPU execution.

On some virtualised CPUs oneDNN (mkldnn) convolutions run several times slower than
PyTorch's native kernels (measured here: 5 vs 20 GFLOPS for a 3x3 conv). Entry points call
:func:`tune_cpu_backends` once to time both on a small convolution and keep the faster.
"""

from __future__ import annotations

import os
import time

import torch

_TUNED: bool | None = None


def _time_conv(n: int = 3) -> float:
    x = torch.rand(8, 32, 32, 32)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    with torch.no_grad():
        conv(x)
        t = time.perf_counter()
        for _ in range(n):
            conv(x)
    return time.perf_counter() - t


def tune_cpu_backends(verbose: bool = False) -> bool:
    """Enable or disable oneDNN convolutions, whichever is faster here. Returns the choice.

    ``KARL_MKLDNN=0|1`` forces the choice without timing.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    forced = os.environ.get("KARL_MKLDNN")
    if forced in ("0", "1"):
        choice = forced == "1"
    elif not torch.backends.mkldnn.is_available():
        choice = False
    else:
        torch.backends.mkldnn.enabled = True
        with_mkldnn = _time_conv()
        torch.backends.mkldnn.enabled = False
        without = _time_conv()
        choice = with_mkldnn < without
        if verbose:
            print(f"oneDNN conv {with_mkldnn * 1e3:.0f} ms vs native {without * 1e3:.0f} ms: "
                  f"{'oneDNN' if choice else 'native'} kernels")
    torch.backends.mkldnn.enabled = choice
    _TUNED = choice
    return choice
