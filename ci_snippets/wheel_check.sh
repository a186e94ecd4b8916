#!/usr/bin/env bash
# CI: build the wheel offline, install it into a fresh venv, and check that the installed package
# (not this checkout) lists every command and ships every console script.
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
cp -r pyproject.toml README.md karl analysis app "$tmp/src/"
python -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$tmp/dist" "$tmp/src" \
    2> "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }  # the log holds setuptools' deprecation notes
wheel=$(ls "$tmp"/dist/karl_studio-*.whl)

python -m venv --without-pip "$tmp/venv"
deps=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fresh=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$fresh/ci_deps.pth"
python -m pip --python "$tmp/venv/bin/python" install -q --no-deps --no-index "$wheel"

cd "$tmp"  # away from the checkout: `python -m karl` must import the installed wheel
"$tmp/venv/bin/python" -m karl --help | tee "$tmp/help.txt"
"$tmp/venv/bin/python" - "$wheel" "$tmp/help.txt" <<'PY'
import sys, zipfile
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
PY
echo "wheel check: $(basename "$wheel") installs into a fresh venv with every command ($((SECONDS - t0)) s)"
