"""Procedural images from small random programs of known description length.

Each sample comes with its program (a JSON-serialisable dict), the program's length in
bits under the fixed code below, its family and its seed. ``render(program, size)``
re-renders the same image, ``generate(seed, ...)`` is deterministic, and the
``complexity`` knob (0..5) raises the program size within a family. Uses: extra training
data, and ground truth for the complexity analyses (does KC-hat rise with the true
description length?).

The code (a prefix code, so lengths add up; ``bits`` is an honest upper bound on the
image's Kolmogorov complexity, up to the constant size of this renderer):

================  ==============================================================
field             bits
================  ==============================================================
family            log2(9): one of :data:`FAMILIES`
colour            24 (8 per channel); ``flat`` alone uses 3..8 bits per channel
unit coordinate   8 (256 levels of [0, 1]); angles 8 (256 levels of a turn)
count n >= 1      Elias gamma, 2 floor(log2 n) + 1
choice of k       log2(k)
bitmap            1 per cell; a fractal mask that is neither empty nor full:
                  log2(2^(k*k) - 2)
noise values      log2(L) per value (L levels), grid*grid*3 values: the bits of the
                  noise itself, *not* of the seed that drew it (the seed is stored
                  only so that ``render`` can reproduce the image)
================  ==============================================================

Families and what ``complexity`` c changes: ``flat`` (colour depth 3 + c bits),
``gradient`` (2 + c colour stops), ``stripes`` (1..16 periods) / ``checkerboard`` (2..17
cells across), both with 2 + c colours in the cycle, ``shapes`` (2^c shapes), ``fractal`` (a (2 + c)x(2 + c) subdivision carpet),
``glyphs`` (4 * 2^c characters of a 3 + 3c glyph alphabet), ``noise`` (2^(3 + c)
levels), ``composite`` (2 + c masked layers of the other families, bits rise on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["FAMILIES", "MAX_COMPLEXITY", "ProceduralSample", "generate", "render", "batch",
           "description_length"]

FAMILIES: tuple[str, ...] = ("flat", "gradient", "stripes", "checkerboard", "shapes", "fractal",
                             "glyphs", "noise", "composite")
LAYER_FAMILIES: tuple[str, ...] = ("flat", "gradient", "stripes", "checkerboard", "shapes", "fractal", "glyphs")
MAX_COMPLEXITY = 5
SHAPE_TYPES = ("circle", "rect", "triangle")
_SHAPE_GEOM_BITS = {"circle": 24, "rect": 32, "triangle": 48}
GLYPH_H, GLYPH_W = 7, 5  # glyph bitmap; drawn in an 8x6 cell (one pixel of spacing)


@dataclass
class ProceduralSample:
    image: Tensor            # [3, H, W] float32 in [0, 1]
    program: dict            # JSON-serialisable; render(program, H) reproduces image
    bits: float              # description length of program (module docstring)
    family: str
    seed: int
    complexity: int = field(default=-1)


# ----------------------------------------------------------------------------- code lengths

def gamma_bits(n: int) -> float:
    """Elias gamma code length of a positive integer."""
    if n < 1:
        raise ValueError(f"gamma code needs n >= 1, got {n}")
    return 2 * int(math.floor(math.log2(n))) + 1


def _bits_flat(p: dict) -> float:
    return math.log2(6) + 3 * p["bits_per_channel"]


def _bits_gradient(p: dict) -> float:
    n = len(p["stops"])
    where = 16 if p["kind"] == "radial" else 8  # centre (x, y) or angle
    return 1 + where + gamma_bits(n - 1) + 24 * n + 8 * (n - 2)


def _bits_periodic(p: dict) -> float:  # stripes and checkerboard: frequency 1..16, angle, colours
    n = len(p["colors"])
    return 4 + 8 + gamma_bits(n - 1) + 24 * n


def _bits_shapes(p: dict) -> float:
    shapes = p["shapes"]
    return 24 + gamma_bits(len(shapes)) + sum(
        math.log2(len(SHAPE_TYPES)) + 24 + _SHAPE_GEOM_BITS[s["type"]] for s in shapes)


def _bits_fractal(p: dict) -> float:
    k = p["base"]
    return math.log2(6) + 3 + 48 + math.log2(2.0 ** (k * k) - 2)  # base 2..7, depth 1..8, colours, mask


def _bits_glyphs(p: dict) -> float:
    m, n = len(p["alphabet"]), len(p["text"])
    return 48 + gamma_bits(m) + GLYPH_H * GLYPH_W * m + gamma_bits(n) + n * math.log2(m)


def _bits_noise(p: dict) -> float:
    levels, grid = p["levels"], p["grid"]
    return 3 + 24 + 8 + grid * grid * 3 * math.log2(levels)  # levels 8..256, mean, grid side


def _bits_mask(mask: dict | None) -> float:
    if mask is None:
        return 0.0
    return 1 + _SHAPE_GEOM_BITS[mask["type"]]


def _bits_composite(p: dict) -> float:
    layers = p["layers"]
    return gamma_bits(len(layers) - 1) + sum(
        math.log2(len(LAYER_FAMILIES)) + _PARAM_BITS[layer["family"]](layer["params"]) + _bits_mask(layer["mask"])
        for layer in layers)


_PARAM_BITS: dict[str, Callable[[dict], float]] = {
    "flat": _bits_flat, "gradient": _bits_gradient, "stripes": _bits_periodic,
    "checkerboard": _bits_periodic, "shapes": _bits_shapes, "fractal": _bits_fractal,
    "glyphs": _bits_glyphs, "noise": _bits_noise, "composite": _bits_composite,
}


def description_length(program: dict) -> float:
    """Bits of ``program`` under the module's code (family id included)."""
    family = program.get("family")
    if family not in _PARAM_BITS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return math.log2(len(FAMILIES)) + _PARAM_BITS[family](program["params"])


