# Sourced by bench/gpu.sh and bench/gpu_trainhub.sh: the wheels the GPU image lacks for the
# JobSpec (pydantic and its needs), at uv.lock's versions, in one place.
# shellcheck disable=SC2034  # used by the scripts that source it
PYDANTIC_WHEELS=(
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
)
