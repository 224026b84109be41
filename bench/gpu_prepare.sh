#!/usr/bin/env bash
# Here, before the call to a lent GPU machine: everything bench/gpu_reproduce.sh needs
# there, and the call itself, printed. Run from the repo root with everything committed:
#   bash bench/gpu_prepare.sh [IMB[,IMB...]]      (default 100; needs ../shared/tfds)
# 1. .whl/: wheels of the packages the machine lacks (ml-collections, tensorboardX;
#    jax, flax, optax, orbax are there), at the versions of this venv;
# 2. .carry/1, .carry/2, ...: the packed CIFAR-LT caches (bench/carry.py pack), each
#    folder at most 56 MiB; one call carries one folder (IF 100 fits in one, IF 1 needs two);
# 3. .carry/commit: HEAD and whether tracked files differ (no .git travels);
# 4. the size of what travels, and the call.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
IMB=${1:-100}
DATA_DIR=${DATA_DIR:-../shared/tfds}

rm -rf .whl && mkdir -p .whl
for pkg in ml-collections tensorboardX; do
  version=$($PY -c "import importlib.metadata as m; print(m.version('$pkg'))")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg==$version"
done
echo "wheels: $(ls .whl | tr '\n' ' ')"

$PY bench/carry.py pack --imb "$IMB" --data-dir "$DATA_DIR" --cache-dir .device_cache --out .carry
dirty=false
[[ -z $(git status --porcelain --untracked-files=no) ]] || dirty=true
echo "$(git rev-parse HEAD) $dirty" > .carry/commit
[[ $dirty == false ]] || echo "warning: tracked files differ from HEAD: the rows will say dirty: true" >&2

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
runs=$( [[ -d runs/reproduce ]] && du -sb runs/reproduce | cut -f1 || echo 0)
echo
for folder in .carry/[0-9]*; do
  size=$(du -sb "$folder" | cut -f1)
  total=$(( tree + whl + size + runs + 4096 ))
  echo "$folder: $(( size >> 20 )) MiB; a call carrying it with .whl$( [[ $runs != 0 ]] && echo ' and runs/reproduce'): $(( total >> 20 )) MiB of 64"
done
cat <<EOF

The call (device run; a folder of .carry per call, the caches' last folder with the run):
  command:   DEADLINE=420 bash bench/gpu_reproduce.sh       (ROWS=..., PARALLEL=..., EXTRA=...)
  carry:     [".whl", ".carry/1"$( [[ -d runs/reproduce ]] && echo ', "runs/reproduce"'), ".carry/commit"]
  timeout_s: 540
Afterwards, here: $PY bench/carry.py receive <files_at>   (results/ and runs/reproduce/),
then commit results/cifar_lt/*.json and render: $PY -m ltjax.report --reproduction results/cifar_lt --readme README.md
EOF
