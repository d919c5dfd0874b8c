#!/usr/bin/env bash
# Set up (or reuse) the virtualenv, then run the whole test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
# uv.lock still satisfies pyproject.toml (not "newest": nothing is upgraded by this check).
UV_PYTHON_DOWNLOADS=never "$venv/bin/uv" lock --check --python "$venv/bin/python" -q
"$venv/bin/ruff" check src scripts tests bench harness
"$venv/bin/ruff" format --check src scripts tests bench harness
# The tiers' import rules (pyproject.toml [tool.importlinter]) and the types of the seams.
"$venv/bin/lint-imports"
"$venv/bin/mypy" src
exec "$venv/bin/python" -m pytest "$@"
