#!/usr/bin/env bash
# Create .venv (once) and install the project with its test extras into it.
# Sourced by workbench.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
# torch first and pinned: its CPU wheel is on these machines; any looser request would pull
# the CUDA build. The pip index noise about local mirror folders is filtered out.
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, agilerl, server_extension" \
  || { echo "setup failed: the project did not import; see pip's output above" >&2; exit 1; }
