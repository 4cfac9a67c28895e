#!/bin/bash
# Submits an aaf-jax sweep to Slurm: a job array of SHARDS tasks (cluster/sweep.sbatch, task I
# runs --shard=I/SHARDS), then the summary job, which waits for every task to end
# (--dependency=afterany) and writes WORKDIR/summary.* whatever shards failed.
#
#   cluster/submit_sweep.sh [--cpu] [--sbatch=OPTION ...] SHARDS CONFIG WORKDIR [launch.py flags]
#   cluster/submit_sweep.sh --sbatch=--nodes=2 --sbatch=--time=48:00:00 8 \
#       configs/voc.py:stage1,aaf,pretrained=/shared/r101.msgpack /shared/sweeps/voc \
#       --config.data.data_dir=/shared/tfds "--sweep=loss.margin=[2.0,3.0]" --seeds=3
#
# --sbatch=OPTION goes to the array tasks' sbatch (their allocation: nodes, GPUs, time,
# partition); the summary job takes one CPU task and logs to WORKDIR/summary-JOBID.out. Run it
# from the repository root. Running the same command again resumes: finished runs are skipped.
# Prints the two job ids.

set -euo pipefail
usage="usage: cluster/submit_sweep.sh [--cpu] [--sbatch=OPTION ...] SHARDS CONFIG WORKDIR [launch.py flags ...]"
cpu=()
sbatch_options=()
while [[ "${1:-}" == --cpu || "${1:-}" == --sbatch=* ]]; do
  if [[ "$1" == --cpu ]]; then cpu=(--cpu); else sbatch_options+=("${1#--sbatch=}"); fi
  shift
done
if [[ $# -lt 3 || ! "$1" =~ ^[1-9][0-9]*$ || "$2" == -* || "$3" == -* ]]; then
  echo "error: expected SHARDS (a positive integer), CONFIG and WORKDIR; got: $*" >&2
  echo "${usage}" >&2
  exit 2
fi
shards=$1
shift
mkdir -p "$2"  # the summary job's log goes there
here=$(dirname "${BASH_SOURCE[0]}")
array=$(sbatch --parsable --array="0-$((shards - 1))" "${sbatch_options[@]}" \
  "${here}/sweep.sbatch" "${cpu[@]}" "$@")
array=${array%%;*}
summary=$(sbatch --parsable --dependency="afterany:${array}" --job-name=aaf-jax-sweep-summary \
  --nodes=1 --ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1 --time=1:00:00 \
  --output="$2/summary-%j.out" "${here}/sweep.sbatch" --summarize "${cpu[@]}" "$@")
summary=${summary%%;*}
echo "sweep array job ${array} (${shards} tasks), summary job ${summary}"
