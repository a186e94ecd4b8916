"""Image loading, the offline photo corpus, and the data sets built from a DataConfig."""

import hashlib
import inspect
import io
import itertools
from pathlib import Path
import json
import struct
import warnings
import zlib

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


def test_split_sources_named_holdout(corpus_dir):
    entries = corpus_mod.load_manifest(corpus_dir)
    moto = next(e for e in entries if e["name"].startswith("motorcycle"))
    train, hold = corpus_mod.split_sources(entries, 0.0, holdout_names=(Path(moto["file"]).stem,))
    assert {e["group"] for e in hold} == {moto["group"]}  # the named photo with its whole scene
    assert len(hold) >= 2 and not {e["group"] for e in train} & {e["group"] for e in hold}


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


# ----------------------------------------------------------------------------- corpus table and build logic

def test_corpus_table_is_consistent():
    """Every photo has a licence, a unique corpus file name, an installed path; groups hold >= 2 photos."""
    from karl.data.corpus_gcompris import GCOMPRIS_SCENES
    sources = corpus_mod.PYPI_PHOTOS + corpus_mod.DEBIAN_PHOTOS
    assert len({(s.package, s.name) for s in sources}) >= 300  # issue 22: at least 300 photographs
    files = [f"{s.package}__{s.name}" for s in sources]
    assert len(files) == len(set(files)), "corpus file names must be unique"
    for s in corpus_mod.DEBIAN_PHOTOS:
        assert s.license.strip() and s.file.startswith("/usr/share/"), s
        assert s.package in corpus_mod.DEBIAN_PACKAGES
        assert not s.member or (s.file.endswith(".rcc") and s.member.startswith("/")), s
        assert s.original.startswith(s.file)
    assert all(s.license.strip() for s in corpus_mod.PYPI_PHOTOS)
    assert set(corpus_mod.DEBIAN_PACKAGES) == {s.package for s in corpus_mod.DEBIAN_PHOTOS}
    default = inspect.signature(corpus_mod.fetch_debian_packages).parameters["packages"].default
    assert default == corpus_mod.DEBIAN_PACKAGES  # --with-debian fetches every package of the table
    explicit = [s.group for s in sources if s.group]
    assert all(explicit.count(g) >= 2 for g in explicit), "an explicit group names photos of one scene"
    names = {s.name for s in corpus_mod.DEBIAN_PHOTOS}
    assert {n for scene in GCOMPRIS_SCENES.values() for n in scene} <= names


def test_corpus_table_split_keeps_scenes_together():
    entries = [{"file": f"{s.package}__{s.name}", "group": s.group or f"{s.package}:{s.name}"}
               for s in corpus_mod.PYPI_PHOTOS + corpus_mod.DEBIAN_PHOTOS]
    train, hold = corpus_mod.split_sources(entries, 0.2, seed=0)
    assert len(train) + len(hold) == len(entries) and 0.15 < len(hold) / len(entries) < 0.25
    assert not {e["group"] for e in train} & {e["group"] for e in hold}
    assert corpus_mod.split_sources(entries, 0.2, seed=0) == (train, hold)


def _rcc(files: dict, version: int = 2, compressed: tuple = ()) -> bytes:
    """A Qt resource bundle as `rcc` writes it (breadth-first tree, children contiguous)."""
    tree: dict = {}
    for path, data in files.items():
        *dirs, leaf = path.strip("/").split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data
    nodes, i = [("", tree)], 0
    first: dict = {}
    while i < len(nodes):
        if isinstance(nodes[i][1], dict):
            first[i] = len(nodes)
            nodes.extend(sorted(nodes[i][1].items()))
        i += 1
    names, blob, table = bytearray(), bytearray(), bytearray()
    for i, (name, content) in enumerate(nodes):
        name_off = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        if isinstance(content, dict):
            table += struct.pack(">IHII", name_off, 2, len(content), first[i])
        else:
            full = "/" + "/".join(n for n, _ in _ancestry(nodes, first, i))
            raw = struct.pack(">I", len(content)) + zlib.compress(content) if full in compressed else content
            table += struct.pack(">IHHHI", name_off, 1 if full in compressed else 0, 0, 0, len(blob))
            blob += struct.pack(">I", len(raw)) + raw
        table += b"\0" * 8 if version > 1 else b""
    header_len = 20
    tree_off, data_off = header_len, header_len + len(table)
    return (b"qres" + struct.pack(">IIII", version, tree_off, data_off, data_off + len(blob))
            + bytes(table) + bytes(blob) + bytes(names))


