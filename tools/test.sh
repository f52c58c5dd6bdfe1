#!/usr/bin/env bash
# The one test command: set the machine up (idempotent), then lint, type-check and run the whole test suite
# against real MariaDB 10.11, MySQL 9.7 and MariaDB 11.8 servers. Every step runs even if an earlier one failed;
# the exit status is non-zero if any failed. Extra arguments go to pytest (e.g. tools/test.sh -k sandbox).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
t0=$SECONDS
failed=()

step() {  # step NAME CMD...: run, time and record a failure
    local name="$1" t=$SECONDS rc
    shift
    printf '\n=== %s: %s\n' "$name" "$*" >&2
    "$@" </dev/null
    rc=$?
    printf '=== %s: exit %d in %ds\n' "$name" "$rc" "$((SECONDS - t))" >&2
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
    return "$rc"
}

step setup bash tools/setup.sh || { echo "test.sh: setup failed; not running the tests" >&2; exit 1; }

step ruff .venv/bin/ruff check .
step shellcheck shellcheck tools/setup.sh tools/test.sh .ci/run tools/server-wrappers/*
step static-tree .venv/bin/python -m tools.static_tree
step mypy .venv/bin/mypy
step layers env PYTHONPATH=.venv/static .venv/bin/lint-imports --no-cache
# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass. The timeout keeps a hung
# server from eating CI's whole budget.
step pytest timeout -k 60 "${PYTEST_TIMEOUT:-4800}" .venv/bin/pytest -q "$@"

printf '\n' >&2
if [ ${#failed[@]} -gt 0 ]; then
    printf 'test.sh: FAILED after %ds: %s\n' "$((SECONDS - t0))" "${failed[*]}" >&2
    exit 1
fi
printf 'test.sh: all passed in %ds\n' "$((SECONDS - t0))" >&2
