#!/usr/bin/env bash
# One prepared session on a lent GPU machine (run from the repo root there, see
# bench/README.md): step throughput of ltjax (float32, bf16) and PyTorch on ResNet-32,
# then full 200-epoch CIFAR-10-LT IF100 runs (CE, BSCE) from a carried .npz cache.
# Needs: .whl/ (ml-collections, tensorboardX wheels), .device_cache/ (the LT cache).
source bench/gpu_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" 2>&1 | tee -a "$OUT/log.txt"

PARTS=${PARTS:-"bench runs compile"}
if [[ $PARTS == *bench* ]]; then
log "step throughput"
for dt in float32 bfloat16; do
  for b in 128 512; do
    timeout 120 python3 bench/ltjax_step.py --batch $b --dtype $dt --runs 5 --steps 50 2>>"$OUT/log.txt" | tail -1 | tee -a "$OUT/bench.jsonl"
  done
done
for b in 128 512; do
  timeout 60 python3 bench/torch_step.py --device cuda --batch $b --runs 5 --steps 50 | tee -a "$OUT/bench.jsonl"
  timeout 60 python3 bench/torch_step.py --device cuda --batch $b --bf16 --runs 5 --steps 50 | tee -a "$OUT/bench.jsonl"
done
fi

if [[ $PARTS == *runs* ]]; then
for method in ce bsce; do
  log "200-epoch CIFAR-10-LT IF100 $method"
  start=$(date +%s)
  timeout ${RUN_TIMEOUT:-170} python3 -m ltjax.main --config configs/cifar_lt.py:dataset=cifar10,imb=100,method=$method \
    --workdir /tmp/run_$method --config.run.cache_dir=.device_cache --config.run.log_every_steps=200 \
    2>&1 | tr '\r' '\n' | grep -v 'step/s' | tail -15 | tee -a "$OUT/log.txt"
  log "$method wall $(( $(date +%s) - start )) s"
  cp /tmp/run_$method/$method/results.json "$OUT/${method}200_results.json" 2>/dev/null
  cp /tmp/run_$method/$method/metrics.jsonl "$OUT/${method}200_metrics.jsonl" 2>/dev/null
done
fi
if [[ $PARTS == *compile* ]]; then
log "torch.compile"
timeout 90 python3 bench/torch_step.py --device cuda --batch 128 --compile --runs 5 --steps 50 | tee -a "$OUT/bench.jsonl"
fi
log done
