#!/usr/bin/env bash
# Here, before the call to a lent GPU machine: everything bench/gpu_reproduce.sh needs
# there, and the call itself, printed. Run from the repo root with everything committed:
#   [ROWS='patterns'] bash bench/gpu_prepare.sh [IMB[,IMB...]]   (default 100; needs ../shared/tfds)
# 1. .whl/: wheels of the packages the machine lacks (ml-collections, tensorboardX;
#    jax, flax, optax, orbax are there), at the versions of this venv;
# 2. .carry/1, .carry/2, ...: the packed CIFAR-LT caches (bench/carry.py pack), each
#    folder at most 56 MiB; one call carries one folder (IF 100 fits in one, IF 1 needs two;
#    packed with IF 1, IF 100, 50 and 10 take their images from it and add about 6 KB each);
# 3. .carry/workdirs.tgz: the rows cut in an earlier session (runs/reproduce, received
#    with bench/carry.py receive), each phase's newest checkpoint, to resume there;
# 4. .carry/commit: HEAD and whether tracked files differ, and .carry/tree.sha256, the
#    tracked files' checksums (a .git there is not this checkout's);
# 5. the size of what travels, and the call.
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

# The packed caches, unless .carry holds exactly these factors already (a rerun after a
# commit or a call only refreshes the commit and the cut rows).
want=$(tr ',' '\n' <<<"$IMB" | sed 's/.*/cifar10_lt_if&_seed0.carry.json/' | sort | tr '\n' ' ')
have=$( { find .carry -name '*.carry.json' -printf '%f\n' 2>/dev/null || true; } | sort | tr '\n' ' ')
if [[ $want != "$have" ]]; then
  rm -rf .carry  # the caches themselves stay in .device_cache
  $PY bench/carry.py pack --imb "$IMB" --data-dir "$DATA_DIR" --cache-dir .device_cache --out .carry
else
  echo "packed caches: $have(there already)"
fi
rm -f .carry/workdirs.tgz
# ROWS (reproduce.py's patterns), as the call will have it: only those rows' workdirs and
# their bases travel; the other cut rows stay in runs/reproduce for a later call.
$PY bench/carry.py workdirs --workroot runs/reproduce --results results/cifar_lt --out .carry/workdirs.tgz \
  ${ROWS:+--rows "$ROWS"}
dirty=false
[[ -z $(git status --porcelain --untracked-files=no) ]] || dirty=true
echo "$(git rev-parse HEAD) $dirty" > .carry/commit
git ls-files -z | xargs -0 sha256sum > .carry/tree.sha256  # checked there
[[ $dirty == false ]] || echo "warning: tracked files differ from HEAD: the rows will say dirty: true" >&2

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
runs=$( [[ -f .carry/workdirs.tgz ]] && du -sb .carry/workdirs.tgz | cut -f1 || echo 0)
echo
folders=(.carry/[0-9]*)
last=${folders[-1]}
for folder in "${folders[@]}"; do
  size=$(du -sb "$folder" | cut -f1)
  if [[ $folder == "$last" ]]; then
    total=$(( tree + whl + size + runs + 4096 ))
    echo "$folder: $(( size >> 20 )) MiB; the run's call, with .whl$( [[ $runs != 0 ]] && echo ' and the cut rows'): $(( total >> 20 )) MiB of 64"
  else
    echo "$folder: $(( size >> 20 )) MiB; its call: $(( (tree + size) >> 20 )) MiB of 64"
  fi
done
runs_carry=$( [[ -f .carry/workdirs.tgz ]] && echo ', ".carry/workdirs.tgz"' || true)
echo
if (( ${#folders[@]} > 1 )); then
  echo "First, back to back (a carried folder stays on the machine while it is held, 30 s after a call):"
  for folder in "${folders[@]:0:${#folders[@]}-1}"; do
    echo "  command: 'ls -l $folder'   carry: [\"$folder\"]   timeout_s: 120"
  done
  echo "then the run:"
fi
cat <<EOF
The call (device run):
  command:   ${ROWS:+ROWS='$ROWS' }DEADLINE=500 bash bench/gpu_reproduce.sh       (ROWS=..., PARALLEL=..., EXTRA=...)
  carry:     [".whl", "$last"$runs_carry, ".carry/commit", ".carry/tree.sha256"]
  timeout_s: 580
Afterwards, here: $PY bench/carry.py receive <files_at>   (results/ and runs/reproduce/),
commit results/cifar_lt/*.json, render: $PY -m ltjax.report --reproduction results/cifar_lt --readme README.md,
and run this script again before the next call (the cut rows, the new commit).
EOF
