"""Configuration schema: frozen dataclasses, presets by name, YAML files and dotted overrides.

A config is built in three layers, each overriding the last:

1. a named preset (``tiny``, ``cpu``, ``cpu_tae``, ``gpu128``, ``small``, ``small_vae``) from :data:`PRESETS`;
2. an experiment YAML (``configs/*.yaml``) holding ``preset:`` and nested sections;
3. command-line overrides ``section.field=value`` (``train.lr=2e-4``).

Unknown keys and values of the wrong type raise :class:`ConfigError` with the list of
valid keys, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

# The 19 loss-condition bins of the release (paper Sec. 3).
LOSS_BINS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.09, 0.1,
    0.12, 0.14, 0.16, 0.18, 0.2, 0.24, 0.28, 0.32, 0.38,
)


class ConfigError(ValueError):
    """A config key does not exist or a value has the wrong type."""


# Closed vocabularies. Each is checked in its dataclass's __post_init__, so a typo such as
# data.source=foldr fails when the config is built, not minutes later inside the data loader.
BaseKind = Literal["conv_ae", "vqgan", "kl_vae", "tae"]
DataSource = Literal["synthetic", "folder", "hf", "corpus", "mixed"]
Stage = Literal[0, 1, 2]
BASE_KINDS: tuple[str, ...] = typing.get_args(BaseKind)
DATA_SOURCES: tuple[str, ...] = typing.get_args(DataSource)
STAGES: tuple[int, ...] = typing.get_args(Stage)


def _check_choice(key: str, value: Any, choices: tuple, what: str = "") -> None:
    """Raise ConfigError naming the valid choices when ``value`` is not one of them."""
    # bool is an int subclass: True would otherwise pass as stage 1
    if isinstance(value, bool) or value not in choices:
        label = f"unknown {what} {value!r}" if what else f"{value!r} is not valid"
        raise ConfigError(f"{key}: {label}; choose one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class BaseTokenizerConfig:
    """The 2D base tokenizer whose grid KARL distils into 1D tokens.

    ``kind``: ``conv_ae`` (ours, trainable on CPU: stage 0), ``vqgan`` (MaskGIT/MAGE
    architecture), ``kl_vae`` (LDM/MAR KL-16) or ``tae`` (a pretrained tiny autoencoder,
    TAEF2 bundled; ``checkpoint`` names ``taef2`` or a folder with encoder/decoder weights).
    """

    kind: BaseKind = "conv_ae"
    latent_dim: int = 16          # channels of the grid fed to KARL (VQGAN: 256 pre-quant)
    downsample: int = 16          # image side / grid side
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    codebook_size: int = 1024     # vqgan only
    latent_scale: float = 1.0     # multiplies latents before KARL sees them (VAE: 0.2325)
    checkpoint: str | None = None  # optional user checkpoint of the base tokenizer
    # Arithmetic conventions around the KL-VAE (kl_vae only; the VQGAN and conv AE have fixed
    # ones). Defaults are LDM/MAR's; the authors' KARL release uses input_range (0, 1),
    # decode_scale 1.0, output_range (0, 1), and samples the posterior (docs/OFFICIAL.md).
    input_range: tuple[float, ...] = (-1.0, 1.0)   # [0, 1] images are mapped here for the encoder
    output_range: tuple[float, ...] = (-1.0, 1.0)  # the decoder's output range, mapped to [0, 1]
    decode_scale: float | None = None  # latents are divided by this before decoding; None: latent_scale
    posterior: str = "mean"       # eval-mode grid: posterior "mean" or a "sample" (training samples)

    def __post_init__(self) -> None:
        _check_choice("base.kind", self.kind, BASE_KINDS, what="base tokenizer kind")
        for name in ("input_range", "output_range"):
            r = getattr(self, name)
            if len(r) != 2 or not r[0] < r[1]:
                raise ConfigError(f"base.{name}: expected (low, high) with low < high, got {r}")
        if self.posterior not in ("mean", "sample"):
            raise ConfigError(f"base.posterior: {self.posterior!r} is not one of 'mean', 'sample'")
        if self.latent_scale <= 0 or (self.decode_scale is not None and self.decode_scale <= 0):
            raise ConfigError("base.latent_scale and base.decode_scale must be positive")


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 256
    width: int = 1024
    encoder_layers: int = 8
    decoder_layers: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 512  # learned 1D token table; the first T are used
    max_tokens: int = 256         # LTC budget and the default inference budget
    pos_table_size: int = 64      # 2D position tables are pos_table_size^2, sampled to the grid
    token_dim: int = 12           # factorised latent
    quantize: bool = False
    codebook_size: int = 4096
    commitment: float = 0.25
    halt_threshold: float = 0.75
    halting_hidden: int = 512
    # Tokens start from a fitted PCA code of the base latent (karl/model/linear_code.py; not in
    # the paper): lets a small model trained on a CPU reach a good, ordered code.
    linear_code: bool = False
    loss_bins: tuple[float, ...] = LOSS_BINS
    base: BaseTokenizerConfig = field(default_factory=BaseTokenizerConfig)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.base.downsample

    @property
    def num_grid_tokens(self) -> int:
        return self.grid_size ** 2


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage = 1                # 0: base autoencoder, 1: latent distillation, 2: pixel fine-tune
    batch_size: int = 64            # per process
    lr: float = 1e-4                # for a global batch of 256; scaled linearly
    min_lr_ratio: float = 0.1
    warmup_steps: int = 1000
    max_steps: int = 100_000
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema_decay: float = 0.9999
    amp: bool = True                # fp16 on CUDA, bf16 on CPU only if amp_cpu
    amp_cpu: bool = False
    # Two-phase training (paper Sec. 3: EIC then LTC in every iteration)
    budget_step: int = 16           # EIC budgets: budget_step, 2*budget_step, ... budget_max
    budget_max: int = 368
    budget_choices: tuple[int, ...] = ()  # explicit EIC budgets; empty: the budget_step range
    eic_max_epsilon: float = 0.04   # EIC conditions on bins <= this
    # LTC halting labels: "paper" (halt the last max - T tokens, paper Sec. 3) or
    # "minimal" (halt after the shortest prefix of the LTC encoding that meets the condition;
    # keep every token when no prefix does). See karl/train/phases.py.
    halting_labels: str = "paper"
    # Share of each LTC batch conditioned on a bin drawn uniformly from all bins instead of
    # the bin the image achieved with T tokens ("minimal" only: it teaches unreachable -> keep).
    ltc_free_condition_fraction: float = 0.0
    label_prefix_grid: tuple[int, ...] = ()  # prefixes tried for "minimal"; empty: 1,2,3,4,6,8,12,...
    # Weight of the reconstruction term of EIC and LTC. Stage 1 reconstructs the base grid, so it
    # weights the token (latent) loss; stage 2 reconstructs pixels, so there it weights the pixel
    # loss (L1 + lpips_weight * LPIPS + the GAN term). The name is the stage-1 one, kept for
    # existing configs.
    token_loss_weight: float = 1.0
    # Stage 2 fine-tunes the base tokenizer with KARL (the paper's recipe) unless this is off;
    # a pretrained frozen base (``tae``) keeps its weights, so releases share it unchanged.
    stage2_train_base: bool = True
    halt_loss_weight: float = 1.0
    quant_loss_weight: float = 1.0
    # Stage 2 (pixel losses)
    lpips_weight: float = 1.0
    lpips_net: str = "vgg"
    gan_weight_early: float = 0.0
    gan_weight_mid: float = 0.2
    gan_weight_late: float = 0.8
    gan_mid_step: int = 20_000      # the paper's epoch 20, in steps
    gan_late_step: int = 100_000    # the paper's epoch 100, in steps
    disc_ndf: int = 64
    disc_layers: int = 3
    disc_lr_ratio: float = 1.0
    # Bookkeeping
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    out_dir: str = "runs/default"
    init_from: str | None = None    # release dir or state.pt to start from (stage 1 -> 2)
    base_from: str | None = None    # stage-0 run whose base tokenizer stage 1 uses
    num_workers: int = 0
    max_minutes: float | None = None  # stop (and checkpoint) after this wall time

    def __post_init__(self) -> None:
        _check_choice("train.stage", self.stage, STAGES, what="stage")
        if self.halting_labels not in ("paper", "minimal"):
            raise ConfigError(f"train.halting_labels: {self.halting_labels!r} is not one of 'paper', 'minimal'")
        if not 0.0 <= self.ltc_free_condition_fraction <= 1.0:
            raise ConfigError("train.ltc_free_condition_fraction must lie in [0, 1]")
        if self.ltc_free_condition_fraction > 0 and self.halting_labels == "paper":
            raise ConfigError("train.ltc_free_condition_fraction needs train.halting_labels=minimal: the paper's "
                              "labels are defined only for the bin an image achieved")
        if any(b < 1 for b in self.budget_choices) or any(k < 1 for k in self.label_prefix_grid):
            raise ConfigError("train.budget_choices and train.label_prefix_grid hold positive token counts")


@dataclass(frozen=True)
class DataConfig:
    source: DataSource = "synthetic"  # synthetic | folder | hf | corpus | mixed
    path: str | None = None         # folder, or corpus directory
    hf_name: str | None = None
    hf_split: str = "train"
    hf_image_key: str = "image"
    procedural_fraction: float = 0.0  # share of each batch drawn from the procedural generator
    min_crop_scale: float = 0.15    # random multi-scale crops: side in [min, 1] x shorter side
    holdout_fraction: float = 0.0   # of corpus source images held out of training
    holdout_names: tuple[str, ...] = ()  # corpus photos (file or stem) always held out, with their group
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, DATA_SOURCES, what="data source")


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str = "small"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


# --------------------------------------------------------------------------- presets

def _tiny() -> ExperimentConfig:
    base = BaseTokenizerConfig(kind="conv_ae", latent_dim=8, downsample=8, channels=16,
                               channel_mult=(1, 2, 2, 2), num_res_blocks=1)
    model = ModelConfig(image_size=32, width=32, encoder_layers=2, decoder_layers=2, heads=2,
                        num_latent_tokens=32, max_tokens=16, pos_table_size=4, token_dim=4,
                        halting_hidden=32, base=base)
    train = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=5, max_steps=50, budget_step=4,
                        budget_max=24, ema_decay=0.99, gan_mid_step=10, gan_late_step=20,
                        disc_ndf=8, disc_layers=2, log_every=5, ckpt_every=10, amp=False,
                        lpips_net="alex")
    return ExperimentConfig(preset="tiny", model=model, train=train,
                            data=DataConfig(source="synthetic"))


def _cpu() -> ExperimentConfig:
    # Scale chosen with benchmarks/train_throughput.py: see README "Presets".
    base = BaseTokenizerConfig(kind="conv_ae", latent_dim=16, downsample=8, channels=32,
                               channel_mult=(1, 2, 2, 4), num_res_blocks=1)
    model = ModelConfig(image_size=64, width=128, encoder_layers=4, decoder_layers=4, heads=4,
                        num_latent_tokens=64, max_tokens=32, pos_table_size=8, token_dim=12,
                        halting_hidden=128, base=base)
    train = TrainConfig(batch_size=32, lr=4e-3, warmup_steps=200, max_steps=4000,
                        budget_step=4, budget_max=48, ema_decay=0.999, gan_mid_step=500,
                        gan_late_step=2000, disc_ndf=32, disc_layers=3, amp=False,
                        lpips_net="alex", log_every=20, ckpt_every=100)
    data = DataConfig(source="mixed", path="data_cache/corpus", procedural_fraction=0.3,
                      holdout_fraction=0.2)
    return ExperimentConfig(preset="cpu", model=model, train=train, data=data)


def _cpu_tae() -> ExperimentConfig:
    # The bundled model since issue 22: a frozen pretrained TAEF2 base (32 x 8 x 8 latents at
    # 64 px, scaled by 1/3 to about [-1, 1]), up to 64 tokens of 24 floats (1,536 floats: the
    # code size at which a DCT of the held-out photos reaches L1 0.046), width 192.
    base = BaseTokenizerConfig(kind="tae", latent_dim=32, downsample=8, latent_scale=1 / 3,
                               checkpoint="taef2")
    model = ModelConfig(image_size=64, width=192, encoder_layers=4, decoder_layers=4, heads=4,
                        num_latent_tokens=64, max_tokens=64, pos_table_size=8, token_dim=24,
                        halting_hidden=192, linear_code=True, base=base)
    train = TrainConfig(batch_size=32, lr=2e-3, warmup_steps=100, max_steps=20_000,
                        budget_choices=(1, 2, 4, 6, 8, 12, 16, 24, 32, 40, 48, 56, 64),
                        ema_decay=0.998, amp=False, amp_cpu=True, lpips_net="alex",
                        gan_weight_mid=0.0, gan_weight_late=0.0, stage2_train_base=False,
                        halting_labels="minimal", ltc_free_condition_fraction=0.5,
                        log_every=20, ckpt_every=50)
    data = DataConfig(source="mixed", path="data_cache/corpus", procedural_fraction=0.3,
                      holdout_fraction=0.2)
    return ExperimentConfig(preset="cpu_tae", model=model, train=train, data=data)


def _gpu128() -> ExperimentConfig:
    # The larger bundled-model candidate for one GPU: 128x128 input, 16x16 grid, 128 tokens,
    # small enough (~50 MB of fp32 weights) to ship in the repository.
    base = BaseTokenizerConfig(kind="conv_ae", latent_dim=16, downsample=8, channels=64,
                               channel_mult=(1, 2, 2, 4), num_res_blocks=1)
    model = ModelConfig(image_size=128, width=256, encoder_layers=5, decoder_layers=5, heads=8,
                        num_latent_tokens=256, max_tokens=128, pos_table_size=16, token_dim=12,
                        halting_hidden=256, base=base)  # ~14 M parameters: < 60 MB in fp32
    train = TrainConfig(batch_size=128, lr=1e-3, warmup_steps=1000, max_steps=30_000,
                        budget_step=8, budget_max=184, ema_decay=0.9995, gan_mid_step=5000,
                        gan_late_step=20_000, disc_ndf=64, disc_layers=3, lpips_net="vgg",
                        log_every=50, ckpt_every=1000)
    data = DataConfig(source="mixed", path="data_cache/corpus", procedural_fraction=0.3,
                      holdout_fraction=0.2)
    return ExperimentConfig(preset="gpu128", model=model, train=train, data=data)


def _small(base_kind: str = "vqgan") -> ExperimentConfig:
    if base_kind == "vqgan":
        base = BaseTokenizerConfig(kind="vqgan", latent_dim=256, downsample=16, channels=128,
                                   channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                   codebook_size=1024)
        model = ModelConfig(quantize=True, base=base)
    else:
        base = BaseTokenizerConfig(kind="kl_vae", latent_dim=16, downsample=16, channels=128,
                                   channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                   latent_scale=0.2325)
        model = ModelConfig(quantize=False, base=base)
    return ExperimentConfig(preset="small" if base_kind == "vqgan" else "small_vae",
                            model=model, train=TrainConfig(), data=DataConfig(source="folder"))


PRESETS: dict[str, typing.Callable[[], ExperimentConfig]] = {
    "tiny": _tiny,
    "cpu": _cpu,
    "cpu_tae": _cpu_tae,
    "gpu128": _gpu128,
    "small": _small,
    "small_vae": lambda: _small("kl_vae"),
}


def preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- overrides

def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML-parsed value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:  # the value itself is checked in __post_init__, with the valid choices
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {annotation}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def _update(obj: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with nested ``updates`` applied, checking every key."""
    hints = typing.get_type_hints(type(obj))
    valid = {f.name for f in fields(obj)}
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {sorted(valid)}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a section (mapping), got {value!r}")
            changes[key] = _update(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return replace(obj, **changes)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "stage=2"]`` -> nested dict. Bare ``stage`` means ``train.stage``."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        parts = key.strip().split(".")
        if parts == ["stage"]:
            parts = ["train", "stage"]
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset_name: str | None = None) -> ExperimentConfig:
    """Build an experiment config from a YAML file and/or a preset, plus dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    name = preset_name or data.pop("preset", None) or "small"
    data.pop("preset", None)
    cfg = preset(name)
    if data:
        cfg = _update(cfg, data)
    if overrides:
        cfg = _update(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    return _update(ModelConfig(), d)


def experiment_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    d = dict(d)
    name = d.pop("preset", "small")
    return _update(preset(name), d)
