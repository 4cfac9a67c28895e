#!/usr/bin/env bash
# The GPU suite (issue 22): every figure a device lease should bring back, in one command.
#
#   benchmarks/gpu_suite.sh [--cpu-smoke] [OUT_DIR]      (from the repository root)
#
# Prints, and appends to OUT_DIR/gpu_suite.md the moment each table is measured (a later timeout
# loses nothing before it): the bf16 matmul peak; the AAF loss, fused against current against
# the authors' stacked form, at (8,42,42,21), (8,90,90,19), (8,256,256,19); one dilated 3x3
# conv, native against space-to-batch; the PSPNet-ResNet-101 bf16 train step, ce against aaf, at
# crop 336 with both dilated-conv forms and at crop 720 with the faster one, with images/s, MFU
# against the measured peak, each program's memory and the device's peak; and the step's
# profile as text (kernel time by part of the step, top kernels). Planned to finish in under 8
# minutes on a fresh H200: each step variant is traced, compiled, timed and printed before the
# next (benchmarks/step_suite.py), no init program is compiled, and a persistent compilation cache (JAX_COMPILATION_CACHE_DIR, default
# /tmp/aaf_jax_cache) serves any program compiled twice. Each part has its own time limit and
# a part that fails is reported and skipped. Needs jax, flax, optax, ml_collections and clu;
# no TensorFlow.
#
# --cpu-smoke runs every part at tiny shapes on the CPU (2-3 minutes on 2 cores): CI runs it so
# the suite cannot rot between leases. Its figures are not speed figures, and its train steps
# use the 'xla' loss only (the Pallas interpreter inside a whole step takes minutes to compile;
# the loss part runs the fused kernels).
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  smoke=1
  shift
fi
out=${1:-gpu_suite_out}
mkdir -p "${out}"
report="${out}/gpu_suite.md"
: >"${report}"

export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/aaf_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
if ((smoke)); then
  export JAX_PLATFORMS=cpu
fi
python=${PYTHON:-python3}
failures=0

# part TITLE SECONDS SCRIPT ARGS...: run one part under its own limit, its output to the report.
part() {
  local title=$1 limit=$2
  shift 2
  printf '\n## %s\n\n`%s`\n\n' "${title}" "$*" | tee -a "${report}"
  local start=${SECONDS}
  timeout --signal=TERM --kill-after=10 "${limit}" "${python}" "$@" 2>&1 | tee -a "${report}"
  local status=${PIPESTATUS[0]}
  printf '\n(%s: exit %s after %s s)\n' "${title}" "${status}" "$((SECONDS - start))" |
    tee -a "${report}"
  if ((status != 0)); then
    failures=$((failures + 1))
  fi
}

"${python}" -c 'import jax, platform; print(f"# gpu_suite on {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, Python {platform.python_version()}, {platform.node()}")' |
  tee -a "${report}"

if ((smoke)); then
  part 'bf16 matmul peak' 60 benchmarks/matmul_peak.py --size 256 --repeats 3
else
  part 'bf16 matmul peak' 60 benchmarks/matmul_peak.py --size 8192 --repeats 20
fi
peak=$(sed -n 's/.*matmul: .* ms, \([0-9.]*\) TFLOP\/s.*/\1/p' "${report}" | tail -1)
peak=${peak:-0}

if ((smoke)); then
  part 'AAF loss, forward + backward' 240 benchmarks/affinity_loss.py --smoke
  part 'Dilated 3x3 conv, forward + backward' 120 benchmarks/dilated_conv.py --smoke
  part 'Train step: ce against aaf, both dilated-conv forms' 300 benchmarks/step_suite.py \
    --preset=pspnet_tiny --batch=2 --crops 32 48 --dtype=bfloat16 \
    --forms space_to_batch native --implementations xla --steps=1 --rounds=1 \
    --peak_tflops="${peak}" \
    --profile_dir="${TMPDIR:-/tmp}/aaf_jax_profile"
else
  part 'AAF loss, forward + backward' 150 benchmarks/affinity_loss.py --repeats 20 \
    --shapes 8,42,42,21 8,90,90,19 8,256,256,19
  part 'Dilated 3x3 conv, forward + backward' 60 benchmarks/dilated_conv.py --dtype=bfloat16 \
    --repeats 20
  part 'Train step: PSPNet-ResNet-101, ce against aaf' 360 benchmarks/step_suite.py \
    --preset=pspnet_resnet101 --batch=8 --dtype=bfloat16 --crops 336 720 \
    --forms space_to_batch native --implementations xla pallas --steps=5 --rounds=3 \
    --peak_tflops="${peak}" \
    --profile_dir="${TMPDIR:-/tmp}/aaf_jax_profile"
fi

printf '\ngpu_suite: %s part(s) failed; %s s in all\n' "${failures}" "${SECONDS}" | tee -a "${report}"
exit $((failures > 0))
