# Sourced by ./go, bin/mini and bin/modal: the uv they run, and the checks made before anything runs.
#
#   source "$root/bin/_uv.bash"
#   mini_ensure_uv "$root" bin/mini      # sets $uv: found, or installed once with pip
#   mini_check_lock "$root" bin/mini     # exits 3 unless uv.lock matches pyproject.toml
#
# Exit codes follow `mini`'s (docs/cli.md): 3 for the project (its lock), 4 for uv.

# Behind a TLS-inspecting proxy only the system's certificate store trusts the registry; uv's bundled roots
# do not. uv 0.11 and later read UV_SYSTEM_CERTS (and warn about UV_NATIVE_TLS set alone); older releases
# know only UV_NATIVE_TLS. A choice the user made either way is kept.
if [[ -z ${UV_SYSTEM_CERTS:-} && -z ${UV_NATIVE_TLS:-} ]]; then
  export UV_SYSTEM_CERTS=1 UV_NATIVE_TLS=1
fi

_mini_python() {
  command -v python3 || command -v python
}

# The uv to use: on PATH, else the project environment's own, else one pip installed before (the uv
# package knows where its binary went: the user base with --user, the interpreter's scripts without).
mini_find_uv() {
  local root=$1 py
  if command -v uv; then return; fi
  if [[ -x $root/.venv/bin/uv ]]; then echo "$root/.venv/bin/uv"; return; fi
  py=$(_mini_python) || return 0
  (cd / && "$py" -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null) || true
}

# pip trusts the system's store by default from 24.2; from 22.2 it does when asked and truststore is there.
_mini_pip_trust_flags() {
  (cd / && "$1" - <<'PY'
import importlib.util
import sys

from pip import __version__

version = tuple(int(part) for part in __version__.split(".")[:2] if part.isdigit())
available = importlib.util.find_spec("pip._vendor.truststore") or importlib.util.find_spec("truststore")
if sys.version_info >= (3, 10) and (22, 2) <= version < (24, 2) and available:
    print("--use-feature=truststore")
PY
  ) 2>/dev/null || true
}

mini_ensure_uv() {
  local root=$1 who=$2 py flags
  uv=$(mini_find_uv "$root")
  if [[ -n $uv ]]; then return; fi
  if ! py=$(_mini_python); then
    echo "$who: uv is not installed, and there is no python3 to install it with." >&2
    echo "  fix: install Python 3.10 or later (or uv: https://docs.astral.sh/uv/getting-started/installation/), then retry." >&2
    exit 4
  fi
  echo "$who: uv not found; installing it once with $py -m pip install --user uv" >&2
  flags=$(_mini_pip_trust_flags "$py")
  # --user is refused inside a virtual environment, where a plain install lands in that environment.
  # shellcheck disable=SC2086  # $flags is one flag or none
  "$py" -m pip install --quiet --user $flags uv || "$py" -m pip install --quiet $flags uv || true
  uv=$(mini_find_uv "$root")
  if [[ -z $uv ]]; then
    echo "$who: uv is not installed, and installing it with pip failed (see above)." >&2
    echo "  fix: install uv (https://docs.astral.sh/uv/getting-started/installation/), then retry." >&2
    exit 4
  fi
}

# `uv lock --check` compares uv.lock with pyproject.toml; --offline keeps it to the files (and uv's cache),
# so it costs a few milliseconds and works without a network. A stale lock cannot be re-resolved offline,
# so that fails too, as it should.
mini_check_lock() {
  local root=$1 who=$2 command="uv lock"
  if [[ $(command -v uv || true) != "$uv" ]]; then command="$uv lock"; fi
  if [[ ! -f $root/uv.lock ]]; then
    echo "$who: $root has no uv.lock; mini runs the locked dependencies." >&2
    echo "  fix: run \`$command\` in $root, then retry." >&2
    exit 3
  fi
  if ! "$uv" lock --check --offline --quiet --project "$root" >/dev/null 2>&1; then
    echo "$who: uv.lock does not match pyproject.toml: the dependencies changed since it was written." >&2
    echo "  fix: run \`$command\` in $root, then retry." >&2
    exit 3
  fi
}
