#!/usr/bin/env bash
# One prepared session on a lent GPU machine (repo root there): the full 200-epoch DiVE
# run on CIFAR-10-LT IF100 (teacher, then student) from a carried .npz cache, then the
# train-step throughput of the ImageNet-LT / iNaturalist backbones (bench/large_step.py).
# Needs: .whl/ (ml-collections, tensorboardX wheels), .device_cache/ (the LT cache).
source bench/gpu_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/log.txt"

log "DiVE, 200 epochs a phase, CIFAR-10-LT IF100"
start=$(date +%s)
timeout ${DIVE_TIMEOUT:-330} python3 -m ltjax.main --config configs/cifar_lt.py:dataset=cifar10,imb=100,method=dive \
  --workdir /tmp/dive --config.run.cache_dir=.device_cache --config.run.log_every_steps=500 \
  2>&1 | tr '\r' '\n' | grep -v 'step/s' | tail -14 | tee -a "$OUT/log.txt"
log "dive wall $(( $(date +%s) - start )) s"
for phase in teacher student; do
  cp /tmp/dive/$phase/results.json "$OUT/dive_${phase}_results.json" 2>/dev/null
done

log "large-model step throughput"
for spec in "resnext50_32x4d bfloat16" "resnext50_32x4d float32" "resnet50 bfloat16"; do
  set -- $spec
  timeout ${STEP_TIMEOUT:-75} python3 bench/large_step.py --model $1 --dtype $2 --batch 256 --runs 3 --steps 10 \
    2>>"$OUT/log.txt" | tail -1 | tee -a "$OUT/bench.jsonl"
done
log done