def _ancestry(nodes: list, first: dict, index: int) -> list:
    chain = []
    while index:
        chain.append(nodes[index])
        index = next(p for p, f in first.items() if f <= index < f + len(nodes[p][1]))
    return chain[::-1]


def test_qt_resource_reader(tmp_path):
    from karl.data.qt_resource import QtResourceError, qt_resource_member, read_qt_resource
    files = {"/app/res/a.png": b"\x89PNG fake", "/app/res/sub/b.webp": b"RIFF" + bytes(range(200)),
             "/top.txt": b"x"}
    for version in (1, 2):
        blob = _rcc(files, version, compressed=("/app/res/sub/b.webp",))
        assert read_qt_resource(blob) == files
    path = tmp_path / "t.rcc"
    path.write_bytes(_rcc(files))
    assert qt_resource_member(path, "/top.txt") == b"x"
    with pytest.raises(QtResourceError, match="no member"):
        qt_resource_member(path, "/nope.png")
    with pytest.raises(QtResourceError, match="not a Qt resource"):
        read_qt_resource(b"PK\3\4 not a bundle at all")
    with pytest.raises(QtResourceError, match="damaged"):
        read_qt_resource(path.read_bytes()[:60])


def test_build_corpus_debian_sources(tmp_path, monkeypatch):
    """Byte-for-byte copies, downscaled large photos, grey ones, photos inside a .rcc, duplicates, absent files."""
    root = tmp_path / "root"
    share = root / "usr/share/demo"
    share.mkdir(parents=True)
    (root / ".versions.json").write_text(json.dumps({"demo": "1.0-1"}))
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))
    big.save(share / "big.jpg", quality=90)
    small = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    (share / "small.png").write_bytes(_png(small))
    gray = Image.fromarray(rng.integers(0, 255, (100, 90), dtype=np.uint8)).convert("RGB")
    (share / "gray.png").write_bytes(_png(gray))
    member_png = _png(Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)))
    (share / "bundle.rcc").write_bytes(_rcc({"/res/pic.png": member_png}, compressed=("/res/pic.png",)))
    (share / "copy.png").write_bytes(_png(small))  # same pixels as small.png
    src = corpus_mod.PhotoSource
    table = (src("demo", "/usr/share/demo/big.jpg", "CC0-1.0", "A"),
             src("demo", "/usr/share/demo/small.png", "CC0-1.0"), src("demo", "/usr/share/demo/gray.png", "GPL-2+"),
             src("demo", "/usr/share/demo/bundle.rcc", "CC-BY-4.0", member="/res/pic.png", label="pic"),
             src("demo", "/usr/share/demo/bundle.rcc", "CC-BY-4.0", member="/res/gone.png", label="gone"),
             src("demo", "/usr/share/demo/copy.png", "CC0-1.0"), src("demo", "/usr/share/demo/absent.jpg", "CC0-1.0"))
    monkeypatch.setattr(corpus_mod, "PYPI_PHOTOS", ())
    monkeypatch.setattr(corpus_mod, "DEBIAN_PHOTOS", table)
    out = tmp_path / "corpus"
    entries = corpus_mod.build_corpus(out, verbose=False, debian_roots=(root,), max_side=64)
    by_name = {e["name"]: e for e in entries}
    assert sorted(by_name) == ["big", "gray", "pic", "small"]
    big_entry = by_name["big"]
    assert big_entry["downscaled_from"] == [200, 120] and (big_entry["width"], big_entry["height"]) == (64, 38)
    assert by_name["big"]["file"].endswith(".jpg") and by_name["big"]["package_version"] == "1.0-1"
    assert (out / by_name["small"]["file"]).read_bytes() == (share / "small.png").read_bytes()  # byte for byte
    assert "downscaled_from" not in by_name["small"]
    assert by_name["gray"]["mode"] == "L" and Image.open(out / by_name["gray"]["file"]).mode == "L"
    assert (out / by_name["pic"]["file"]).read_bytes() == member_png
    assert by_name["pic"]["original_file"] == "/usr/share/demo/bundle.rcc:/res/pic.png"
    for e in entries:
        data = (out / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        assert Image.open(io.BytesIO(data)).size == (e["width"], e["height"]) and max(e["width"], e["height"]) <= 64
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rebuild"].endswith("--max-side 64") and corpus_mod.load_manifest(out) == entries


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