# ----------------------------------------------------------------------------- sampling

def _color(rng: np.random.Generator) -> list[int]:
    return [int(v) for v in rng.integers(0, 256, 3)]


def _u8(rng: np.random.Generator, n: int = 1) -> list[int]:
    return [int(v) for v in rng.integers(0, 256, n)]


def _sample_flat(rng, c: int, size: int) -> dict:
    b = 3 + c
    return {"bits_per_channel": b, "color": [int(v) for v in rng.integers(0, 2 ** b, 3)]}


def _sample_gradient(rng, c: int, size: int) -> dict:
    n = 2 + c
    kind = "radial" if rng.random() < 0.5 else "linear"
    where = _u8(rng, 2) if kind == "radial" else _u8(rng)
    positions = [0] + sorted(_u8(rng, n - 2)) + [255]
    return {"kind": kind, "where": where, "stops": [[pos] + _color(rng) for pos in positions]}


def _sample_periodic(rng, c: int, size: int) -> dict:
    return {"freq": int(rng.integers(1, 17)), "angle": _u8(rng)[0], "colors": [_color(rng) for _ in range(2 + c)]}


def _sample_shape(rng, kind: str) -> dict:
    return {"type": kind, "color": _color(rng), "geom": _u8(rng, _SHAPE_GEOM_BITS[kind] // 8)}


def _sample_shapes(rng, c: int, size: int) -> dict:
    kinds = rng.integers(0, len(SHAPE_TYPES), 2 ** c)
    return {"background": _color(rng), "shapes": [_sample_shape(rng, SHAPE_TYPES[k]) for k in kinds]}


def _sample_fractal(rng, c: int, size: int) -> dict:
    k = 2 + c
    mask = rng.integers(0, 2, k * k)
    while mask.all() or not mask.any():  # rejection: uniform over the 2^(k*k) - 2 valid masks
        mask = rng.integers(0, 2, k * k)
    max_depth = max(1, min(8, math.ceil(math.log(max(size, 2)) / math.log(k))))
    depth = int(rng.integers(max(1, max_depth - 2), max_depth + 1))
    return {"base": k, "mask": [int(v) for v in mask], "depth": depth, "colors": [_color(rng), _color(rng)]}


def _sample_glyphs(rng, c: int, size: int) -> dict:
    m, n = 3 + 3 * c, 4 * 2 ** c
    alphabet = [[int(v) for v in rng.integers(0, 2, GLYPH_H * GLYPH_W)] for _ in range(m)]
    return {"alphabet": alphabet, "text": [int(v) for v in rng.integers(0, m, n)],
            "colors": [_color(rng), _color(rng)]}


def _sample_noise(rng, c: int, size: int) -> dict:
    return {"levels": 2 ** (3 + c), "mean": _color(rng), "grid": int(size),
            "noise_seed": int(rng.integers(0, 2 ** 31))}


def _sample_mask(rng) -> dict:
    kind = "circle" if rng.random() < 0.5 else "rect"
    return {"type": kind, "geom": _u8(rng, _SHAPE_GEOM_BITS[kind] // 8)}


def _sample_composite(rng, c: int, size: int) -> dict:
    layers = []
    for i in range(2 + c):
        fam = LAYER_FAMILIES[int(rng.integers(0, len(LAYER_FAMILIES)))]
        params = _SAMPLERS[fam](rng, int(rng.integers(0, 2)), size)
        layers.append({"family": fam, "params": params, "mask": None if i == 0 else _sample_mask(rng)})
    return {"layers": layers}


_SAMPLERS: dict[str, Callable[[np.random.Generator, int, int], dict]] = {
    "flat": _sample_flat, "gradient": _sample_gradient, "stripes": _sample_periodic,
    "checkerboard": _sample_periodic, "shapes": _sample_shapes, "fractal": _sample_fractal,
    "glyphs": _sample_glyphs, "noise": _sample_noise, "composite": _sample_composite,
}


# ----------------------------------------------------------------------------- rendering
# Renderers map unit pixel-centre coordinates u (x, to the right) and v (y, down), both
# [H, W] float32 in (0, 1), to an image [H, W, 3] float32 in [0, 1].

def _rgb(color) -> np.ndarray:
    return np.asarray(color, dtype=np.float32) / 255.0


def _palette(colors) -> np.ndarray:
    return np.asarray(colors, dtype=np.float32).reshape(-1, 3) / 255.0  # [n, 3]


def _rotated(u: np.ndarray, v: np.ndarray, angle8: int) -> tuple[np.ndarray, np.ndarray]:
    t = 2 * math.pi * angle8 / 256
    x, y = u - 0.5, v - 0.5
    return x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)


def _render_flat(p: dict, u, v) -> np.ndarray:
    rgb = np.asarray(p["color"], dtype=np.float32) / (2 ** p["bits_per_channel"] - 1)
    return np.broadcast_to(rgb, u.shape + (3,)).copy()


def _render_gradient(p: dict, u, v) -> np.ndarray:
    if p["kind"] == "radial":
        cx, cy = (w / 255 for w in p["where"])
        t = np.hypot(u - cx, v - cy)
        t = t / max(math.hypot(max(cx, 1 - cx), max(cy, 1 - cy)), 1e-6)
    else:
        a, _ = _rotated(u, v, p["where"][0])
        th = 2 * math.pi * p["where"][0] / 256
        half = 0.5 * (abs(math.cos(th)) + abs(math.sin(th)))
        t = (a + half) / (2 * half)
    stops = np.asarray(p["stops"], dtype=np.float32)  # [n, 4]: position, r, g, b
    pos = stops[:, 0] / 255.0
    t = np.clip(t, 0, 1).ravel()
    out = np.stack([np.interp(t, pos, stops[:, 1 + ch] / 255.0) for ch in range(3)], -1)
    return out.reshape(u.shape + (3,)).astype(np.float32)


def _render_stripes(p: dict, u, v) -> np.ndarray:
    a, _ = _rotated(u, v, p["angle"])
    idx = np.floor(a * p["freq"]).astype(np.int64) % len(p["colors"])
    return _palette(p["colors"])[idx]


def _render_checkerboard(p: dict, u, v) -> np.ndarray:
    a, b = _rotated(u, v, p["angle"])
    k = p["freq"] + 1  # 2..17 cells across
    idx = (np.floor(a * k).astype(np.int64) + np.floor(b * k).astype(np.int64)) % len(p["colors"])
    return _palette(p["colors"])[idx]


def _shape_mask(kind: str, geom: list[int], u, v) -> np.ndarray:
    g = np.asarray(geom, dtype=np.float32) / 255.0
    if kind == "circle":
        r = 0.02 + 0.4 * g[2]
        return (u - g[0]) ** 2 + (v - g[1]) ** 2 <= r * r
    if kind == "rect":
        x0, x1 = sorted((g[0], g[2]))
        y0, y1 = sorted((g[1], g[3]))
        return (u >= x0) & (u <= x1 + 0.02) & (v >= y0) & (v <= y1 + 0.02)
    (x0, y0), (x1, y1), (x2, y2) = g[0:2], g[2:4], g[4:6]
    d0 = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)  # edge functions: inside iff same sign
    d1 = (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)
    d2 = (x0 - x2) * (v - y2) - (y0 - y2) * (u - x2)
    return ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))


