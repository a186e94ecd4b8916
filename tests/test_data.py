"""Image loading, the offline photo corpus, and the data sets built from a DataConfig."""

import hashlib
import io
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from karl.config import DataConfig
from karl.data import corpus as corpus_mod
from karl.data.datasets import ImageFolderDataset, build_dataset
from karl.data.images import ImageLoadError, list_images, load_image, preprocess, to_pil, to_tensor


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------- load_image

def test_load_image_converts_modes_to_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    out = np.asarray(load_image(_png(gray)))
    assert out.shape == (8, 8, 3) and (out[..., 0] == out[..., 2]).all() and out[0, 1, 0] == 1

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white
    out = np.asarray(load_image(_png(rgba)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (255, 0, 0)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    out = np.asarray(load_image(_png(pal)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[2, 2]) == (0, 255, 0)

    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))  # 16-bit: rescaled, not clipped
    out = np.asarray(load_image(_png(deep)))
    assert out.dtype == np.uint8 and (out == 255).all()
    half = np.asarray(load_image(_png(Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)))))
    assert (half == 128).all()

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    out = np.asarray(load_image(_png(cmyk, "JPEG")))
    assert out[..., 0].min() > 200 and out[..., 1].max() < 60


def test_load_image_errors_are_clear(tmp_path):
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(text)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    data = _png(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(ImageLoadError, match="corrupt|truncated|cannot open"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="exceeds the limit") as err:
        load_image(data, max_pixels=1000)
    assert "max_pixels" not in str(err.value), "user-facing: no hint about internal arguments"
    assert isinstance(ImageLoadError("x"), ValueError)


def test_load_image_max_side_and_sources(tmp_path):
    img = Image.new("RGB", (400, 100), (10, 20, 30))
    path = tmp_path / "wide.jpg"
    img.save(path)
    assert load_image(path, max_side=100).size == (100, 25)
    assert load_image(str(path)).size == (400, 100)
    assert load_image(img).size == (400, 100)
    with open(path, "rb") as f:
        assert load_image(f).mode == "RGB"


def test_preprocess_resizes_shorter_side_and_centre_crops():
    arr = np.zeros((60, 120, 3), dtype=np.uint8)
    arr[:, 30:90] = 255  # a white centre band, as wide as the crop
    out = preprocess(Image.fromarray(arr), 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert out[:, :, 2:-2].min() > 0.95  # the centre crop sees only the band
    assert preprocess(Image.new("L", (10, 50)), 16).shape == (3, 16, 16)


def test_to_pil_round_trip():
    x = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    back = to_tensor(to_pil(x))
    assert back.shape == x.shape and (back - x).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_pil(torch.rand(1, 3, 4, 4))


def test_list_images_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ["b/2.PNG", "a.jpg", "b/1.webp", "notes.txt", ".hidden/x.png"]:
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b/1.webp", "b/2.PNG"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


# ----------------------------------------------------------------------------- corpus

@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    corpus_mod.build_corpus(out, verbose=False, debian_roots=())  # PyPI packages only: fast
    return out


def test_corpus_builds_with_manifest(corpus_dir):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    entries = manifest["entries"]
    assert "python -m karl.data.corpus" in manifest["rebuild"]
    skimage = [e for e in entries if e["source_package"] == "scikit-image"]
    assert len(skimage) >= 9  # scikit-image is in requirements.txt
    for e in entries:
        assert {"file", "source_package", "package_version", "original_file", "license", "width", "height",
                "sha256", "group"} <= set(e)
        data = (corpus_dir / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        assert Image.open(io.BytesIO(data)).size == (e["width"], e["height"])
    names = [e["name"] for e in entries]
    assert names.count("camera") == 1  # PyWavelets' camera duplicates scikit-image's
    assert corpus_mod.load_manifest(corpus_dir) == entries


def test_split_sources_by_scene(corpus_dir):
    entries = corpus_mod.load_manifest(corpus_dir)
    train, hold = corpus_mod.split_sources(entries, 0.3, seed=0)
    assert len(train) + len(hold) == len(entries) and hold and train
    assert not {e["group"] for e in train} & {e["group"] for e in hold}
    moto = [e for e in hold + train if e["name"].startswith("motorcycle")]
    assert len({id(e) for e in moto if e in hold}) in (0, len(moto))  # the stereo pair stays together
    assert corpus_mod.split_sources(entries, 0.3, seed=0) == (train, hold)
    assert corpus_mod.split_sources(entries, 0.0)[1] == []


def test_random_crops_shapes_range_determinism(corpus_dir):
    def take(seed, n=6):
        ds = corpus_mod.RandomCropDataset(corpus_dir, 32, min_scale=0.2, seed=seed, max_side=512)
        return torch.stack(list(itertools.islice(iter(ds), n)))

    a, b, c = take(0), take(0), take(1)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fixed_crops_are_deterministic(corpus_dir):
    ds = corpus_mod.FixedCropDataset(corpus_dir, 24, crops_per_image=2, max_side=512)
    assert len(ds) == 2 * len(ds.images)
    assert torch.equal(ds[3], ds[3]) and ds[0].shape == (3, 24, 24)


# ----------------------------------------------------------------------------- build_dataset

def test_build_dataset_corpus_and_mixed(corpus_dir):
    cfg = DataConfig(source="mixed", path=str(corpus_dir), procedural_fraction=0.5, holdout_fraction=0.25)
    train = build_dataset(cfg, 32, "train")
    batch = next(iter(DataLoader(train, batch_size=4, num_workers=0)))
    assert batch.shape == (4, 3, 32, 32) and batch.min() >= 0 and batch.max() <= 1
    evalset = build_dataset(cfg, 32, "eval")
    assert len(evalset) > 0 and evalset[len(evalset) - 1].shape == (3, 32, 32)
    corpus_eval = build_dataset(DataConfig(source="corpus", path=str(corpus_dir), holdout_fraction=0.25), 32, "eval")
    assert torch.equal(corpus_eval[0], evalset[0])


def test_build_dataset_synthetic():
    train = build_dataset(DataConfig(source="synthetic", seed=3), 32, "train")
    x = next(iter(DataLoader(train, batch_size=3)))
    y = next(iter(DataLoader(train, batch_size=3)))
    assert x.shape == (3, 3, 32, 32) and torch.equal(x, y)
    evalset = build_dataset(DataConfig(source="synthetic"), 32, "eval")
    assert len(evalset) == 256 and torch.equal(evalset[5], evalset[5])


def test_build_dataset_folder_skips_unreadable(tmp_path):
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (50 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_text("not a jpeg")
    cfg = DataConfig(source="folder", path=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build_dataset(cfg, 16, "train")
    assert len(train) == 3
    assert sum("broken.jpg" in str(w.message) for w in caught) == 1
    assert next(iter(DataLoader(train, batch_size=3))).shape == (3, 3, 16, 16)
    evalset = build_dataset(cfg, 16, "eval")
    assert torch.equal(evalset[1], evalset[1]) and isinstance(evalset, ImageFolderDataset)


def test_build_dataset_hf_offline_message():
    cfg = DataConfig(source="hf", hf_name="karl-test/surely-not-cached")
    with pytest.raises(RuntimeError, match="HF_DATASETS_OFFLINE"):
        build_dataset(cfg, 32)


def test_build_dataset_rejects_unknown_source():
    with pytest.raises(ValueError, match="synthetic"):
        build_dataset(DataConfig(source="imagenet"), 32)
    with pytest.raises(ValueError, match="split"):
        build_dataset(DataConfig(), 32, split="dev")


def test_streams_resume_exactly_for_any_worker_count():
    """Batch k after resume_at(k) equals batch k of an uninterrupted stream, with 0 or 2 workers."""
    from karl.data.datasets import ProceduralDataset

    def batches(start=0, workers=0, n=4):
        ds = ProceduralDataset(16, seed=5).resume_at(start, 3)
        return list(itertools.islice(iter(DataLoader(ds, batch_size=3, num_workers=workers)), n))

    straight = batches(n=6)
    assert not torch.equal(straight[0], straight[1])
    assert all(torch.equal(a, b) for a, b in zip(batches(start=2), straight[2:]))
    assert all(torch.equal(a, b) for a, b in zip(batches(workers=2, n=5), straight))
    assert all(torch.equal(a, b) for a, b in zip(batches(start=3, workers=2, n=3), straight[3:]))
    with pytest.raises(ValueError, match="resume_at"):
        ProceduralDataset(16).resume_at(-1, 3)


def test_corpus_stream_is_resumable(corpus_dir):
    cfg = DataConfig(source="corpus", path=str(corpus_dir), holdout_fraction=0.25)
    a = build_dataset(cfg, 16, "train")
    first = list(itertools.islice(iter(DataLoader(a, batch_size=2)), 3))
    b = build_dataset(cfg, 16, "train").resume_at(2, 2)
    assert torch.equal(next(iter(DataLoader(b, batch_size=2))), first[2])
