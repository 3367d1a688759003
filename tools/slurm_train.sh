#!/usr/bin/env bash
# Training on a Slurm cluster: tools/slurm_train.sh PARTITION JOB_NAME CONFIG [GPUS] [train.py args]
# GPUS (default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5) and SRUN_ARGS
# may be set in the environment.
set -euo pipefail
usage() { echo "usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG [GPUS] [train.py options]" >&2; echo "$(basename "$0"): error: $1" >&2; exit 2; }
[ $# -ge 3 ] || usage "expected at least 3 arguments, got $#"
[ $# -lt 4 ] || [[ "$4" =~ ^[1-9][0-9]*$ ]] || usage "GPUS must be a positive integer, got '$4'"
[[ "$3" == *::* ]] || [ -f "$3" ] || usage "config file '$3' does not exist"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${4:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
TOOLS=$(dirname "$0")
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$TOOLS"/train.py "$CONFIG" --launcher slurm "${@:5}"
