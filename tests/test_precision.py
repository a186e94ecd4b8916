"""Inference precision (karl/precision.py, karl/autoprecision.py, karl/kernels.py): selection,
the measured ``auto`` (decision logic on injected timings, the cache), autocast, the policy the
model's methods consult (none of them replaced), the modules' import order."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

from karl import autoprecision, build_model, kernels, load_pretrained, save_pretrained
from karl.autoprecision import Decision, choose_plan, guard_pays
from karl.precision import (
    NAMED_PLANS, Plan, at_precision, autocast, describe_precision, precision_choice, resolve_precision,
    set_precision,
)

torch.set_num_threads(1)

# Seconds per image per stage, as the probe reports them: a Xeon without AMX (bf16 slower
# everywhere; issue 23's stage times) and one with AMX (docs/OFFICIAL.md section 8).
NO_AMX = {"base_encode": {"fp32": 0.75, "bf16": 0.85}, "karl_encode": {"fp32": 0.46, "onednn": 0.45},
          "karl_decode": {"fp32": 0.44, "onednn": 0.43, "bf16": 0.71, "int8": 0.2},
          "base_decode": {"fp32": 1.01, "fp32cl": 0.98, "bf16": 1.32}}
AMX = {"base_encode": {"fp32": 0.66, "bf16": 0.18}, "karl_encode": {"fp32": 0.51, "onednn": 0.5},
       "karl_decode": {"fp32": 0.53, "onednn": 0.52, "bf16": 0.22, "int8": 0.21},
       "base_decode": {"fp32": 1.0, "fp32cl": 0.95, "bf16": 0.24}}
# This session's AMD EPYC (avx512_bf16, no AMX; its probe), where MKL's fp32 matmul was slow.
EPYC = {"base_encode": {"fp32": 0.461}, "karl_encode": {"fp32": 0.658, "onednn": 0.344},
        "karl_decode": {"fp32": 0.505, "int8": 0.121, "onednn": 0.244, "bf16": 0.174},
        "base_decode": {"fp32": 0.575, "fp32cl": 0.556, "bf16": 0.272}}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """auto's cache in a fresh folder, and no override from the environment."""
    monkeypatch.setenv("KARL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autoprecision, "_PROBED", set())
    monkeypatch.delenv(autoprecision.ENV, raising=False)


def test_resolve_precision(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("auto", "cpu") == "fp32"            # nothing to measure without a model
    monkeypatch.setenv(autoprecision.ENV, "int8")
    assert resolve_precision("auto", "cpu") == "int8"
    with pytest.raises(ValueError, match="not one of fp32, bf16, fp16, int8, auto"):
        resolve_precision("int4", "cpu")
    with pytest.raises(ValueError, match="not meta"):
        resolve_precision("bf16", "meta")
    with pytest.raises(ValueError, match="'int8' is supported on cpu, not cuda"):
        resolve_precision("int8", "cuda")


def test_choose_plan_by_measurement_not_by_flag():
    plan, reason = choose_plan(NO_AMX)
    assert plan == Plan(karl_decode="int8") and plan.label == "int8" and plan.margin == 0
    assert "KARL decoder fp32 0.44 / onednn 0.43 / bf16 0.71 / int8 0.2 s -> int8" in reason
    amx, reason = choose_plan(AMX)               # int8 0.21 is not 10% below bf16's 0.22
    assert amx == Plan(karl_decode="bf16", base_decode="bf16") and amx.margin == 0
    assert "base encoder fp32 0.66 s -> fp32" in reason      # auto keeps bf16 off the encode side
    epyc = choose_plan(EPYC)[0]
    assert epyc == Plan(karl_encode="onednn", karl_decode="int8", base_decode="bf16")
    assert epyc.margin == 1e-3 and epyc.label == "benc:fp32,kenc:onednn,kdec:int8,bdec:bf16"
    tie = {"karl_decode": {"fp32": 0.44, "bf16": 0.41}, "base_decode": {"fp32": 1.0, "fp32cl": 0.85}}
    assert choose_plan(tie)[0] == Plan(base_decode="fp32cl")
    assert choose_plan({})[0] == Plan()
    assert Plan(karl_encode="onednn").margin == 1e-3 and NAMED_PLANS["bf16"].margin == 0.02
    assert Plan(karl_decode="int8", base_decode="fp32cl").label == "benc:fp32,kenc:fp32,kdec:int8,bdec:fp32cl"
    assert {p.label for p in NAMED_PLANS.values()} == {"fp32", "bf16", "fp16", "int8"}
    with pytest.raises(ValueError, match="karl_decode='int4'"):
        Plan(karl_decode="int4")
    with pytest.raises(ValueError, match="karl_encode='bf16'"):   # the decisions stay fp32
        Plan(karl_encode="bf16")


def test_guard_pays_break_even():
    """AMX: the bf16 base saves 0.49 s of an exact 1.17 s encode: break-even at 42% of images."""
    bf16 = NAMED_PLANS["bf16"]
    assert guard_pays(AMX, bf16, images=2, near_images=2)          # too few images to judge
    assert guard_pays(AMX, bf16, images=10, near_images=4)
    assert not guard_pays(AMX, bf16, images=10, near_images=5)
    assert not guard_pays(NO_AMX, bf16, images=10, near_images=0)
    onednn = Plan(karl_encode="onednn")                            # EPYC: saves 0.314 of 1.119 s
    assert guard_pays(EPYC, onednn, images=100, near_images=28)
    assert not guard_pays(EPYC, onednn, images=100, near_images=29)


def test_decide_caches_per_machine_and_model(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(autoprecision, "probe", lambda m: calls.append(1) or NO_AMX)
    first = autoprecision.decide(tiny_model)
    assert first.source == "probe" and first.plan.label == "int8" and len(calls) == 1
    assert autoprecision.cache_path().is_file()
    again = autoprecision.decide(tiny_model)
    assert again.source == "cache" and again.plan == first.plan and again.timings == NO_AMX
    assert len(calls) == 1 and "measured earlier" in again.short()
    key = autoprecision.cache_key(tiny_model)
    assert "torch " + torch.__version__ in key
    assert autoprecision.model_signature(tiny_model) in key
    monkeypatch.setenv(autoprecision.ENV, "probe")                 # measure again, once per process
    autoprecision._PROBED.clear()
    assert autoprecision.decide(tiny_model).source == "probe" and len(calls) == 2
    assert autoprecision.decide(tiny_model).source == "cache" and len(calls) == 2
    monkeypatch.setenv(autoprecision.ENV, "bf16")                  # no probe at all
    forced = autoprecision.decide(tiny_model)
    assert forced.source == "env" and forced.plan.label == "bf16" and len(calls) == 2
    autoprecision.cache_path().write_text("not json")              # a damaged cache: probe again
    monkeypatch.delenv(autoprecision.ENV)
    assert autoprecision.decide(tiny_model).source == "probe"


def test_auto_probes_once_and_keeps_fp32_programs(tiny_model, tiny_images):
    """A real (untimed-by-the-test) probe: any valid plan; the kept tokens equal fp32's."""
    ref = tiny_model.encode(tiny_images, epsilon=0.05)
    set_precision(tiny_model, "auto")
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    decision = precision_choice(tiny_model)
    assert isinstance(decision, Decision) and decision.source == "probe"
    assert set(decision.timings) >= {"base_encode", "karl_encode", "karl_decode", "base_decode"}
    assert torch.equal(enc.keep, ref.keep)
    assert tiny_model.decode(enc).dtype == torch.float32
    text = describe_precision(tiny_model)
    assert text.startswith(f"precision auto -> {decision.plan.label} (measured now")
    model2 = build_model("tiny", seed=1).eval()
    set_precision(model2, "auto")
    assert precision_choice(model2).source == "cache"             # same machine, same model kind


def test_int8_keeps_fp32_programs_bitwise(tiny_model, tiny_images):
    if not kernels.available("int8"):
        pytest.skip("no dynamic int8 kernels in this PyTorch build")
    ref = tiny_model.encode(tiny_images, epsilon=0.05)
    img32 = tiny_model.decode(ref)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    set_precision(tiny_model, "int8")
    assert kernels.installed(tiny_model.decoder) == "int8" and not kernels.installed(tiny_model.encoder)
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    for name in ("latents", "halting_probs", "keep"):
        assert torch.equal(getattr(enc, name), getattr(ref, name)), name
    img8 = tiny_model.decode(enc)
    assert 0 < (img8 - img32).abs().max() < 0.2 and (img8 - img32).abs().mean() < 0.02
    assert all(torch.equal(v, state[k]) for k, v in tiny_model.state_dict().items())
    set_precision(tiny_model, "fp32")
    assert not kernels.installed(tiny_model.decoder)
    assert torch.equal(tiny_model.decode(enc), img32)


def test_onednn_encoder_is_fp32_up_to_rounding_and_rechecked(tiny_model, tiny_images, monkeypatch):
    """The KARL encoder through oneDNN's fp32 matmul: probabilities within 1e-5 of fp32's; the
    decisions within ROUNDING_MARGIN are re-encoded with F.linear, so those images are bitwise."""
    if not kernels.available("onednn"):
        pytest.skip("no oneDNN matmul in this PyTorch build")
    ref = tiny_model.encode(tiny_images, epsilon=0.05)
    monkeypatch.setattr(autoprecision, "probe", lambda m: {"karl_encode": {"fp32": 1.0, "onednn": 0.5}})
    set_precision(tiny_model, "auto")
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert precision_choice(tiny_model).plan == Plan(karl_encode="onednn")
    assert kernels.installed(tiny_model.encoder) == "onednn"
    assert (enc.halting_probs - ref.halting_probs).abs().max() < 1e-5
    assert torch.equal(enc.keep, ref.keep)
    conv = next(m for m in tiny_model.base.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()                             # the base encoder stays fp32's
    _pin_halting_at_threshold(tiny_model)                          # every image near: re-encoded
    with at_precision(tiny_model, "fp32"):                         # F.linear, no guard
        assert not kernels.installed(tiny_model.encoder)
        exact = tiny_model.encode(tiny_images, epsilon=0.05)
    assert kernels.installed(tiny_model.encoder) == "onednn"      # the block's end puts auto back
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert torch.equal(enc.halting_probs, exact.halting_probs) and torch.equal(enc.keep, exact.keep)
    assert tiny_model.precision_stats["rechecked_images"] == len(tiny_images)


def test_auto_turns_the_guard_off_when_re_encodes_cost_more(tiny_model, tiny_images, monkeypatch):
    """Every image near the threshold: after MIN_IMAGES images encode runs exactly as fp32 (no
    more re-encodes), and the description says so."""
    if not kernels.available("onednn"):
        pytest.skip("no oneDNN matmul in this PyTorch build")
    _pin_halting_at_threshold(tiny_model)
    monkeypatch.setattr(autoprecision, "probe", lambda m: EPYC)
    set_precision(tiny_model, "auto")
    assert precision_choice(tiny_model).plan.karl_encode == "onednn"
    for _ in range(3):
        tiny_model.encode(tiny_images, epsilon=0.05)
    stats = tiny_model.precision_stats
    assert stats["images"] == 9 and stats["near_images"] == 9
    assert stats["rechecked_images"] == 6 and stats["encode"] == "fp32"   # 2 calls before judging
    assert "encoding back to exact fp32: 9 of 9 images had a decision within 0.001" in describe_precision(tiny_model)


def test_autocast_context_and_onednn_flag_restored():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with autocast("cpu", "fp32"):
            assert (a @ b).dtype == torch.float32 and not torch.backends.mkldnn.enabled
        with autocast("cpu", "bf16"):
            assert (a @ b).dtype == torch.bfloat16
            assert torch.backends.mkldnn.enabled or not torch.backends.mkldnn.is_available()
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = before


def _pin_halting_at_threshold(model):
    """Halting logits at the threshold for every token (every decision at risk under bf16)."""
    with torch.no_grad():
        last = model.halting_mlp[2]
        last.weight.mul_(1e-3)
        last.bias.fill_(torch.logit(torch.tensor(model.config.halt_threshold)).item())


def test_bf16_path_close_to_fp32_and_fp32_restored(tiny_model, tiny_images):
    enc32 = tiny_model.encode(tiny_images, epsilon=0.05)
    rec32 = tiny_model.decode(enc32)
    set_precision(tiny_model, "bf16")
    conv = next(m for m in tiny_model.base.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    enc16 = tiny_model.encode(tiny_images, epsilon=0.05)
    rec16 = tiny_model.decode(enc16)
    assert rec16.dtype == enc16.latents.dtype == enc16.halting_probs.dtype == torch.float32
    assert rec16.is_contiguous() and 0 < (rec16 - rec32).abs().max() < 0.1
    assert torch.equal(enc16.keep, enc32.keep)                   # the re-check's promise
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)   # restored after it
    assert tiny_model.precision_stats["images"] == len(tiny_images)
    # Reconstruct and a cached grid go through the same path.
    grid = tiny_model.base_encode(tiny_images)
    assert grid.features.dtype == torch.float32
    assert tiny_model.reconstruct(tiny_images, num_tokens=4, base_grid=grid).dtype == torch.float32

    set_precision(tiny_model, "fp32")
    assert "encode" not in vars(tiny_model) and conv.weight.is_contiguous()
    assert torch.equal(tiny_model.decode(tiny_model.encode(tiny_images, epsilon=0.05)), rec32)


def test_recheck_gives_fp32_programs_for_images_near_the_threshold(tiny_model, tiny_images):
    """Every decision pinned near the threshold: every image is re-encoded in fp32, so the
    encoding is bitwise fp32's, also with per-image epsilons and a cached (bf16) base grid."""
    _pin_halting_at_threshold(tiny_model)
    eps = torch.tensor([0.02, 0.05, 0.1, 0.2])[: len(tiny_images)]
    enc32 = tiny_model.encode(tiny_images, epsilon=eps)
    mono32 = tiny_model.encode(tiny_images, epsilon=eps, monotone=True)
    set_precision(tiny_model, "bf16")
    grid16 = tiny_model.base_encode(tiny_images)
    for kwargs, ref in (({}, enc32), ({"base_grid": grid16}, enc32), ({"monotone": True}, mono32)):
        enc = tiny_model.encode(tiny_images, epsilon=eps, **kwargs)
        for name in ("latents", "halting_probs", "keep", "epsilon"):
            assert torch.equal(getattr(enc, name), getattr(ref, name)), (name, kwargs)
    stats = tiny_model.precision_stats
    assert stats["rechecked_images"] == stats["images"] == 3 * len(tiny_images)
    assert stats["near_threshold_tokens"] == 3 * enc32.keep.numel()


def test_recheck_only_touches_images_near_the_threshold(tiny_model, tiny_images):
    """Halting far from the threshold: no image is re-encoded; the bf16 values are kept."""
    with torch.no_grad():
        tiny_model.halting_mlp[2].weight.zero_()
        tiny_model.halting_mlp[2].bias.fill_(-8.0)                # prob 3e-4: keep everything
    set_precision(tiny_model, "bf16")
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert bool(enc.keep.all()) and tiny_model.precision_stats["rechecked_images"] == 0
    set_precision(tiny_model, "fp32")
    assert not torch.equal(enc.latents, tiny_model.encode(tiny_images, epsilon=0.05).latents)


def test_guarded_encode_runs_the_karl_encoder_in_fp32_on_the_reduced_grid(tiny_model, tiny_images):
    """Far from the threshold (no re-check): the program is the fp32 KARL encoder's on the
    bf16 base grid, bitwise; without the guard the encoder runs under autocast instead."""
    with torch.no_grad():
        tiny_model.halting_mlp[2].weight.zero_()
        tiny_model.halting_mlp[2].bias.fill_(-8.0)
    set_precision(tiny_model, "bf16")
    grid16 = tiny_model.base_encode(tiny_images)
    enc = tiny_model.encode(tiny_images, epsilon=0.05)
    set_precision(tiny_model, "bf16", recheck=False)
    unguarded = tiny_model.encode(tiny_images, epsilon=0.05)
    set_precision(tiny_model, "fp32")
    ref = tiny_model.encode(tiny_images, epsilon=0.05, base_grid=grid16)
    assert torch.equal(enc.latents, ref.latents) and torch.equal(enc.halting_probs, ref.halting_probs)
    assert not torch.equal(unguarded.latents, ref.latents)


def test_near_threshold_decisions_warn_once_without_recheck(tiny_model, tiny_images):
    _pin_halting_at_threshold(tiny_model)
    set_precision(tiny_model, "bf16", recheck=False)
    with pytest.warns(UserWarning, match="within 0.02 of the threshold under bf16 with the fp32 "
                                         "re-check off"):
        enc = tiny_model.encode(tiny_images, epsilon=0.05)
    assert tiny_model.precision_stats["near_threshold_tokens"] == enc.keep.numel()
    assert tiny_model.precision_stats["rechecked_images"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the second call does not warn again
        tiny_model.encode(tiny_images, epsilon=0.05)


def test_load_pretrained_precision(tmp_path, tiny_images):
    out = save_pretrained(build_model("tiny", seed=0), tmp_path / "m")
    model = load_pretrained(out, precision="auto")
    assert model.precision == "auto"
    assert model.decode(model.encode(tiny_images)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'half'"):
        load_pretrained(out, precision="half")


def test_karl_eval_precision_recorded_and_not_mixed(tmp_path):
    """--precision bf16 runs, is recorded, and a rerun at fp32 refuses to append to it."""
    import json

    from karl.evaluate import main
    release = save_pretrained(build_model("tiny", seed=0), tmp_path / "m")
    out = tmp_path / "res"
    base = ["--checkpoint", str(release), "--data", "procedural:2", "--out", str(out), "--fixed", "4",
            "--epsilon", "0.05", "--search", "none", "--lpips-net", "none", "--no-progress"]
    assert main([*base, "--precision", "bf16"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["precision"] == "bf16" and config["near_threshold_tokens"] >= 0
    assert main([*base, "--precision", "fp32"]) == 2            # fingerprint mismatch


def test_karl_eval_summary_says_what_auto_chose(tmp_path, monkeypatch):
    import json

    from karl.evaluate import main
    monkeypatch.setattr(autoprecision, "probe", lambda m: NO_AMX)
    release = save_pretrained(build_model("tiny", seed=0), tmp_path / "m")
    out = tmp_path / "res"
    assert main(["--checkpoint", str(release), "--data", "procedural:2", "--out", str(out), "--fixed", "4",
                 "--epsilon", "0.05", "--search", "none", "--lpips-net", "none", "--no-progress",
                 "--precision", "auto"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["precision"] == "int8"
    assert config["precision_auto"].startswith("precision auto -> int8 (probe ")
    assert "KARL decoder fp32 0.44 / onednn 0.43 / bf16 0.71 / int8 0.2 s -> int8" in config["precision_auto"]


def test_selecting_a_precision_replaces_no_method(tiny_model, tiny_images, monkeypatch):
    """The precision is a policy the model's methods consult (model.precision_policy), never a
    method bound on an instance: not on the model, its base tokenizer or any submodule (the
    Linear kernels are modules swapped in, karl/kernels.py)."""
    fast = kernels.available("onednn") and kernels.available("int8")
    monkeypatch.setattr(autoprecision, "probe", lambda m: EPYC if fast else {})   # auto: kernels too

    def shadowed_methods(model):      # instance attributes hiding a method of the class
        return {(type(m).__name__, k) for m in model.modules() for k, v in vars(m).items()
                if callable(getattr(type(m), k, None)) or (callable(v) and k in ("forward", "in_proj"))}
    assert shadowed_methods(tiny_model) == set()
    plans = ["fp32", "bf16", "fp16", "auto"] + (["int8"] if kernels.available("int8") else [])
    for name in plans:
        set_precision(tiny_model, name)
        tiny_model.decode(tiny_model.encode(tiny_images, epsilon=0.05))
        assert shadowed_methods(tiny_model) == set(), name
        assert "encode" not in vars(tiny_model) and "decode_head" not in vars(tiny_model.base)
        assert tiny_model.precision == name and tiny_model.precision_policy.name == name
    if fast:
        set_precision(tiny_model, "auto")
        assert precision_choice(tiny_model).plan == Plan(karl_encode="onednn", karl_decode="int8",
                                                         base_decode="bf16")
        attn = tiny_model.encoder.transformer[0].attn
        assert kernels.installed(tiny_model.encoder) == "onednn" == attn.in_proj_kernel.kind
        assert isinstance(tiny_model.decoder.ffn[0], kernels.KernelLinear)
        assert shadowed_methods(tiny_model) == set()
    with at_precision(tiny_model, "bf16"):
        assert tiny_model.precision == "bf16" and shadowed_methods(tiny_model) == set()
    assert tiny_model.precision == ("auto" if fast else plans[-1])


def test_at_precision_scopes_a_block_and_restores(tiny_model, tiny_images):
    """bf16 inside the block (the reduced pixels, fp32's masks), fp32 before and after, bitwise."""
    enc32 = tiny_model.encode(tiny_images, epsilon=0.05)
    rec32 = tiny_model.decode(enc32)
    assert tiny_model.precision_policy is None and tiny_model.precision == "fp32"
    with at_precision(tiny_model, "bf16") as model:
        enc16 = model.encode(tiny_images, epsilon=0.05)
        rec16 = model.decode(enc16)
        assert model.precision_stats["images"] == len(tiny_images)
    assert torch.equal(enc16.keep, enc32.keep) and 0 < (rec16 - rec32).abs().max() < 0.1
    assert tiny_model.precision_policy is None and tiny_model.precision_stats == {}
    conv = next(m for m in tiny_model.base.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    assert torch.equal(tiny_model.decode(tiny_model.encode(tiny_images, epsilon=0.05)), rec32)


PRECISION_MODULES = ("karl.precision_plan", "karl.kernels", "karl.autoprecision", "karl.precision")


def _karl_imports(module: str) -> set[str]:
    """Every karl module ``module`` imports, at module level or inside a function."""
    tree = ast.parse((Path(__file__).parents[1] / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] == "karl"}


def test_precision_modules_import_one_way():
    """precision_plan <- kernels <- autoprecision <- precision: each imports only modules
    before it in that order (no cycle, none hidden inside a function)."""
    for i, module in enumerate(PRECISION_MODULES):
        later = set(PRECISION_MODULES[i:])
        assert not _karl_imports(module) & later, (module, _karl_imports(module) & later)
    assert not {m for m in _karl_imports("karl.precision_plan") if m != "karl"}  # a leaf
    for module in ("karl.model.karl", "karl.model.layers"):    # the model consults, never imports
        assert not _karl_imports(module) & set(PRECISION_MODULES), module
