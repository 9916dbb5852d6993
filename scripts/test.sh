#!/usr/bin/env bash
# The whole test suite: install, lint (ruff), type-check (mypy), then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The browser tests (pytest -m browser) drive a real Chromium. Playwright's own browser
# download needs network access to its CDN, so use the distribution's package instead.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && ! command -v chromium-browser >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1; then
  echo "Installing Chromium for the browser tests (apt-get install chromium)..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
  if ! { command -v apt-get >/dev/null 2>&1 && $SUDO apt-get update -qq \
         && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
    echo "test.sh: could not install Chromium (needs apt-get and root or password-less sudo)." >&2
    echo "Install Chromium or Chrome yourself (or set CHROMIUM=/path/to/it), or run the rest" >&2
    echo "without it: .venv/bin/python -m pytest -m 'not browser'." >&2
    exit 1
  fi
fi
.venv/bin/ruff check workbench_core server_extension agents_widget tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
