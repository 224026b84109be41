# Sourced by the bench/gpu_*.sh scripts on a lent GPU machine: the carried wheels
# installed into /tmp/site, PYTHONPATH (plus any EXTRA_PYTHONPATH), $OUT and log().
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
