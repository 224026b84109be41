#!/usr/bin/env bash
# Several ltjax processes on this machine, joined by jax.distributed: the same code path
# as a multi-host pod, for trying and testing it on one computer.
#
#   launch/local.sh NUM_PROCESSES --config configs/digits_lt.py --workdir runs/mp [more flags]
#
# Every process runs `python -m ltjax.main` with --coordinator_address, --num_processes
# and --process_id set. Environment: PYTHON (default python), PORT (coordinator port,
# default a free one), CPU_DEVICES (XLA CPU devices per process, default 2; ignored on
# GPU/TPU), LTJAX_GPUS_PER_PROCESS (on a GPU machine: give each process its own GPUs),
# MAX_RESTARTS (default 3).
# Process 0 prints the progress and table; the others print only errors. If any process
# fails, the others are stopped and the script exits with its status.
#
# Preemption: a SIGTERM or SIGINT to this script is passed to every process; they save a
# checkpoint at one agreed step and exit 75, and so does the script (run it again to
# resume). When the processes themselves are preempted (a SIGTERM that reached them, not
# this script), the script reruns them until the run finishes, at most MAX_RESTARTS times.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 NUM_PROCESSES --config CONFIG --workdir DIR [ltjax.main flags]" >&2
  exit 2
fi
N="$1"; shift
PYTHON="${PYTHON:-python}"
CPU_DEVICES="${CPU_DEVICES:-2}"
GPUS="${LTJAX_GPUS_PER_PROCESS:-}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
EXIT_PREEMPTED=75
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])'; }

pids=()
stopping=0
signal_all() { for pid in "${pids[@]}"; do kill -"$1" "$pid" 2>/dev/null || true; done; }
stop() { stopping=1; signal_all TERM; }  # the processes save and exit 75
trap stop INT TERM
trap 'signal_all KILL' EXIT  # this script ending for any other reason takes them along

run_once() {
  local port="${PORT:-$(free_port)}" i pid code
  pids=()
  for ((i = 0; i < N; i++)); do
    env_extra=()
    if [ -n "$GPUS" ]; then
      env_extra=(CUDA_VISIBLE_DEVICES="$(seq -s, $((i * GPUS)) $((i * GPUS + GPUS - 1)))")
    fi
    if [ "$i" -eq 0 ]; then
      env "${env_extra[@]}" "$PYTHON" -m ltjax.main --coordinator_address "localhost:$port" \
        --num_processes "$N" --process_id "$i" --cpu_devices "$CPU_DEVICES" "$@" &
    else
      env "${env_extra[@]}" "$PYTHON" -m ltjax.main --coordinator_address "localhost:$port" \
        --num_processes "$N" --process_id "$i" --cpu_devices "$CPU_DEVICES" "$@" >/dev/null &
    fi
    pids+=("$!")
  done
  status=0
  for pid in "${pids[@]}"; do
    # A trapped signal interrupts `wait` (status > 128) while the process still runs:
    # wait again until it has saved and exited.
    while true; do
      code=0
      wait "$pid" || code=$?
      kill -0 "$pid" 2>/dev/null || break
    done
    # The first failure is the one to report; the others are stopped after it.
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$code
      [ "$code" -ne "$EXIT_PREEMPTED" ] && signal_all TERM
    fi
  done
}

restarts=0
while true; do
  run_once "$@"
  if [ "$status" -eq "$EXIT_PREEMPTED" ] && [ "$stopping" -eq 0 ] && [ "$restarts" -lt "$MAX_RESTARTS" ]; then
    restarts=$((restarts + 1))
    echo "local.sh: the run was preempted (exit $EXIT_PREEMPTED); restart $restarts of $MAX_RESTARTS" >&2
    continue
  fi
  break
done
trap - EXIT
exit "$status"
