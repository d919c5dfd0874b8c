#!/usr/bin/env bash
# The main job, end to end: set up, make a tiny model, start the server, fine-tune, evaluate
# base vs tuned on held-out rows, register the tuned model (local MLflow registry), report.
#
#   bash scripts/demo.sh [--layout hf|meta] [extra args for run-training.py]
#
# Nothing is downloaded but Python packages: the model and the data are made here.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
layout=hf
if [ "${1:-}" = "--layout" ]; then layout=$2; shift 2; fi
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
py="$venv/bin/python"

work=${KFP_DEMO_DIR:-$here/.work/demo}
mkdir -p "$work"
[ -f "$work/tiny/$layout/tokenizer.model" ] || [ -f "$work/tiny/$layout/original/tokenizer.model" ] \
  || "$py" "$here/scripts/make-tiny-model.py" --out "$work/tiny" >/dev/null

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KFP_WORK_DIR="$work" KFP_STATE_DIR="$work/state"
"$venv/bin/llama" stack run "$here/run.yaml" --port "$port" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -fs "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.5
done
echo "server up on port $port (log: $work/server.log)"
start=$(date +%s%N)
# The tuned model goes into a local MLflow Model Registry (a SQLite store, no server to start),
# unless the arguments name another (--register <uri>).
register=(--register "sqlite:///$work/mlflow.db")
for a in "$@"; do [ "$a" = "--register" ] && register=(); done
"$py" "$here/scripts/run-training.py" --base-url "http://127.0.0.1:$port" --model "$work/tiny/$layout" \
  --plot "$work/loss.png" "${register[@]}" "$@"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "demo: fine-tune wall time $((ms / 1000)).$(printf %03d $((ms % 1000))) s (submit to completed, server already up)"
