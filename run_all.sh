#!/usr/bin/env bash
# Reproduce the report, or run the tests, from a fresh checkout with only python3 (3.11).
#
#   ./run_all.sh                      # all params/*.yaml, profile quick -> reports/<today>/index.html
#   ./run_all.sh --profile full --nice 19 --only toy,toy_pretrained
#   ./run_all.sh test [pytest args]   # the test suite, one worker per core
#
# The virtual environment .venv is (re)built from requirements.txt, then this repository's
# package `lib` is installed into it editable (pyproject.toml), when .venv is missing or when
# requirements.txt or pyproject.toml changed since the last successful install (sha256 kept in
# .venv/.requirements.sha256); otherwise no pip call is made. Set PYTHON to choose the
# interpreter that creates it (default python3).
#
# Stopped at any moment (Ctrl-C, SIGTERM, SIGHUP) it ends with one line and status 130, as the
# runner does (docs/design.md §8): this shell only waits on its children (the set-up, then the
# runner) and handles the signal itself while it waits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

child=""
stopped_while_starting() {
  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi
  echo "interrupted while starting; rerun the same command to resume" >&2
  exit 130
}
trap stopped_while_starting INT TERM HUP

export MPLBACKEND=Agg
export PYTHONHASHSEED=0

VENV=.venv
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
  fi
}

set_up() {
  trap - INT TERM HUP
  # Several starts at once (a job array, two terminals) take turns through the set-up; the
  # runner then takes its report folder's own lock (lib/pipeline/lock.py).
  if command -v flock >/dev/null 2>&1; then
    exec 9>.run_all.lock
    flock 9
  fi

  local want have
  want="$(sha256_of requirements.txt)$(sha256_of pyproject.toml)"
  have="$(cat "$STAMP" 2>/dev/null || true)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "run_all: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    have=""
  fi
  if [[ "$want" != "$have" ]]; then
    echo "run_all: installing requirements.txt into $VENV (first time: a few minutes)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    echo "run_all: $VENV is up to date"
  fi

  # Committed notebooks stay output-free (lib/common/notebooks.py): git stores every notebook
  # stripped (the filter of .gitattributes, configured for this clone in .git/config), and
  # JupyterLab run from .venv saves the repository's notebooks stripped (a pre-save hook), so a
  # notebook run and saved by hand leaves git status clean. The filter is written only when it
  # is missing or different, and a .git/config another git holds (or a lock a killed git left
  # behind) does not stop the run: it is configuration, not the run.
  if [[ "$(git rev-parse --show-toplevel 2>/dev/null)" == "$PWD" ]]; then
    local clean="\"$PWD/$VENV/bin/python\" -m lib.common.notebooks"
    if [[ "$(git config --get filter.strip-outputs.clean || true)" != "$clean" ||
          "$(git config --get filter.strip-outputs.smudge || true)" != "cat" ]]; then
      if ! { git config filter.strip-outputs.clean "$clean" && git config filter.strip-outputs.smudge cat; } 2>/dev/null; then
        echo "run_all: note: git's notebook filter is not configured (.git/config is locked: is .git/config.lock" \
             "left from a killed git?); runs are not affected" >&2
      fi
    fi
  fi
  mkdir -p "$VENV/etc/jupyter"  # the Jupyter server of .venv reads its config from here
  local hook='{"ContentsManager": {"pre_save_hook": "lib.common.notebooks.pre_save_hook"}}'
  if [[ "$(cat "$VENV/etc/jupyter/jupyter_server_config.json" 2>/dev/null || true)" != "$hook" ]]; then
    echo "$hook" > "$VENV/etc/jupyter/jupyter_server_config.json.$$"
    mv "$VENV/etc/jupyter/jupyter_server_config.json.$$" "$VENV/etc/jupyter/jupyter_server_config.json"
  fi
}

# The set-up runs in a child, this shell waiting: a trap that lands while bash parses a command
# substitution can fail to run (bash 5.2), and a waiting shell parses nothing.
set_up < /dev/null &
child=$!
wait "$child"
child=""

if [[ "${1:-}" == "test" ]]; then
  shift
  # One worker per core (pytest-xdist), each test file on one worker so that a
  # file's shared fixtures are built once; `./run_all.sh test -n 0` runs in this process.
  echo "run_all: pytest -n auto --dist loadfile tests $*"
  exec "$VENV/bin/python" -m pytest -q -n auto --dist loadfile tests "$@"
fi
echo "run_all: ste-report $*"
# The runner is a child in its own process group (set -m), and this shell passes INT, TERM and
# HUP on to it as TERM, which it treats as Ctrl-C; should the signal end it before its handlers
# are in place (Python's start-up), the status says so and this shell writes the line.
set -m
"$VENV/bin/python" -m lib.pipeline.cli "$@" < /dev/null &  # the ste-report command (pyproject.toml)
runner=$!
pass_on() { kill -TERM "$runner" 2>/dev/null || true; }
trap pass_on INT TERM HUP
while kill -0 "$runner" 2>/dev/null; do
  wait "$runner" || true  # returns early when a trapped signal arrives: wait again
done
status=0
wait "$runner" || status=$?
if [[ $status -eq 143 || $status -eq 129 ]]; then  # ended by the signal itself, before its handlers
  echo "interrupted while starting; rerun the same command to resume" >&2
  exit 130
fi
exit "$status"
