"""The bundled model (assets/checkpoints/karl_cpu): loads strictly, reconstructs, is adaptive.

Its adaptivity is real but weak (see MODEL_CARD.md): the checks below are the ones issue 4
asks for, on fresh procedural images from seeds no training run used.
"""

from pathlib import Path

import pytest
import torch

from karl import load_pretrained
from karl.data.procedural import generate

CKPT = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "karl_cpu"
pytestmark = pytest.mark.skipif(not (CKPT / "model.safetensors").exists(),
                                reason=f"no bundled checkpoint at {CKPT}")


@pytest.fixture(scope="module")
def model():
    return load_pretrained(CKPT)  # strict: raises on any missing/unexpected/mismatched key


def _family(name, n, size, seed0=2_000_000_000):
    return torch.stack([generate(seed0 + i, size, name, complexity=i % 6).image for i in range(n)])


def test_card_and_provenance_next_to_the_weights():
    card = (CKPT / "MODEL_CARD.md").read_text()
    for needed in ("scripts/train_cpu_model.sh", "manifest", "Fixed-token", "Variable"):
        assert needed in card, needed


def test_flat_images_need_fewer_tokens_than_noise(model):
    size = model.image_size
    flat = model.encode(_family("flat", 6, size), epsilon=0.05).kc_hat.float().mean()
    noise = model.encode(_family("noise", 6, size), epsilon=0.05).kc_hat.float().mean()
    assert flat < noise, (float(flat), float(noise))


def test_tokens_fall_as_epsilon_rises(model):
    size = model.image_size
    images = torch.cat([_family(f, 3, size) for f in ("gradient", "shapes", "glyphs", "fractal")])
    means = [model.encode(images, epsilon=e).kc_hat.float().mean().item() for e in (0.02, 0.09, 0.2)]
    assert means[0] >= means[1] >= means[2] and means[0] > means[2], means


def test_reconstruction_is_better_than_a_flat_guess(model):
    from karl.metrics import l1
    images = torch.cat([_family(f, 3, model.image_size) for f in ("gradient", "shapes", "checkerboard")])
    recon = model.reconstruct(images, num_tokens=model.max_tokens)
    flat_guess = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    assert l1(recon, images).mean() < l1(flat_guess, images).mean()


def test_continuous_complexity_rises_with_description_length(model):
    from scipy.stats import spearmanr
    from karl.data.procedural import generate
    samples = [generate(3_000_000_000 + 10 * i + c, model.image_size, fam, complexity=c)
               for i, fam in enumerate(("gradient", "shapes", "glyphs")) for c in range(6)]
    enc = model.encode(torch.stack([s.image for s in samples]), epsilon=0.05)
    rho = spearmanr([s.bits for s in samples], enc.continuous_kc.numpy()).statistic
    assert rho > 0.3, rho
