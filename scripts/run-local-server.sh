#!/usr/bin/env bash
# Start the llama-stack server with this provider (local mode) in the foreground.
#   scripts/run-local-server.sh [PORT]      (default $LLAMA_STACK_PORT or 8321)
# Work and state directories default under ~/.llama; override with KFP_WORK_DIR/KFP_STATE_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
port=${1:-${LLAMA_STACK_PORT:-8321}}
exec "$venv/bin/llama" stack run "$here/run.yaml" --port "$port"
