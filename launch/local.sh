#!/usr/bin/env bash
# Several ltjax processes on this machine, joined by jax.distributed: the same code path
# as a multi-host pod, for trying and testing it on one computer.
#
#   launch/local.sh NUM_PROCESSES --config configs/digits_lt.py --workdir runs/mp [more flags]
#
# Every process runs `python -m ltjax.main` with --coordinator_address, --num_processes
# and --process_id set. Environment: PYTHON (default python), PORT (coordinator port,
# default a free one), CPU_DEVICES (XLA CPU devices per process, default 2; ignored on
# GPU/TPU), LTJAX_GPUS_PER_PROCESS (on a GPU machine: give each process its own GPUs).
# Process 0 prints the progress and table; the others print only errors. If any process
# fails, the others are stopped and the script exits with its status.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 NUM_PROCESSES --config CONFIG --workdir DIR [ltjax.main flags]" >&2
  exit 2
fi
N="$1"; shift
PYTHON="${PYTHON:-python}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
CPU_DEVICES="${CPU_DEVICES:-2}"
GPUS="${LTJAX_GPUS_PER_PROCESS:-}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < N; i++)); do
  env_extra=()
  if [ -n "$GPUS" ]; then
    env_extra=(CUDA_VISIBLE_DEVICES="$(seq -s, $((i * GPUS)) $((i * GPUS + GPUS - 1)))")
  fi
  if [ "$i" -eq 0 ]; then
    env "${env_extra[@]}" "$PYTHON" -m ltjax.main --coordinator_address "localhost:$PORT" \
      --num_processes "$N" --process_id "$i" --cpu_devices "$CPU_DEVICES" "$@" &
  else
    env "${env_extra[@]}" "$PYTHON" -m ltjax.main --coordinator_address "localhost:$PORT" \
      --num_processes "$N" --process_id "$i" --cpu_devices "$CPU_DEVICES" "$@" >/dev/null &
  fi
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  # The first failure is the one to report; the processes stopped after it exit 143.
  wait "$pid" || { code=$?; [ "$status" -eq 0 ] && status=$code; cleanup; }
done
trap - EXIT
exit "$status"
