#!/usr/bin/env bash
# Our OSFT against Training Hub's osft() on one GPU (bench/trainhub_osft.py), in two parts:
#
#   bench/gpu_trainhub.sh gather   HERE, before the device call: downloads the wheels the GPU
#                                  machine's image lacks into .trainhub-wheels/ (git-ignored),
#                                  for CPython 3.12 on linux x86_64, and checks that they and the
#                                  working tree fit the 64 MiB that may travel.
#   bench/gpu_trainhub.sh device   ON THE GPU MACHINE, in one call of the device tool:
#       run(command="bash bench/gpu_trainhub.sh device", carry=[".trainhub-wheels"], timeout_s=580)
#                                  installs the carried wheels offline into scratch folders,
#                                  runs the benchmark with a timeout, writes under $OUT:
#                                  trainhub_osft.json, trainhub_osft.png, run.log and the sides'
#                                  logs (copy the JSON and PNG to bench/results/ afterwards).
#
# Only this benchmark installs Training Hub, and only in the scratch folder on the device: it is
# no dependency of the project (it would raise our transformers floor to 4.57.6 and needs
# Python < 3.13).
#
# What the image has is KINDS.md's package list (/work/.library/device/KINDS.md): torch 2.11,
# transformers 5.17, peft, accelerate, safetensors, tokenizers, huggingface-hub, numpy, pandas,
# pyarrow, numba, llvmlite, matplotlib, aiohttp, aiofiles, rich, typer, xxhash, psutil, pyyaml,
# jinja2, regex, fsspec, wrapt, ... . What it lacks and the runs import is below, pinned (the
# versions pip resolved for training-hub 0.11.2 in Nov 2026); all are installed with --no-deps so
# that nothing of the image is replaced except typing-extensions (pydantic 2.14 needs >= 4.16).
# Not carried although declared: `attr` (a different package from attrs whose module would shadow
# attrs' `attr`), the CUDA extras (flash-attn, liger-kernel, mamba-ssm, kernels: TESTING=true
# makes mini-trainer use SDPA), and what transformers/huggingface-hub newer than the image's
# would pull (httpx2, kernels, tomlkit, truststore), nor trl (imported by Training Hub's LoRA
# paths only).
#
# The image's versions are known only from KINDS.md's list: if the device's import check fails
# on one it has (datasets 5.2 wants pyarrow >= 24 and fsspec <= 2026.9.0; the device part prints
# the image's versions first), gather again with it added, e.g.
#   TRAINHUB_EXTRA="pyarrow==26.0.1 fsspec==2026.9.0" bash bench/gpu_trainhub.sh gather
# (pyarrow's wheel is 52.5 MiB: with the rest about 60 MiB, still under 64).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS="$ROOT/.trainhub-wheels"
LIMIT=$((64 * 1024 * 1024))

# Our side: JobSpec is pydantic (the image has none).
# shellcheck source=bench/gpu_pydantic.sh
source "$ROOT/bench/gpu_pydantic.sh"
OURS=("${PYDANTIC_WHEELS[@]}")
# Training Hub's side: those, and what training_hub, mini_trainer and instructlab-training's
# data processing import.
HUB=(
  training-hub==0.11.2
  rhai-innovation-mini-trainer==0.9.0
  instructlab-training==0.16.2
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  deprecated==3.0.1
)

gather() {
  local py=${PYTHON:-python3}
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS/ours" "$WHEELS/hub"
  local platform=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux1_x86_64)
  "$py" -m pip download --no-deps "${platform[@]}" -d "$WHEELS/ours" "${OURS[@]}"
  # shellcheck disable=SC2086  # TRAINHUB_EXTRA: more NAME==VERSION words
  "$py" -m pip download --no-deps "${platform[@]}" -d "$WHEELS/hub" "${HUB[@]}" \
    ${TRAINHUB_EXTRA:-}
  local wheels tree total
  wheels=$(du -cb "$WHEELS"/*/*.whl | tail -1 | cut -f1)
  # What travels besides: tracked and untracked-not-ignored files.
  tree=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
  total=$((wheels + tree))
  echo
  ls -l "$WHEELS"/ours "$WHEELS"/hub
  awk -v n="$(ls "$WHEELS"/*/*.whl | wc -l)" -v w="$wheels" -v t="$tree" 'BEGIN {
    printf "wheels: %d files, %d bytes = %.2f MiB; working tree: %.2f MiB; " \
      "together %.2f MiB of 64 MiB\n", n, w, w / 2^20, t / 2^20, (w + t) / 2^20 }'
  if ((total > LIMIT)); then
    echo "too large: what travels exceeds 64 MiB; the comparison cannot run this way" >&2
    exit 1
  fi
  echo 'fits. Device call: run(command="bash bench/gpu_trainhub.sh device",' \
    'carry=[".trainhub-wheels"], timeout_s=580)'
}

