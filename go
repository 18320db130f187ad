#!/usr/bin/env bash
# Dev tasks. `./go help` lists them. A fresh machine needs only Python: uv is installed once with pip if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# shellcheck source=bin/_uv.bash
source bin/_uv.bash
ensure_uv() { mini_ensure_uv "$PWD" ./go; mini_check_lock "$PWD" ./go; }

task_install() { ensure_uv; "$uv" sync --frozen; }
# The suite picks its own projects (temporary ones included): a MINI_PROJECT from the shell would override them.
task_test() { ensure_uv; "$uv" sync --frozen --quiet; env -u MINI_PROJECT "$uv" run --frozen --no-sync pytest "$@"; }
# What a reviewer checks and CI (.ci/run) runs first: lint, format, and types (mypy, configured in pyproject.toml).
task_check() {
  ensure_uv; "$uv" sync --frozen --quiet
  "$uv" run --frozen --no-sync ruff check src tests bench
  "$uv" run --frozen --no-sync ruff format --check src tests bench
  "$uv" run --frozen --no-sync mypy
}
task_fmt() { ensure_uv; "$uv" run --frozen ruff format src tests bench; "$uv" run --frozen ruff check --fix src tests bench; }
task_bench() { ensure_uv; "$uv" sync --frozen --quiet; "$uv" run --frozen --no-sync python -m bench "$@"; }
task_auth() { ensure_uv; "$uv" sync --frozen --quiet; "$uv" run --frozen --no-sync mini auth "$@"; }
task_help() {
  cat <<'HELP'
./go install        create .venv with the locked dependencies (dev and local groups, no cuda)
./go test [ARGS]    run the test suite (ARGS go to pytest)
./go check          lint, format and type checks (ruff, mypy): what CI runs before the tests
./go fmt            format and autofix
./go bench          run the benchmarks; writes bench/results.json and bench/results.md
./go auth [--check] store the Modal token from MODAL_TOKEN_ID/MODAL_TOKEN_SECRET (else Modal's browser
                    flow); --check says whether Modal accepts it, or why Modal cannot be reached
HELP
}

cmd=${1:-help}; shift || true
case "$cmd" in
  install|test|check|fmt|bench|auth|help) "task_$cmd" "$@" ;;
  *) echo "go: unknown task '$cmd'" >&2; task_help >&2; exit 2 ;;
esac
