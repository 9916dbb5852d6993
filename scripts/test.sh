#!/usr/bin/env bash
# The whole test suite: install, lint (ruff), then pytest with the type check (mypy) beside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python_env.sh
bash scripts/setup.sh
# apt_install WHAT PACKAGE...: install Debian packages a test needs (root, or password-less
# sudo); false when that is impossible here.
apt_install() {
  local what=$1 sudo=""
  shift
  echo "Installing $* for $what (apt-get install)..."
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  command -v apt-get >/dev/null 2>&1 && $sudo apt-get update -qq \
    && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
# The benchmark smoke test drives the server with wrk, as the benchmarks do.
if ! command -v wrk >/dev/null 2>&1 && ! apt_install "the benchmark smoke test" wrk; then
  echo "test.sh: could not install wrk; install it yourself (the benchmark smoke test needs it)." >&2
  exit 1
fi
# The browser tests (pytest -m browser) drive a real Chromium. Playwright's own browser
# download needs network access to its CDN, so use the distribution's package instead.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && ! command -v chromium-browser >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1; then
  if ! apt_install "the browser tests" chromium; then
    echo "test.sh: could not install Chromium (needs apt-get and root or password-less sudo)." >&2
    echo "Install Chromium or Chrome yourself (or set CHROMIUM=/path/to/it), or run the rest" >&2
    echo "without it: .venv/bin/python -m pytest -m 'not browser'." >&2
    exit 1
  fi
fi
# tests/test_jupyterhub.py runs a real JupyterHub, whose proxy (configurable-http-proxy) is a
# Node program from npm; node and npm come from apt when missing.
CHP_VERSION=5.3.0
if [ ! -x .venv/chp/node_modules/.bin/configurable-http-proxy ]; then
  if ! command -v npm >/dev/null 2>&1; then
    if ! apt_install "the JupyterHub test" nodejs npm; then
      echo "test.sh: could not install node and npm (needs apt-get and root or sudo);" >&2
      echo "install them yourself, or run the rest: pytest --deselect tests/test_jupyterhub.py" >&2
      exit 1
    fi
  fi
  echo "Installing configurable-http-proxy $CHP_VERSION into .venv/chp (npm)..."
  npm install --silent --no-fund --no-audit --prefix .venv/chp \
    "configurable-http-proxy@$CHP_VERSION"
fi
.venv/bin/ruff check workbench_core server_extension agents_widget tests benchmarks
# Parallel by default: most of the suite's time is waiting (servers starting, workers forking,
# Ray joining, a browser rendering), which several workers overlap even on 2 cores. The
# worker count is PYTEST_WORKERS (default: see README "Tests" for the measurement behind it).
# Tests of one module share one worker (its servers start once), all Ray tests share one
# (tests/conftest.py), and the `serial` ones (the soak, a streaming test that compares
# arrival times) run afterwards on their own, since they measure or load the whole machine.
WORKERS=${PYTEST_WORKERS:-2}
if [ "$#" -gt 0 ]; then
  # Arguments (a -k or -m expression, a file): one run over what they select.
  .venv/bin/mypy
  exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup "$@"
fi
# Both phases run even when the first fails, so one run shows every failure. Per-test times
# go to test-artifacts/junit-*.xml (scripts/durations.py sums them per module and group).
mkdir -p test-artifacts
rc=0
# The demo workspaces the fixtures train, built once for both phases (tests/conftest.py).
AGENTS_WORKBENCH_TEST_BUILDS=$(mktemp -d -t agents-workbench-test-builds-XXXXXX)
export AGENTS_WORKBENCH_TEST_BUILDS
trap 'rm -rf "$AGENTS_WORKBENCH_TEST_BUILDS"' EXIT
# mypy runs beside the parallel phase at the lowest priority. From a fresh clone (no cache)
# it is 60 CPU-s on one core, which held up the tests for a minute; the parallel phase leaves
# 5-10% of the two cores idle (about 150 CPU-s over the phase), and nice 19 gives mypy those
# rather than the tests' share. Its verdict counts like a failed test; its output comes at
# the end. The serial phase waits for it: the soak has the machine to itself.
nice -n 19 .venv/bin/mypy >test-artifacts/mypy.txt 2>&1 &
mypy_pid=$!
.venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup -m "not serial" --durations=20 \
  --junitxml=test-artifacts/junit-parallel.xml || rc=$?
mypy_rc=0
wait "$mypy_pid" || mypy_rc=$?
echo "mypy (run beside the tests):"
cat test-artifacts/mypy.txt
rc=$((rc ? rc : mypy_rc))
.venv/bin/python -m pytest -n 0 -m serial --durations=10 \
  --junitxml=test-artifacts/junit-serial.xml || rc=$((rc ? rc : $?))
exit "$rc"
