#!/usr/bin/env bash
# CI: build the wheel offline, install it into a fresh venv, and check that the installed package
# (not this checkout) lists every command, ships every console script, and puts only the project's
# own names into site-packages: karl, and karl_studio holding app/ and analysis/ (setup.py).
# Dependencies are not installed again: the fresh venv sees the CI venv's site-packages through a
# .pth line (a plain path, so the CI venv's editable install of this repo is NOT activated).
set -euo pipefail
[ -n "${WHEEL_CHECK_TRACE:-}" ] && PS4="+ \${SECONDS}s " && set -x
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS

# Build from a copy so the checkout gets no build/ folder.
mkdir "$tmp/src"
cp -r pyproject.toml setup.py README.md karl analysis app "$tmp/src/"
python -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$tmp/dist" "$tmp/src" \
    2> "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }  # the log holds setuptools' deprecation notes
wheel=$(ls "$tmp"/dist/karl_studio-*.whl)

python -m venv --without-pip "$tmp/venv"
deps=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fresh=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$fresh/ci_deps.pth"
python -m pip --python "$tmp/venv/bin/python" install -q --no-deps --no-index "$wheel"
"$tmp/venv/bin/karl-app" --help > "$tmp/app_help.txt"   # the UI's command line, from the wheel

cd "$tmp"  # away from the checkout: `python -m karl` must import the installed wheel
"$tmp/venv/bin/python" -m karl --help | tee "$tmp/help.txt"
"$tmp/venv/bin/python" - "$wheel" "$tmp/help.txt" "$tmp/app_help.txt" <<'PY'
import ast, importlib, pkgutil, sys, sysconfig, zipfile
from importlib.metadata import entry_points
from pathlib import Path
import karl
assert karl.__file__.startswith(sys.prefix), f"karl imported from {karl.__file__}, not the fresh venv"
wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
requires = [l for l in wheel.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
core = [r for r in requires if "extra ==" not in r]
assert core and not any(p in r.lower() for r in core for p in ("gradio", "plotly", "pandas")), core
assert any("gradio" in r and 'extra == "app"' in r for r in requires), requires
scripts = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("karl-")}
help_text = Path(sys.argv[2]).read_text()
for name in ("karl-train", "karl-eval", "karl-complexity", "karl-convert-official"):
    assert name in scripts, f"no console script {name}"
    assert callable(scripts[name].load()), name          # the entry point imports
    assert (Path(sys.prefix) / "bin" / name).is_file(), f"{name} not installed in bin/"
    assert name in help_text, f"python -m karl --help does not list {name}"

# Only the project's own names at the top of the wheel and of site-packages (issue 24: a top-level
# `app` or `analysis` collides with any other project's).
own = {"karl", "karl_studio"}
tops = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
assert tops == own, f"wheel top-level names {sorted(tops)}, expected {sorted(own)}"
site = Path(sysconfig.get_paths()["purelib"])
installed = {p.name for p in site.iterdir() if p.name not in ("ci_deps.pth", "__pycache__")
             and not p.name.endswith(".dist-info") and not p.name.startswith("_virtualenv")}
assert installed == own, f"site-packages holds {sorted(installed)}, expected {sorted(own)}"
for name in ("app", "analysis"):
    try:
        importlib.import_module(name)
        raise AssertionError(f"`import {name}` works in a venv with only the wheel installed")
    except ModuleNotFoundError:
        pass
# Every installed module of app/ and analysis/ imports them by their installed names ...
home = Path(importlib.import_module("karl_studio.app").__file__).parents[1]
for path in home.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            assert node.module.split(".")[0] not in ("app", "analysis"), f"{path}: from {node.module} import"
# ... and imports (gradio and the analysis stack come from the CI venv).
mods = [m.name for m in pkgutil.walk_packages([str(home)], prefix="karl_studio.")]
for name in mods:
    importlib.import_module(name)
assert "karl_studio.app.cli" in mods and "karl_studio.analysis.report" in mods, mods
assert "karl-app" in scripts and callable(scripts["karl-app"].load()), "no console script karl-app"
assert "--checkpoint MODEL" in Path(sys.argv[3]).read_text(), "karl-app --help"
PY
echo "wheel check: $(basename "$wheel") installs into a fresh venv with every command ($((SECONDS - t0)) s)"
