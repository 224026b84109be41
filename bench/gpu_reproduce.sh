#!/usr/bin/env bash
# The CIFAR-LT reproduction on a lent GPU machine, in one call (run from the repo root
# there; prepared here by bench/gpu_prepare.sh, rehearsed on a CPU with SMOKE=1, see
# bench/README.md "On a lent GPU"):
#   1. the carried wheels into /tmp/site (bench/gpu_common.sh), versions and GPU logged;
#   2. the carried caches (.carry/N/, bench/carry.py pack) unpacked into .device_cache/,
#      and the rows cut in an earlier session (.carry/workdirs.tgz) put back in place;
#   3. bench/reproduce.py runs the rows PARALLEL at a time, side by side on the one GPU;
#      at DEADLINE seconds it cuts the running rows (SIGTERM: each saves a checkpoint);
#   4. on the way out, also after an error or a SIGTERM to this script, bench/carry.py
#      send-back: $OUT/results.tgz (row JSONs, logs, metrics) and $OUT/workdirs.tgz (the
#      unfinished rows, newest checkpoints; in pieces over 15.5 MiB), which
#      `carry.py receive` unpacks here.
# Settings (environment): ROWS (patterns, default 'cifar10_if100_*_s0'), PARALLEL (default
# 6 where CUDA MPS runs, else 2 on a GPU, 1 on a CPU: without MPS the rows' processes take turns on the GPU, so
# more of them only slow each down), MPS (1: try to start it, 0: don't),
# DEADLINE (seconds, 420: with timeout_s 540 that leaves 2 minutes for the set-up, the
# rows' 30 s stop and the send-back), EXTRA (more ltjax flags, space-separated, e.g.
# '--config.run.eval_every_epochs=5' over the default 10), SMOKE=1 (smoke rows into results/smoke and
# runs/reproduce_smoke: the CPU rehearsal).
source bench/gpu_common.sh
ROWS=${ROWS:-'cifar10_if100_*_s0'} PARALLEL=${PARALLEL:-auto} DEADLINE=${DEADLINE:-420}
if [[ ${SMOKE:-0} == 1 ]]; then
  RESULTS=results/smoke WORKROOT=runs/reproduce_smoke SMOKE_FLAG=--smoke
else
  RESULTS=results/cifar_lt WORKROOT=runs/reproduce SMOKE_FLAG=
fi
# Test-set evaluations every 10 epochs: the rows' numbers stay last-epoch; the test-selected
# best epoch lands beside them (best_test_selected) as the references' own reporting, the
# like-for-like evidence when a row falls short (about 1 s an evaluation on a GPU).
EXTRA_FLAGS=(--extra=--config.run.log_every_steps=200 --extra=--config.run.eval_every_epochs=10)
read -ra extra <<<"${EXTRA:-}"
for flag in "${extra[@]}"; do EXTRA_FLAGS+=("--extra=$flag"); done

finish() {
  local status=$?
  [[ -n ${SMI:-} ]] && kill "$SMI" 2>/dev/null
  (( ${MPS_ON:-0} )) && echo quit | "$mps_control" 2>/dev/null
  log "send back"
  python3 bench/carry.py send-back --workroot "$WORKROOT" --results "$RESULTS" --out "$OUT" 2>&1 | tee -a "$OUT/log.txt"
  local sent=${PIPESTATUS[0]}
  log "done: exit status $status (0: all done, 2: rows cut at the deadline, 1: a row failed), send-back $sent"
  (( sent == 0 )) || exit 3
  exit "$status"
}
trap finish EXIT
pid=
trap 'log "SIGTERM: the rows stop and save, then the send-back"; [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null' TERM

