"""Procedural images: determinism, re-rendering, and description lengths that mean something."""

import json
import time

import numpy as np
import pytest
import torch

from karl.data import procedural as P

STRICT_FAMILIES = [f for f in P.FAMILIES if f != "composite"]  # composite rises on average


@pytest.mark.parametrize("family", P.FAMILIES)
def test_same_seed_same_sample(family):
    a, b = P.generate(11, 32, family), P.generate(11, 32, family)
    assert torch.equal(a.image, b.image) and a.bits == b.bits and a.program == b.program
    assert a.image.shape == (3, 32, 32) and a.image.dtype == torch.float32
    assert a.image.min() >= 0 and a.image.max() <= 1
    assert a.family == family and a.seed == 11


def test_different_seeds_differ_and_family_is_drawn_when_unset():
    images = [P.generate(s, 32).image for s in range(8)]
    assert not all(torch.equal(images[0], im) for im in images[1:])
    assert len({P.generate(s, 16).family for s in range(40)}) >= 6


@pytest.mark.parametrize("family", P.FAMILIES)
def test_render_reproduces_image_and_bits_from_json(family):
    s = P.generate(5, 40, family, complexity=2)
    program = json.loads(json.dumps(s.program))  # programs are plain JSON
    assert torch.equal(P.render(program, 40), s.image)
    assert P.description_length(program) == pytest.approx(s.bits)
    assert P.render(program, 24).shape == (3, 24, 24)  # size-free programs render at any size


@pytest.mark.parametrize("family", STRICT_FAMILIES)
def test_bits_rise_with_complexity(family):
    for seed in range(4):
        bits = [P.generate(seed, 32, family, c).bits for c in range(P.MAX_COMPLEXITY + 1)]
        assert all(b1 > b0 for b0, b1 in zip(bits, bits[1:])), (family, seed, bits)


def test_composite_bits_rise_on_average():
    means = [np.mean([P.generate(s, 32, "composite", c).bits for s in range(12)])
             for c in range(P.MAX_COMPLEXITY + 1)]
    assert all(b1 > b0 for b0, b1 in zip(means, means[1:])), means


def test_noise_costs_more_than_anything_structured():
    size = 32
    noise = min(P.generate(s, size, "noise", 0).bits for s in range(3))
    assert noise >= size * size * 3 * 3  # 3 bits per value at the lowest level
    assert noise > max(P.generate(s, size, f, P.MAX_COMPLEXITY).bits
                       for s in range(3) for f in P.FAMILIES if f != "noise")
    assert P.generate(0, size, "flat").bits < 40
    assert P.generate(0, size, "noise", 5).bits == pytest.approx(np.log2(9) + 35 + size * size * 3 * 8)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown family"):
        P.generate(0, 32, "mandelbrot")
    with pytest.raises(ValueError, match="complexity"):
        P.generate(0, 32, "flat", complexity=9)
    with pytest.raises(ValueError, match="unknown family"):
        P.render({"family": "nope", "params": {}}, 16)


def test_batch_shapes_seeds_and_throughput():
    images, samples = P.batch(12, 32, seed=4)
    assert images.shape == (12, 3, 32, 32) and len(samples) == 12
    again = P.generate(samples[3].seed, 32)
    assert torch.equal(again.image, images[3])
    imgs2, _ = P.batch(12, 32, seed=4)
    assert torch.equal(images, imgs2)
    _, s2 = P.batch(6, 16, seed=1, families=("stripes", "flat"))
    assert {s.family for s in s2} <= {"stripes", "flat"}
    start = time.perf_counter()
    P.batch(200, 64, seed=0)
    rate = 200 / (time.perf_counter() - start)
    print(f"\nprocedural.batch: {rate:.0f} images/s at 64x64 on this machine")  # benchmark, not a test