def _render_shapes(p: dict, u, v) -> np.ndarray:
    idx = np.zeros(u.shape, dtype=np.int64)  # painter's algorithm on a palette index map
    for i, s in enumerate(p["shapes"], start=1):
        idx[_shape_mask(s["type"], s["geom"], u, v)] = i
    return _palette([p["background"]] + [s["color"] for s in p["shapes"]])[idx]


def _render_fractal(p: dict, u, v) -> np.ndarray:
    k, depth = p["base"], p["depth"]
    mask = np.asarray(p["mask"], dtype=bool).reshape(k, k)  # [row, col]
    cells = k ** depth
    iu = np.minimum((u * cells).astype(np.int64), cells - 1)
    iv = np.minimum((v * cells).astype(np.int64), cells - 1)
    keep = np.ones(u.shape, dtype=bool)
    for level in range(depth):
        div = k ** (depth - 1 - level)
        keep &= mask[(iv // div) % k, (iu // div) % k]
    return _palette(p["colors"])[keep.astype(np.int64)]


def _glyph_canvas(p: dict) -> np.ndarray:
    """Bool canvas [rows * 8, cols * 6] of the text, laid out in a near-square block."""
    n = len(p["text"])
    cols = max(1, math.ceil(math.sqrt(n * (GLYPH_H + 1) / (GLYPH_W + 1))))
    rows = math.ceil(n / cols)
    glyphs = np.zeros((len(p["alphabet"]) + 1, GLYPH_H + 1, GLYPH_W + 1), dtype=bool)  # last: blank
    glyphs[:-1, :GLYPH_H, :GLYPH_W] = np.asarray(p["alphabet"], dtype=bool).reshape(-1, GLYPH_H, GLYPH_W)
    text = np.full(rows * cols, len(p["alphabet"]), dtype=np.int64)
    text[:n] = p["text"]
    cells = glyphs[text].reshape(rows, cols, GLYPH_H + 1, GLYPH_W + 1)
    return cells.transpose(0, 2, 1, 3).reshape(rows * (GLYPH_H + 1), cols * (GLYPH_W + 1))


def _render_glyphs(p: dict, u, v) -> np.ndarray:
    canvas = _glyph_canvas(p)
    ch, cw = canvas.shape
    scale = 0.9 / max(ch, cw)  # block fills 90% of the longer side, centred
    x = (u - 0.5) / scale + cw / 2
    y = (v - 0.5) / scale + ch / 2
    inside = (x >= 0) & (x < cw) & (y >= 0) & (y < ch)
    xi = np.clip(x.astype(np.int64), 0, cw - 1)
    yi = np.clip(y.astype(np.int64), 0, ch - 1)
    ink = inside & canvas[yi, xi]
    return _palette(p["colors"])[ink.astype(np.int64)]


def _render_noise(p: dict, u, v) -> np.ndarray:
    grid, levels = p["grid"], p["levels"]
    values = np.random.default_rng(p["noise_seed"]).integers(0, levels, (grid, grid, 3))
    step = 256 // levels  # levels spaced over 0..255 around the mean colour
    rgb = np.asarray(p["mean"]) + (values - (levels - 1) / 2) * step
    rgb = np.clip(rgb, 0, 255).astype(np.float32) / 255.0
    iu = np.minimum((u * grid).astype(np.int64), grid - 1)  # nearest resampling if size != grid
    iv = np.minimum((v * grid).astype(np.int64), grid - 1)
    return rgb[iv, iu]


def _render_composite(p: dict, u, v) -> np.ndarray:
    out = None
    for layer in p["layers"]:
        img = _RENDERERS[layer["family"]](layer["params"], u, v)
        if out is None:
            out = img
        else:
            m = _shape_mask(layer["mask"]["type"], layer["mask"]["geom"], u, v)
            out[m] = img[m]
    return out


_RENDERERS: dict[str, Callable[[dict, Any, Any], np.ndarray]] = {
    "flat": _render_flat, "gradient": _render_gradient, "stripes": _render_stripes,
    "checkerboard": _render_checkerboard, "shapes": _render_shapes, "fractal": _render_fractal,
    "glyphs": _render_glyphs, "noise": _render_noise, "composite": _render_composite,
}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # u varies along columns, v along rows: [H, W] each


def render(program: dict, size: int = 64) -> Tensor:
    """Render a program to an image [3, size, size] float32 in [0, 1]."""
    family = program.get("family")
    if family not in _RENDERERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    u, v = _grid(size)
    img = _RENDERERS[family](program["params"], u, v)  # [H, W, 3]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def generate(seed: int, size: int = 64, family: str | None = None,
             complexity: int | None = None) -> ProceduralSample:
    """A random program and its image, deterministic in (seed, size, family, complexity).

    ``family`` None draws one uniformly from :data:`FAMILIES`; ``complexity`` None draws
    one uniformly from 0..:data:`MAX_COMPLEXITY`.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if complexity is not None and not 0 <= complexity <= MAX_COMPLEXITY:
        raise ValueError(f"complexity must be in 0..{MAX_COMPLEXITY}, got {complexity}")
    rng = np.random.default_rng(seed)
    fam = family if family is not None else FAMILIES[int(rng.integers(0, len(FAMILIES)))]
    c = int(complexity) if complexity is not None else int(rng.integers(0, MAX_COMPLEXITY + 1))
    program = {"family": fam, "params": _SAMPLERS[fam](rng, c, size)}
    return ProceduralSample(image=render(program, size), program=program, bits=description_length(program),
                            family=fam, seed=int(seed), complexity=c)


def batch(n: int, size: int = 64, seed: int = 0, families: tuple[str, ...] | None = None,
          complexity: int | None = None) -> tuple[Tensor, list[ProceduralSample]]:
    """``n`` samples with per-sample seeds drawn from ``seed`` -> ([n, 3, size, size], samples).

    ``families`` restricts the family (drawn uniformly from the tuple per sample).
    """
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2 ** 31, n)
    fams = families or FAMILIES
    picks = rng.integers(0, len(fams), n) if families else [None] * n
    samples = [generate(int(s), size, fams[int(f)] if f is not None else None, complexity)
               for s, f in zip(seeds, picks)]
    return torch.stack([s.image for s in samples]) if samples else torch.empty(0, 3, size, size), samples
