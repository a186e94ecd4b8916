#!/usr/bin/env bash
# Installs what the app's browser test (tests/test_browser.py, marker `browser`) needs:
# Debian's Chromium, driven by playwright-core from npm, which never downloads a browser
# of its own (executablePath /usr/bin/chromium). Without these the test skips with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
command -v node >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
# playwright-core, pinned by tests/browser/package-lock.json.
npm ci --prefix tests/browser --no-audit --no-fund --silent
