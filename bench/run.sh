#!/usr/bin/env bash
# Run every benchmark and write bench/results/{*.json,summary.md,*.png}.
#   bash bench/run.sh --quick     # fewer repeats, into bench/results/quick/; ~9 min on 2 cores
#   bash bench/run.sh             # the full set, into bench/results/
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
py="$venv/bin/python"
cd "$here/bench"
if [ "${1:-}" = "--quick" ]; then
  export BENCH_RESULTS="$here/bench/results/quick"
  "$py" efficiency.py --repeats 3 --rows 96
  "$py" overhead.py --quick
  "$py" data_scale.py --repeats 2
  "$py" tracking.py --calls 200
  "$py" intree.py --repeats 2
  "$py" engines.py --repeats 3
  "$py" sharding.py --repeats 1
  "$py" stages.py --quick
  "$py" forgetting.py --quick
  "$py" loss_memory.py --steps 2 --pairs 3
else
  "$py" efficiency.py --repeats 5 --rows 96
  "$py" overhead.py --repeats 3
  "$py" data_scale.py --repeats 3
  "$py" tracking.py --calls 400
  "$py" intree.py --repeats 3
  "$py" engines.py --repeats 5
  "$py" sharding.py --repeats 2
  "$py" stages.py --repeats 3
  "$py" forgetting.py --seeds 5
  "$py" loss_memory.py
fi
"$py" report.py
