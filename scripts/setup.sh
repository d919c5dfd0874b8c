#!/usr/bin/env bash
# Build (or reuse) the virtualenv with everything the provider, demo and tests need.
#
#   bash scripts/setup.sh          # prints the venv path on its last line
#
# The venv is built from uv.lock (exact versions, resolved from pyproject.toml by uv; the
# Containerfile installs the same set), lives outside the clone, and is keyed by a hash of
# uv.lock (which records pyproject.toml's dependencies: `uv lock --check` in scripts/test.sh
# fails when they differ) and uv's version, so clones share it, a dependency change builds a
# new one, and an edit of pyproject.toml's tool sections does not; the
# venvs of other keys this script built earlier are removed (each is ~7 GB). KFP_VENV=<dir>
# puts it elsewhere (and nothing is removed). Needs Python 3.12+: found on PATH, or through
# pyenv, by itself.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
UV_VERSION=0.13.9  # also pinned in pyproject.toml's test extra

find_python() {
  local c v
  for c in "${KFP_PYTHON:-}" python3.12 python3.13 python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | sort -V); do
      PYENV_VERSION=$v pyenv which python 2>/dev/null && return 0
    done
  fi
  return 1
}

hash=$({ cat "$here/uv.lock"; echo "uv $UV_VERSION"; } | sha256sum | cut -c1-12)
venvs=${XDG_CACHE_HOME:-$HOME/.cache}/llama-stack-provider-kfp
venv=${KFP_VENV:-$venvs/venv-$hash}

if [ ! -f "$venv/.complete" ]; then
  py=$(find_python) || { echo "setup: no Python >= 3.12 found (install one, or set KFP_PYTHON)" >&2; exit 1; }
  echo "setup: building $venv with $py ($("$py" --version)) from uv.lock" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "uv==$UV_VERSION" >&2
  # The locked set as a pip requirements file: pip installs it (and its wheel cache serves it).
  (cd "$here" && UV_PYTHON_DOWNLOADS=never "$venv/bin/uv" export --frozen --no-hashes \
      --no-emit-project --extra test --format requirements-txt -q) > "$venv/requirements.lock.txt"
  "$venv/bin/python" -m pip install -q -r "$venv/requirements.lock.txt" >&2
  "$venv/bin/python" -m pip install -q --no-deps -e "$here" >&2
  touch "$venv/.complete"
  if [ -z "${KFP_VENV:-}" ]; then
    for old in "$venvs"/venv-*; do
      [ "$old" != "$venv" ] && [ -f "$old/.complete" ] && { echo "setup: removing $old" >&2; rm -rf "$old"; }
    done
  fi
else
  echo "setup: reusing $venv" >&2
fi
# Point the editable install at this clone (cheap; needed when another clone built the venv),
# and put the clone's root on the path for the development harness (harness/: tests, bench,
# scripts), which is not part of the package.
"$venv/bin/python" -m pip install -q --no-deps -e "$here" >&2
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$here" > "$site/llama_stack_provider_kfp_harness.pth"
echo "$venv"
