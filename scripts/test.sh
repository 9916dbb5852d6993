#!/usr/bin/env bash
# The whole test suite: install, lint (ruff), type-check (mypy), then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check server_extension agents_widget tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
