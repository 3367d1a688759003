#!/usr/bin/env bash
# Distributed testing with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT. Works without CUDA (gloo).
set -euo pipefail
usage() { echo "usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]" >&2; echo "$(basename "$0"): error: $1" >&2; exit 2; }
[ $# -ge 3 ] || usage "expected at least 3 arguments, got $#"
[[ "${3}" =~ ^[1-9][0-9]*$ ]] || usage "GPUS must be a positive integer (the number of processes), got '${3}'"
[[ "$1" == *::* ]] || [ -f "$1" ] || usage "config file '$1' does not exist"
# a URL or a zoo name (repvgg-a0) is fetched by test.py, once per node
[[ "$2" == *://* ]] || { [[ "$2" != */* ]] && [[ "$2" != *.* ]]; } || [ -f "$2" ] || \
    usage "checkpoint '$2' does not exist"
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
TOOLS=$(dirname "$0")
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$TOOLS"/test.py "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
