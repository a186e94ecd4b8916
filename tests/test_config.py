import pytest

from karl.config import ConfigError, load_config, preset, to_dict, experiment_from_dict


def test_small_preset_is_the_paper_architecture():
    m = preset("small").model
    assert (m.image_size, m.grid_size, m.width, m.encoder_layers, m.decoder_layers, m.heads) == \
        (256, 16, 1024, 8, 8, 8)
    assert (m.num_latent_tokens, len(m.loss_bins), m.token_dim, m.codebook_size) == (512, 19, 12, 4096)
    assert m.quantize and m.base.kind == "vqgan"
    assert preset("small_vae").model.base.latent_scale == pytest.approx(0.2325)


def test_overrides_apply_and_coerce():
    cfg = load_config(preset_name="tiny", overrides=["stage=2", "train.lr=2e-4", "model.width=48",
                                                      "data.path=/tmp/x", "train.max_minutes=null"])
    assert cfg.train.stage == 2 and cfg.train.lr == 2e-4 and cfg.model.width == 48
    assert cfg.data.path == "/tmp/x" and cfg.train.max_minutes is None


@pytest.mark.parametrize("bad", ["train.lrr=1", "modle.width=3", "train.lr=abc", "model.width=1.5",
                                 "train.amp=3", "nokey"])
def test_typos_and_wrong_types_raise(bad):
    with pytest.raises(ConfigError):
        load_config(preset_name="tiny", overrides=[bad])


def test_unknown_preset_raises():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


def test_yaml_files_load(tmp_path):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    for f in sorted(root.glob("*.yaml")):
        load_config(f)
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ntrain:\n  bacth_size: 3\n")
    with pytest.raises(ConfigError, match="bacth_size"):
        load_config(bad)


def test_round_trip_through_dict():
    cfg = load_config(preset_name="cpu", overrides=["train.lr=1e-3"])
    assert experiment_from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("bad, key", [("data.source=foldr", "data.source"), ("stage=3", "train.stage"),
                                      ("stage=true", "train.stage"), ("model.base.kind=vq_gan", "base.kind")])
def test_closed_vocabularies_fail_at_config_time(bad, key):
    with pytest.raises(ConfigError, match=rf"{key}: unknown .*choose one of"):
        load_config(preset_name="tiny", overrides=[bad])


def test_closed_vocabularies_checked_on_direct_construction():
    from karl.config import DataConfig, TrainConfig
    with pytest.raises(ConfigError, match="folder"):
        DataConfig(source="foldr")
    with pytest.raises(ConfigError, match="train.stage"):
        TrainConfig(stage=5)
    assert load_config(preset_name="tiny", overrides=["data.source=folder", "stage=0"]).data.source == "folder"
