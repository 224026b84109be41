"""Images/s of ltjax's own jitted train step (ResNet-32, CIFAR shapes, float32).

  python bench/ltjax_step.py --devices 8 --batch 128

Runs the trainer's real step (on-device sampling, augmentation, forward, backward,
SGD update) on random CIFAR-shaped data, and the evaluation forward. Prints one
JSON line: compile seconds, median/min/max images/s of several timed runs.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo's ltjax and configs


def train_flops_per_image(depth: int, width: int, num_classes: int = 10) -> float:
  """Analytic training FLOPs of a CIFAR ResNet on a 32x32 image: 2 FLOPs a
  multiply-add, forward convolutions and classifier counted, backward = 2 x forward
  (BatchNorm and element-wise work left out). ResNet-32: 68.9M MACs, 413 MFLOP."""
  n = (depth - 2) // 6
  macs = 32 * 32 * 3 * width * 9
  for stage, hw in enumerate((32, 16, 8)):
    c = width * 2 ** stage
    for b in range(n):
      cin = c // 2 if (stage and b == 0) else c
      macs += hw * hw * (cin + c) * c * 9
  macs += 4 * width * num_classes
  return 3 * 2 * macs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--devices', type=int, default=8, help='CPU devices (ignored on GPU)')
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--depth', type=int, default=32)
  ap.add_argument('--width', type=int, default=16)
  ap.add_argument('--runs', type=int, default=5, help='timed runs; the median is reported')
  ap.add_argument('--steps', type=int, default=10, help='steps per timed run')
  ap.add_argument('--eval-images', type=int, default=2048, help='0: skip the evaluation timing')
  ap.add_argument('--conv', default='xla', help='model.conv_impl: xla | taps | auto')
  ap.add_argument('--dtype', default='float32', help='float32 or bfloat16 (computation)')
  args = ap.parse_args()

  import jax
  jax.config.update('jax_num_cpu_devices', args.devices)
  import jax.numpy as jnp
  import numpy as np

  from configs import cifar_lt
  from ltjax import evaluate, feeds, parallel, recipes, train
  from ltjax.data import augment
  from ltjax.data.samplers import Sampler
  from ltjax.data.arrays import ArrayDataset

  config = cifar_lt.get_config()
  config.model.depth, config.model.width = args.depth, args.width
  config.model.dtype = args.dtype
  config.model.conv_impl = args.conv
  config.train.batch_size = args.batch
  rng = np.random.default_rng(0)
  n = 12406
  ds = ArrayDataset('bench', rng.integers(0, 255, (n, 32, 32, 3), np.uint8),
                    np.repeat(np.arange(10), -(-n // 10))[:n].astype(np.int32),
                    rng.integers(0, 255, (max(args.eval_images, 512), 32, 32, 3), np.uint8), np.zeros(max(args.eval_images, 512), np.int32), 10, 100.0,
                    [str(i) for i in range(10)])
  mesh = parallel.make_mesh(0 if jax.devices()[0].platform != 'cpu' else args.devices)
  phase = recipes.phases(config, ds)[0]
  sampler = Sampler('instance', n, args.batch, tuple(int(c) for c in ds.class_counts), 200)
  schedule = train.make_schedule(config.train, sampler.steps_per_epoch)
  tx = train.make_optimizer(config.train, schedule)
  aug = config.data.augment
  aug_fn = lambda k, x: augment.train_augment(k, x, pad=aug.pad, flip=aug.flip, mean=aug.mean, std=aug.std)
  variables = phase.model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
  rep = parallel.replicated(mesh)
  state = jax.device_put(train.new_state(phase.model, variables, tx), rep)
  data = jax.device_put({'images': ds.train_images, 'labels': ds.train_labels,
                         **Sampler.arrays(ds.train_labels, 10)}, rep)
  step = jax.jit(train.make_train_step(phase, schedule, feeds.DeviceFeed(sampler, aug_fn, mesh)),
                 in_shardings=(rep, rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
  key = jax.random.key(1)
  t = time.perf_counter()
  compiled = step.lower(state, data, key, {}).compile()
  compile_s = time.perf_counter() - t
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0))
  except Exception:  # not every backend reports costs
    flops = 0.0
  for _ in range(3):  # warm-up
    state, m = compiled(state, data, key, {})
  jax.block_until_ready(state)
  rates = []
  for _ in range(args.runs):
    t = time.perf_counter()
    for _ in range(args.steps):
      state, m = compiled(state, data, key, {})
    jax.block_until_ready(state)
    rates.append(args.steps * args.batch / (time.perf_counter() - t))

  normalize = lambda x: augment.normalize(x, aug.mean, aug.std)
  v = {'params': state.params, 'batch_stats': state.batch_stats}
  eval_batch = 512 if args.batch <= 512 else args.batch
  forward = evaluate.make_forward(phase.model, normalize)
  if args.eval_images:
    evaluate.predict(forward, v, evaluate.array_batches(ds.test_images[:eval_batch], eval_batch), mesh, eval_batch)  # compile
  eval_rates = []
  for _ in range(3 if args.eval_images else 0):
    t = time.perf_counter()
    evaluate.predict(forward, v, ds.test_batches(eval_batch), mesh, len(ds.test_images))
    eval_rates.append(len(ds.test_images) / (time.perf_counter() - t))
  print(json.dumps({'framework': 'ltjax', 'platform': jax.devices()[0].platform,
                    'devices': mesh.devices.size, 'batch': args.batch, 'depth': args.depth,
                    'dtype': args.dtype, 'conv': args.conv, 'xla_flops_per_step': flops,
                    'model_tflop_s': round(statistics.median(rates) * train_flops_per_image(args.depth, args.width) / 1e12, 2),
                    'compile_s': round(compile_s, 2),
                    'train_img_s': round(statistics.median(rates), 1),
                    'train_min': round(min(rates), 1), 'train_max': round(max(rates), 1),
                    'eval_img_s': round(statistics.median(eval_rates) if eval_rates else 0.0, 1),
                    'final_loss': float(m['loss'])}))


if __name__ == '__main__':
  main()
