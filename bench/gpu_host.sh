#!/usr/bin/env bash
# On a lent GPU machine (16 cores): the host pipeline's img/s with 8 and 16 reader threads
# (bench/host_pipeline.py, ImageNet-sized JPEGs), then the ImageNet-LT DiVE config end to
# end on TFDS mock data at 224x224 (host pipeline -> bf16 ResNeXt-50 on the GPU).
# Needs: .whl/ (ml-collections, tensorboardX), .gpu_site/ (tensorflow_datasets, grain,
# array_record and their pure-Python needs, copied from a Python 3.12 x86-64 venv).
EXTRA_PYTHONPATH=$PWD/.gpu_site source bench/gpu_common.sh
nproc | tee -a "$OUT/log.txt"
for t in 8 16; do
  timeout 90 python3 bench/host_pipeline.py --source jpeg --threads $t --steps 40 --data-dir none 2>>"$OUT/log.txt" | tail -1 | tee -a "$OUT/bench.jsonl"
done
log "ImageNet-LT DiVE on mock data, 224x224, batch 64"
timeout 200 python3 -m ltjax.main --config configs/imagenet_lt.py:method=dive,mock --workdir /tmp/il \
  --config.data.image_size=224 --config.data.resize_size=256 --config.train.batch_size=64 \
  --config.data.mock_examples=256 --config.run.host_threads=16 2>&1 | tr '\r' '\n' | grep -v 'step/s' | tail -12 | tee -a "$OUT/log.txt"
cp /tmp/il/teacher/metrics.jsonl "$OUT/teacher_metrics.jsonl" 2>/dev/null
cp /tmp/il/results.json "$OUT/results.json" 2>/dev/null
log done
