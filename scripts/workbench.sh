#!/usr/bin/env bash
# The main job: install, train the demo workspace if it is empty, start JupyterLab on it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python_env.sh
bash scripts/setup.sh
exec .venv/bin/agents-workbench run --root "${AGENTS_WORKBENCH_ROOT:-$PWD/workspace}" "$@"
