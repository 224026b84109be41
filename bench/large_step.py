"""Images/s of ltjax's train step on the large datasets' shapes: ResNet-50 or ResNeXt-50
(32x4d), 224x224, float32 or bf16 computation, the step the host pipeline feeds.

  python bench/large_step.py --model resnext50_32x4d --dtype bfloat16 --batch 256

Runs the trainer's real host-fed step (``make_train_step`` with a ``HostFeed``:
colour jitter and normalisation on the device, forward, BSCE loss, backward, SGD) on
a random uint8 global batch already on the device, so the number is the accelerator's
ceiling, not the input pipeline's (bench/host_pipeline.py measures that). Prints one
JSON line: compile seconds, median/min/max images/s of several timed runs.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo's ltjax and configs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--model', default='resnext50_32x4d')
  ap.add_argument('--dtype', default='bfloat16')
  ap.add_argument('--batch', type=int, default=256)
  ap.add_argument('--image-size', type=int, default=224)
  ap.add_argument('--classes', type=int, default=1000)
  ap.add_argument('--runs', type=int, default=3)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--devices', type=int, default=8, help='CPU devices (ignored on GPU)')
  args = ap.parse_args()

  import jax

  jax.config.update('jax_num_cpu_devices', args.devices)
  import numpy as np

  from configs import large

  from ltjax import config_lib, feeds, losses, parallel, train
  from ltjax.data import augment
  from ltjax.data.samplers import Sampler
  from ltjax.models import build_model

  c = large.large_config(config_lib.parse_args('method=bsce', large.LARGE_ARGS),
                       'imagenet_lt', args.model, epochs=90, ssd_epochs=135)
  c.model.dtype = args.dtype
  c.train.batch_size = args.batch
  mesh = parallel.make_mesh()
  counts = np.maximum((1280 * (5 / 1280) ** (np.arange(args.classes) / (args.classes - 1))).astype(int), 1)
  model = build_model(c.model, args.classes)

  def loss(outputs, labels, epoch):
    return losses.balanced_softmax_cross_entropy(outputs['logits'], labels, counts), {}

  phase = train.Phase('bench', model, loss, 'instance', c.train)
  sampler = Sampler('instance', int(counts.sum()), args.batch, tuple(int(n) for n in counts), 90)
  schedule = train.make_schedule(c.train, sampler.steps_per_epoch)
  tx = train.make_optimizer(c.train, schedule)
  aug = c.data.augment
  augment_fn = lambda key, images: augment.host_batch_augment(key, images, jitter=aug.jitter, mean=aug.mean, std=aug.std)
  s = args.image_size
  variables = model.init(jax.random.key(0), np.zeros((2, s, s, 3), np.float32), train=False)
  state = train.new_state(phase.model, variables, tx)
  rep, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state = jax.device_put(state, rep)
  rng = np.random.default_rng(0)
  batch = jax.device_put({'images': rng.integers(0, 256, (args.batch, s, s, 3), np.uint8),
                          'labels': rng.integers(0, args.classes, args.batch).astype(np.int32)}, shard)
  step = jax.jit(train.make_train_step(phase, schedule, feeds.HostFeed(sampler, augment_fn, mesh)),
                 in_shardings=(rep, shard, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
  key = jax.random.key(1)
  t = time.perf_counter()
  state, metrics = step(state, batch, key, {})
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  rates = []
  for _ in range(args.runs):
    t = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, batch, key, {})
    jax.block_until_ready(metrics)
    rates.append(args.steps * args.batch / (time.perf_counter() - t))
  print(json.dumps({'bench': 'large_step', 'model': args.model, 'dtype': args.dtype, 'batch': args.batch,
                    'image_size': s, 'devices': mesh.devices.size, 'platform': jax.devices()[0].platform,
                    'device_kind': jax.devices()[0].device_kind, 'compile_s': round(compile_s, 1),
                    'images_per_s': round(statistics.median(rates), 1), 'min': round(min(rates), 1),
                    'max': round(max(rates), 1), 'loss': float(metrics['loss'])}))


if __name__ == '__main__':
  main()
