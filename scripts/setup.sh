#!/usr/bin/env bash
# Create .venv (once) and install the project with its test extras into it.
# Sourced by workbench.sh and test.sh; safe to run again (pip skips what is installed).
#
# A first install takes minutes, so each step says what it installs and how far it got: on a
# terminal one line that updates in place, elsewhere (CI=true, or output piped to a file) a
# line every PROGRESS_EVERY packages, so CI logs stay short. pip's full output goes to
# .venv/setup.log and its tail is printed when a step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python_env.sh
PY=${PYTHON:-python3}
LOG=.venv/setup.log
PROGRESS_EVERY=${PROGRESS_EVERY:-25}
LIVE=0
if [ -t 1 ] && [ -z "${CI:-}" ]; then LIVE=1; fi

say() { printf '[setup] %s\n' "$*"; }

# Read pip's output and report progress: packages collected (with download sizes) while pip
# resolves, then how many it installs. Lines are counted, not echoed; the log keeps them.
progress() {
  local step=$1 collected=0 present=0 downloads=0 line current="" shown=""
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$LOG"
    case $line in
      "WARNING: Location"*) continue ;;  # pip's noise about local mirror folders
      Collecting*|Processing*)  # from an index, or a wheel in a local folder
        collected=$((collected + 1)); current=${line#* }; current=${current%% *}
        current=${current##*/} ;;
      *"Downloading "*)
        downloads=$((downloads + 1))
        # "Downloading [url/]name-1.0-py3-none-any.whl (12.3 MB)": the file and its size.
        current=${line##*Downloading }; current=${current%% (*}; current=${current##*/}
        case $line in *"("*")") current="$current (${line##*(}" ;; esac ;;
      "Requirement already satisfied"*) present=$((present + 1)); continue ;;
      "Installing collected packages: "*)
        local names=${line#Installing collected packages: } count
        count=$(printf '%s\n' "$names" | awk -F, '{print NF}')
        [ "$LIVE" = 1 ] && printf '\r\033[K'
        local noun=packages note=""
        [ "$count" = 1 ] && noun=package
        [ "$count" -gt 20 ] && note=" (unpacking them takes minutes; no output meanwhile)"
        say "$step: installing $count $noun$note"
        shown=installing; continue ;;
      "Successfully installed "*)
        [ "$LIVE" = 1 ] && printf '\r\033[K'
        say "$step: done"; shown=done; continue ;;
      *) continue ;;
    esac
    if [ "$LIVE" = 1 ]; then
      printf '\r\033[K[setup] %s: %d collected, %d downloaded: %.60s' \
        "$step" "$collected" "$downloads" "$current"
    elif [ $((collected % PROGRESS_EVERY)) -eq 0 ] && [ "$shown" != "$collected" ]; then
      say "$step: $collected packages collected so far ($downloads downloaded)"
      shown=$collected
    fi
  done
  if [ "$LIVE" = 1 ] && [ "$shown" != installing ] && [ "$shown" != done ]; then
    printf '\r\033[K'
  fi
  # pip_step reports "nothing to install" itself, once it knows pip succeeded.
  printf '%s\n' "$present" >"$LOG.present"
  [ "$shown" = done ] && printf 'done\n' >>"$LOG.present"
  return 0
}

# pip_step "N/M what" pip-arguments...: one install step, its output summarised.
pip_step() {
  local step=$1
  shift
  say "$step"
  printf '\n=== %s: pip install %s\n' "$step" "$*" >>"$LOG"
  set +e
  .venv/bin/python -m pip install --progress-bar off --disable-pip-version-check "$@" 2>&1 \
    | progress "${step%% *}"
  local status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "setup: step $step failed (pip exit $status); the end of $LOG:" >&2
    grep -v '^WARNING: Location' "$LOG" | tail -n 30 >&2
    exit "$status"
  fi
  if ! grep -qx done "$LOG.present"; then
    say "${step%% *}: nothing to install ($(head -n 1 "$LOG.present") requirements already satisfied)"
  fi
  rm -f "$LOG.present"
}

# uv installs the same packages as pip (same resolution: the best version over every index,
# as pip does) in a fraction of the time: about 80 s for the whole stack from a cold cache
# where pip took 4-13 min, most of it pip unpacking wheels one at a time. It reads no pip
# configuration, so the machine's pip settings (local wheel folders, mirrors, constraints)
# are passed on to it. Where uv cannot be had, pip does the work as before.
uv_args() {
  .venv/bin/python - <<'PY'
import subprocess, shlex
out = subprocess.run([".venv/bin/python", "-m", "pip", "config", "list"],
                     capture_output=True, text=True, check=False).stdout
flags = {"find-links": "--find-links", "index-url": "--index-url",
         "extra-index-url": "--extra-index-url", "constraint": "--constraint"}
seen = set()
for line in out.splitlines():
    key, _, value = line.partition("=")
    name = key.rsplit(".", 1)[-1]
    if name in flags:
        for item in shlex.split(value.strip().strip("'\"")):
            if (name, item) not in seen:
                seen.add((name, item))
                print(flags[name]); print(item)
PY
}

# uv_step "N/M what" requirements...: one install step through uv, its output to the log.
uv_step() {
  local step=$1 started=$SECONDS
  shift
  say "$step"
  printf '\n=== %s: uv pip install %s\n' "$step" "$*" >>"$LOG"
  mapfile -t extra < <(uv_args)
  if ! .venv/bin/uv pip install --python .venv/bin/python --index-strategy unsafe-best-match \
      --override scripts/uv-overrides.txt "${extra[@]}" "$@" >>"$LOG" 2>&1; then
    echo "setup: step $step failed (uv); the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  say "${step%% *}: done in $((SECONDS - started)) s"
}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
  : >"$LOG"
else
  : >"$LOG"
  say ".venv exists; reusing it"
fi
INSTALL=pip_step
if [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q --disable-pip-version-check uv \
    >>"$LOG" 2>&1; then
  INSTALL=uv_step
else
  say "uv is not available here; installing with pip (slower)"
  pip_step "0/2 pip (upgrading the new venv's installer)" --upgrade pip
fi
# torch first and pinned: its CPU wheel is on these machines; any looser request would pull
# the CUDA build.
$INSTALL "1/2 torch 2.13.0 (CPU build, the largest download)" torch==2.13.0
$INSTALL "2/2 agents-workbench and its test extras (Jupyter, AgileRL, Ray, Playwright...)" \
  -e ".[test]"
# A venv from before scripts/uv-overrides.txt still has rfc3987-syntax (a second per Jupyter
# server start); pip, the fallback installer, cannot leave it out.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$INSTALL" = uv_step ] && [ -d "$SITE/rfc3987_syntax" ]; then
  .venv/bin/uv pip uninstall --python .venv/bin/python rfc3987-syntax >>"$LOG" 2>&1 || true
fi
.venv/bin/python -c "import torch, agilerl, server_extension" \
  || { echo "setup failed: the project did not import; see $LOG" >&2; exit 1; }
say "ready: $(.venv/bin/python --version 2>&1) in .venv"
