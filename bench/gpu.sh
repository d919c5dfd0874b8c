#!/usr/bin/env bash
# Training throughput of both engines on one GPU (bench/gpu_train.py: its docstring says what is
# measured and how), in two parts, as bench/gpu_trainhub.sh:
#
#   bash bench/gpu.sh gather      HERE, before the device call: downloads the wheels the GPU
#                                 machine's image lacks into .gpu-wheels/ (git-ignored), for
#                                 CPython 3.12 on linux x86_64, checks that they and the working
#                                 tree fit the 64 MiB that may travel, and trains the dry run
#                                 (llama-3.2-1b, both engines) on an interpreter that sees only
#                                 the image's packages (bench/gpu_image_packages.txt, linked from
#                                 this venv) and those wheels: what the training step imports
#                                 must be there. Run it with the project's venv (PYTHON=...).
#   bash bench/gpu.sh [--with-tests] [gpu_train.py options]
#                                 ON THE GPU MACHINE, in one call of the device tool:
#       run(command="bash bench/gpu.sh --with-tests", carry=[".gpu-wheels"], timeout_s=540)
#                                 installs the carried wheels offline into scratch folders,
#                                 runs the benchmark (under 5 minutes on one H200), and with
#                                 --with-tests then `pytest -m gpu tests/test_gpu.py` (2 minutes
#                                 at most). Writes under $OUT (else bench/results/):
#                                 gpu_train.json (rewritten after each run), gpu_train.md,
#                                 gpu_train.log, gpu_tests.log. Copy the first two to
#                                 bench/results/ afterwards.
#   bash bench/gpu.sh --dry-run   ANYWHERE (CI): every configuration scaled down (2 layers,
#                                 width 64) for two steps on the CPU; the JSON it writes is
#                                 validated, so it fails when a configuration does.
#
# Without CUDA (and without --dry-run) it says so and exits 0.
#
# Two scratch sites: Hugging Face runs see only pydantic and peft 0.18.1 (uv.lock's: peft >= 0.19
# refuses torchao 0.15, FACTS.md), which shows that engine needs nothing more; torchtune runs see
# those and torchtune with what it imports. The image's own versions (KINDS.md: torch 2.11,
# transformers 5.17, huggingface-hub, pyarrow, pandas, fsspec, ...) are used as they are; the
# device part prints them first. If the import check there fails on one (datasets 5.2 wants
# pyarrow >= 24 and fsspec <= 2026.9.0), gather again with a fitting version added, e.g.
#   GPU_BENCH_EXTRA="fsspec==2026.9.0" bash bench/gpu.sh gather
# (pyarrow itself cannot travel: its wheel is 52 MiB; take an older datasets instead).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS="$ROOT/.gpu-wheels"
LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}

# Both sites: JobSpec is pydantic (the image has none); peft as uv.lock pins it.
# shellcheck source=bench/gpu_pydantic.sh
source "$ROOT/bench/gpu_pydantic.sh"
OURS=("${PYDANTIC_WHEELS[@]}" peft==0.18.1)
# The torchtune site adds torchtune and what its training path imports that the image lacks
# (uv.lock's versions). torchtune also declares kagglehub and blobfile: its model downloads
# use them, the training step does not (gather's import check trains without them).
TORCHTUNE=(
  torchtune==0.6.1
  torchao==0.15.0
  omegaconf==2.4.0
  torchdata==0.11.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
)

gather() {
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS/ours" "$WHEELS/torchtune"
  local platform=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux1_x86_64)
  "$PY" -m pip download -q --no-deps "${platform[@]}" -d "$WHEELS/ours" "${OURS[@]}"
  # shellcheck disable=SC2086  # GPU_BENCH_EXTRA: more NAME==VERSION words
  "$PY" -m pip download -q --no-deps "${platform[@]}" -d "$WHEELS/torchtune" "${TORCHTUNE[@]}" \
    ${GPU_BENCH_EXTRA:-}
  local wheels tree
  wheels=$(du -cb "$WHEELS"/*/*.whl | tail -1 | cut -f1)
  # What travels besides: tracked and untracked-not-ignored files.
  tree=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
  ls -l "$WHEELS"/ours "$WHEELS"/torchtune
  awk -v n="$(ls "$WHEELS"/*/*.whl | wc -l)" -v w="$wheels" -v t="$tree" 'BEGIN {
    printf "wheels: %d files, %.2f MiB; working tree: %.2f MiB; together %.2f MiB of 64 MiB\n",
      n, w / 2^20, t / 2^20, (w + t) / 2^20 }'
  if ((wheels + tree > LIMIT)); then
    echo "too large: what travels exceeds 64 MiB" >&2
    exit 1
  fi
  check_imports
  echo 'ready. Device call: run(command="bash bench/gpu.sh --with-tests",' \
    'carry=[".gpu-wheels"], timeout_s=540)'
}