# The commit is the one gpu_prepare.sh wrote beside the caches: a .git there, if any, is
# not this checkout's (one lease's rows said the session's first commit, dirty, while
# the tree was a later commit's exactly). The tree is checked against that commit's
# files (.carry/tree.sha256): a file that differs makes the rows dirty.
if [[ -f .carry/commit ]]; then
  read -r LTJAX_COMMIT LTJAX_DIRTY < .carry/commit
  if [[ -f .carry/tree.sha256 ]] && ! differ=$(sha256sum --quiet -c .carry/tree.sha256 2>&1); then
    log "tracked files differ from commit $LTJAX_COMMIT: $(tr '\n' ' ' <<<"$differ")"
    LTJAX_DIRTY=true
  fi
  export LTJAX_COMMIT LTJAX_DIRTY
fi
log "commit ${LTJAX_COMMIT:-$(git rev-parse HEAD 2>/dev/null)} rows '$ROWS' parallel $PARALLEL deadline $DEADLINE s"
mkdir -p "$WORKROOT"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
  # into results.tgz ($OUT takes 8 files)
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 >"$WORKROOT/gpu.csv" 2>&1 &
  SMI=$!
fi
python3 -c "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'tensorboardX', 'numpy')), sep=', ')" 2>&1 | tee -a "$OUT/log.txt"

# CUDA MPS: the rows' kernels run on the GPU at the same time. ResNet-32's kernels at batch
# 128 fill few of the 132 multiprocessors, and without MPS the processes' contexts take
# turns, so N rows side by side each run about 1/N as fast. Kept only if a JAX probe runs
# under it; otherwise the daemon is stopped and the rows run without it.
MPS_ON=0
mps_control=$(command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin/nvidia-cuda-mps-control 2>/dev/null || true)
if [[ ${MPS:-1} == 1 && -n $mps_control ]]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ltjax-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/ltjax-mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if "$mps_control" -d && timeout 60 python3 -c "import jax, jax.numpy as jnp; print('MPS probe:', jax.devices(), float(jnp.ones(8).sum()))" 2>&1 | tee -a "$OUT/log.txt" && [[ ${PIPESTATUS[0]} == 0 ]]; then
    MPS_ON=1
  else
    echo quit | "$mps_control" 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    cat /tmp/ltjax-mps/log/*.log 2>/dev/null | tail -5 | tee -a "$OUT/log.txt"
  fi
fi
if [[ $PARALLEL == auto ]]; then
  if (( MPS_ON )); then PARALLEL=6; elif command -v nvidia-smi >/dev/null; then PARALLEL=2; else PARALLEL=1; fi
fi
log "CUDA MPS: $( (( MPS_ON )) && echo on || echo "off (${mps_control:-no nvidia-cuda-mps-control})"); rows side by side: $PARALLEL"

log "unpack the carried caches"
python3 bench/carry.py unpack .carry --into .device_cache 2>&1 | tee -a "$OUT/log.txt"
[[ ${PIPESTATUS[0]} == 0 ]] || { log "no caches: nothing run"; exit 1; }
if [[ -f .carry/workdirs.tgz ]]; then
  log "the rows carried from earlier (cut, or a base a row refits on): $(tar tzf .carry/workdirs.tgz | cut -d/ -f3 | sort -u | tr '\n' ' ')"
  tar xzf .carry/workdirs.tgz || exit 1
fi

log "reproduce"
# In the background, so that a SIGTERM to this script reaches the trap at once (bash runs
# a trap only after its foreground command) and is passed on: the rows stop and save.
python3 bench/reproduce.py $SMOKE_FLAG --rows "$ROWS" --parallel "$PARALLEL" --timeout "$DEADLINE" \
  --cache-dir .device_cache --results "$RESULTS" --workroot "$WORKROOT" "${EXTRA_FLAGS[@]}" \
  > >(tee -a "$OUT/log.txt") 2>&1 &
pid=$!
status=
while [[ -z $status ]]; do
  wait "$pid"; rc=$?
  kill -0 "$pid" 2>/dev/null || status=$rc  # still running: the wait was cut by the trap
done
python3 bench/reproduce.py $SMOKE_FLAG --dry-run --rows "$ROWS" --cache-dir .device_cache \
  --results "$RESULTS" --workroot "$WORKROOT" 2>&1 | grep -E '^ *[0-9]+\.' | tee -a "$OUT/log.txt"
exit "$status"