device() {
  : "${OUT:?device: \$OUT is unset (this part runs on the GPU machine)}"
  if [ ! -d "$WHEELS/hub" ]; then
    echo "no $WHEELS: run 'bench/gpu_trainhub.sh gather' first and carry .trainhub-wheels" >&2
    exit 2
  fi
  device_run "$@" 2>&1 | tee "$OUT/run.log"
}

device_run() {
  local py=${PYTHON:-python3}
  local ours_site=/tmp/trainhub-bench/ours-site hub_site=/tmp/trainhub-bench/hub-site
  local work=/tmp/trainhub-bench/work
  rm -rf /tmp/trainhub-bench && mkdir -p "$ours_site" "$hub_site" "$work"
  echo "== $(date -u +%FT%TZ) $(uname -m), $("$py" --version), $(command -v "$py")"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
for n in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
          "huggingface-hub", "numpy", "pandas", "pyarrow", "fsspec", "numba", "llvmlite",
          "aiofiles", "rich", "typer", "py-cpuinfo", "xxhash", "psutil", "matplotlib",
          "typing-extensions", "pydantic"):
    try:
        print(f"image: {n} {version(n)}")
    except PackageNotFoundError:
        print(f"image: {n} MISSING")
EOF
  # Scratch environments: pip --target folders on PYTHONPATH, not a venv. The image's python3 is
  # itself a venv (/opt/torch/.venv), and a venv made from a venv with --system-site-packages sees
  # the base interpreter's packages, not torch; mini-trainer also launches `torchrun`, whose
  # workers must see the same packages: PYTHONPATH reaches them, a venv would need shims.
  local pip=("$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
    --disable-pip-version-check)
  "${pip[@]}" --target "$ours_site" "$WHEELS"/ours/*.whl
  "${pip[@]}" --target "$hub_site" "$WHEELS"/ours/*.whl "$WHEELS"/hub/*.whl
  # torchrun from the same interpreter, whatever PATH holds.
  mkdir -p /tmp/trainhub-bench/bin
  printf '#!/bin/sh\nexec %s -m torch.distributed.run "$@"\n' "$(command -v "$py")" \
    >/tmp/trainhub-bench/bin/torchrun
  chmod +x /tmp/trainhub-bench/bin/torchrun
  export PATH="/tmp/trainhub-bench/bin:$PATH"
  # Fail fast, before any training, if Training Hub's side does not import.
  TESTING=true PYTHONPATH="$hub_site" timeout 60 "$py" -c \
    'import training_hub, mini_trainer, instructlab.training.data_process; print("trainhub imports: ok")' \
    || echo "trainhub imports FAILED (the run below records the error)"
  # The sides time out on their own (2 x 120 s + 240 s); this is the backstop.
  local rc=0
  timeout --kill-after=20 490 "$py" "$ROOT/bench/trainhub_osft.py" --device cuda \
    --ours-path "$ours_site" --trainhub-path "$hub_site" --work "$work" \
    --results "$OUT/trainhub_osft.json" --plot "$OUT/trainhub_osft.png" "$@" || rc=$?
  for log in "$work"/logs/*.log; do
    [ -f "$log" ] && tail -c 3000000 "$log" >"$OUT/$(basename "$log")"
  done
  echo "== benchmark exit status $rc"
  return "$rc"
}

case "${1:-}" in
  gather) gather ;;
  device) shift; device "$@" ;;
  *) echo "usage: $0 gather | device [benchmark options]" >&2; exit 2 ;;
esac