# The sites from the carried wheels: $1/hf-site and $1/torchtune-site.
install_sites() {
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
    --disable-pip-version-check)
  rm -rf "$1" && mkdir -p "$1"
  "${pip[@]}" --target "$1/hf-site" "$WHEELS"/ours/*.whl
  "${pip[@]}" --target "$1/torchtune-site" "$WHEELS"/ours/*.whl "$WHEELS"/torchtune/*.whl
}

# The dry run on an interpreter without site-packages (-S) whose path holds this venv's copies
# of the image's packages only, then the carried sites: a package the training step imports
# that is in neither fails here, not on the GPU machine.
check_imports() {
  local check=/tmp/gpu-bench-check
  install_sites "$check"
  # httpx2 and its needs: what this venv's huggingface-hub 2.x imports (the image's 1.33 does not).
  "$PY" "$ROOT/bench/gpu_image_site.py" "$ROOT/bench/gpu_image_packages.txt" "$check/image-site" \
    httpx2 httpcore2 truststore
  echo "== dry run with the image's packages and the carried wheels only (python -S)"
  PYTHONPATH="$check/image-site" timeout 600 "$PY" -S "$ROOT/bench/gpu_train.py" --dry-run \
    --models llama-3.2-1b --results "$check/results" --work "$check/work" \
    --hf-path "$check/hf-site" --torchtune-path "$check/torchtune-site"
  echo "== the gpu tests collect there too"
  (cd "$ROOT" && PYTHONPATH="$ROOT/src:$ROOT:$ROOT/tests:$check/torchtune-site:$check/image-site" \
    timeout 300 "$PY" -S -m pytest -p no:cacheprovider -q --collect-only -m gpu \
    tests/test_gpu.py | tail -3)
}

device() {
  local out=${OUT:-$ROOT/bench/results}
  if [[ " $* " != *" --dry-run "* ]] \
    && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA device here (or no torch for $PY), nothing measured;" \
      "bash bench/gpu.sh --dry-run checks every configuration scaled down on the CPU"
    exit 0
  fi
  mkdir -p "$out"
  device_run "$@" 2>&1 | tee "$out/gpu_train.log"
  return "${PIPESTATUS[0]}"
}

device_run() {
  local out=${OUT:-$ROOT/bench/results} tests=0 args=() rc=0
  for a in "$@"; do
    if [ "$a" = --with-tests ]; then tests=1; else args+=("$a"); fi
  done
  "$PY" "$ROOT/bench/gpu_train.py" --parse-only "${args[@]}"
  echo "== $(date -u +%FT%TZ) $(uname -m), $("$PY" --version), $(command -v "$PY")"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || true
  local sites=/tmp/gpu-bench hf=() tt=()
  if [ -d "$WHEELS/ours" ]; then
    install_sites "$sites"
    hf=(--hf-path "$sites/hf-site")
    tt=(--torchtune-path "$sites/torchtune-site")
    "$PY" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for n in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
          "huggingface-hub", "tiktoken", "numpy", "pandas", "pyarrow", "fsspec", "xxhash",
          "requests", "pyyaml", "typing-extensions", "pydantic"):
    try:
        print(f"image: {n} {version(n)}")
    except PackageNotFoundError:
        print(f"image: {n} MISSING")
EOF
    PYTHONPATH="$sites/torchtune-site" timeout 120 "$PY" -c \
      'import pydantic, peft, torchtune, torchao, datasets, omegaconf, torchdata; print("torchtune site imports: ok")' \
      || echo "torchtune site imports FAILED (its runs will record the error)"
  else
    echo "no $WHEELS (bash bench/gpu.sh gather, then carry .gpu-wheels): using what is installed"
  fi
  "$PY" "$ROOT/bench/gpu_train.py" --results "$out" "${hf[@]}" "${tt[@]}" "${args[@]}" || rc=$?
  echo "== benchmark exit status $rc"
  if ((tests)) && "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    (cd "$ROOT" && PYTHONPATH="$ROOT/src:$ROOT:$ROOT/tests:$sites/torchtune-site" \
      timeout --kill-after=10 120 "$PY" -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py \
      -q -rs 2>&1 | tee "$out/gpu_tests.log") || true
  fi
  return "$rc"
}

case "${1:-}" in
  gather) gather ;;
  --dry-run) exec "$PY" "$ROOT/bench/gpu_train.py" "$@" ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}"; exec "$PY" "$ROOT/bench/gpu_train.py" --help ;;
  *) device "$@" ;;
esac
