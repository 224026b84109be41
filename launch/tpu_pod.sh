#!/usr/bin/env bash
# ltjax on every worker of a Cloud TPU VM (a pod slice or a single host), one command.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE --config configs/imagenet_lt.py:method=dive \
#       --workdir /mnt/shared/runs/imagenet_lt_dive --config.run.data_dir gs://BUCKET/tensorflow_datasets
#
# 1. Creates the TPU VM NAME (e.g. v5litepod-32) in ZONE unless it exists
#    (RUNTIME, default v2-alpha-tpuv5-lite; PROJECT: gcloud's --project, default gcloud's own).
# 2. On every worker: clones REPO_URL at REF (default: this checkout's origin and HEAD) into
#    ~/ltjax, makes a Python 3.12 environment with uv (the TPU images ship an older Python),
#    installs ltjax and jax[tpu].
# 3. Runs `python -m ltjax.main --distributed ARGS` on all workers at once: jax.distributed
#    finds the other workers from the TPU metadata; process 0 prints the progress and table.
#
# Needs: gcloud, logged in, with TPU quota; the workdir on a filesystem every worker sees (a
# Filestore/NFS or gcsfuse mount: orbax writes one checkpoint from all workers); the TFDS
# data prepared in data_dir (gs:// works: TFDS reads Cloud Storage). DELETE=1 deletes the
# VM after the run.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NAME ZONE ACCELERATOR_TYPE [ltjax.main flags]" >&2
  exit 2
fi
NAME="$1"; ZONE="$2"; TYPE="$3"; shift 3
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
REPO_URL="${REPO_URL:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}"
if [ -z "$REPO_URL" ]; then
  echo "tpu_pod.sh: this checkout has no 'origin' remote to clone on the workers. Fix: set REPO_URL=<a URL the workers can clone> (and push REF there first)." >&2
  exit 2
fi
REF="${REF:-$(git -C "$(dirname "$0")/.." rev-parse HEAD)}"
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project "$PROJECT")
tpu() { gcloud compute tpus tpu-vm "$@" --zone "$ZONE" "${PROJECT_FLAG[@]}"; }

if ! tpu describe "$NAME" >/dev/null 2>&1; then
  tpu create "$NAME" --accelerator-type "$TYPE" --version "$RUNTIME"
fi
SETUP="set -e
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
[ -d ~/ltjax ] || git clone -q '$REPO_URL' ~/ltjax
cd ~/ltjax && git fetch -q origin && git checkout -q '$REF'
[ -d ~/ltjax-venv ] || uv venv -q --python 3.12 ~/ltjax-venv
uv pip install -q --python ~/ltjax-venv/bin/python -e . 'jax[tpu]'"
RUN="cd ~/ltjax && ~/ltjax-venv/bin/python -m ltjax.main --distributed $(printf '%q ' "$@")"
# Preemption: a preemptible or spot TPU VM gets SIGTERM; ltjax saves at one agreed step and
# exits 75 (or the VM disappears mid-run). Either way the run resumes from the workdir: on
# 75, or when the VM reports PREEMPTED (it is then deleted and created again), the command
# runs again, at most MAX_RESTARTS times (default 5).
restarts=0
while true; do
  tpu ssh "$NAME" --worker=all --command "$SETUP"
  status=0
  tpu ssh "$NAME" --worker=all --command "$RUN" || status=$?
  [ "$status" -eq 0 ] && break
  state="$(tpu describe "$NAME" --format='value(state)' 2>/dev/null || echo MISSING)"
  if [ "$status" -ne 75 ] && [ "$state" != PREEMPTED ] && [ "$state" != MISSING ]; then
    exit "$status"  # a failure that a rerun would repeat
  fi
  if [ "$restarts" -ge "${MAX_RESTARTS:-5}" ]; then
    echo "tpu_pod.sh: preempted (exit $status, VM $state) after $restarts restarts; rerun to resume" >&2
    exit 75
  fi
  restarts=$((restarts + 1))
  echo "tpu_pod.sh: preempted (exit $status, VM $state): restart $restarts" >&2
  if [ "$state" = PREEMPTED ] || [ "$state" = MISSING ]; then
    [ "$state" = PREEMPTED ] && tpu delete "$NAME" --quiet
    tpu create "$NAME" --accelerator-type "$TYPE" --version "$RUNTIME"
  fi
done
if [ "${DELETE:-0}" = 1 ]; then
  tpu delete "$NAME" --quiet
fi
