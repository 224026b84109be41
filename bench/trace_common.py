"""Pure-NumPy helpers shared by ``bench/torch_trace.py`` (PyTorch) and
``tests/test_torch_trace.py`` (ltjax, CI): the run's settings, the deterministic
initial weights and batches, the normalisation, and the name and layout mapping
between ltjax's flax variables and a PyTorch ``state_dict``.

No torch and no JAX here: CI imports this module.

Names are ltjax's flattened variable paths, ``params/backbone/BasicBlock_3/Conv_1/kernel``
or ``batch_stats/backbone/BatchNorm_0/var``; layouts are ltjax's (convolutions HWIO,
dense kernels ``(in, out)``). ``to_torch`` / ``from_torch`` convert to PyTorch's
(OIHW, ``(out, in)``).
"""
from __future__ import annotations

import numpy as np

# The traced run: ResNet-32 on CIFAR-shaped batches, SGD as PyTorch's, a warm-up of 4
# steps and a x0.1 decay at step 8 inside the 14 steps. lr 5e-4, not a training lr such as
# 0.1: on random batches of 16, float32 rounding (ReLU inputs within ~1e-7 of zero that
# land on the other side of the kink) is amplified from step to step, the more so the
# larger the lr. At lr 0.1 PyTorch float32 and PyTorch float64 themselves end 21% apart
# in loss after 14 steps, and two correct float32 implementations can be compared only
# where that amplification stays small (bench/README.md, "PyTorch trace").
RUN = dict(
    depth=32, width=16, num_classes=10, image_size=32,
    batch_size=16, steps_per_epoch=2, epochs=7,
    lr=5e-4, momentum=0.9, nesterov=False, weight_decay=2e-4,
    schedule='step', warmup_epochs=2.0, lr_boundaries=(4,), lr_decay=0.1,
    weight_seed=0, batch_seed=1,
    # ltjax's base_config().data.augment (CIFAR-10), scale 255.
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
    # PyTorch BatchNorm2d defaults, ltjax's layers.batch_norm (flax momentum 0.9).
    bn_momentum=0.1, bn_eps=1e-5,
)


def num_steps(run=RUN) -> int:
  return run['epochs'] * run['steps_per_epoch']


def layer_spec(run=RUN):
  """Every layer of ltjax's ``cifar_resnet`` Classifier with a linear head, in order:
  ``(ltjax prefix, torch prefix, kind, shape, positions)``; kind ``conv`` (shape HWIO),
  ``bn`` (shape ``(C,)``, ``positions`` = batch x H x W it normalises over), ``dense``
  (shape ``(in, out)``)."""
  depth, w, b, size = run['depth'], run['width'], run['batch_size'], run['image_size']
  spec = [('backbone/Conv_0', 'conv1', 'conv', (3, 3, 3, w), None),
          ('backbone/BatchNorm_0', 'bn1', 'bn', (w,), b * size * size)]
  n, cin, hw, i = (depth - 2) // 6, w, size, 0
  for stage in range(3):
    for block in range(n):
      cout = w * 2 ** stage
      if stage > 0 and block == 0:
        hw //= 2
      f, t = f'backbone/BasicBlock_{i}', f'layers.{i}'
      spec += [(f'{f}/Conv_0', f'{t}.conv1', 'conv', (3, 3, cin, cout), None),
               (f'{f}/BatchNorm_0', f'{t}.bn1', 'bn', (cout,), b * hw * hw),
               (f'{f}/Conv_1', f'{t}.conv2', 'conv', (3, 3, cout, cout), None),
               (f'{f}/BatchNorm_1', f'{t}.bn2', 'bn', (cout,), b * hw * hw)]
      cin, i = cout, i + 1
  spec.append(('head/Dense_0', 'fc', 'dense', (cin, run['num_classes']), None))
  return spec


def names(run=RUN):
  """``{ltjax flattened name: (torch state_dict name, layout)}`` for every parameter and
  BatchNorm running statistic; layout ``conv``, ``dense`` or ``vector``."""
  out = {}
  for f, t, kind, shape, _ in layer_spec(run):
    if kind == 'conv':
      out[f'params/{f}/kernel'] = (f'{t}.weight', 'conv')
    elif kind == 'dense':
      out[f'params/{f}/kernel'] = (f'{t}.weight', 'dense')
      out[f'params/{f}/bias'] = (f'{t}.bias', 'vector')
    else:
      out[f'params/{f}/scale'] = (f'{t}.weight', 'vector')
      out[f'params/{f}/bias'] = (f'{t}.bias', 'vector')
      out[f'batch_stats/{f}/mean'] = (f'{t}.running_mean', 'vector')
      out[f'batch_stats/{f}/var'] = (f'{t}.running_var', 'vector')
  return out


def to_torch(array, layout):
  """ltjax layout -> PyTorch: HWIO -> OIHW, ``(in, out)`` -> ``(out, in)``."""
  return _relayout(array, layout, (3, 2, 0, 1))


def from_torch(array, layout):
  """PyTorch layout -> ltjax: OIHW -> HWIO, ``(out, in)`` -> ``(in, out)``."""
  return _relayout(array, layout, (2, 3, 1, 0))


def _relayout(array, layout, conv_axes):
  array = np.asarray(array)
  if layout == 'conv':
    return np.ascontiguousarray(array.transpose(conv_axes))
  if layout == 'dense':
    return np.ascontiguousarray(array.T)
  return array


def initial_variables(run=RUN):
  """The initial weights, ltjax names and layout, float32: kaiming-normal (fan-in, ReLU
  gain: std sqrt(2 / fan_in)) convolution and dense kernels drawn in layer order from
  ``np.random.default_rng(weight_seed)``, zero dense bias, BatchNorm scale 1 and bias 0,
  running mean 0 and variance 1."""
  rng = np.random.default_rng(run['weight_seed'])
  out = {}
  for f, _, kind, shape, _ in layer_spec(run):
    if kind in ('conv', 'dense'):
      fan_in = int(np.prod(shape[:-1]))
      out[f'params/{f}/kernel'] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
      if kind == 'dense':
        out[f'params/{f}/bias'] = np.zeros(shape[-1], np.float32)
    else:
      out[f'params/{f}/scale'] = np.ones(shape, np.float32)
      out[f'params/{f}/bias'] = np.zeros(shape, np.float32)
      out[f'batch_stats/{f}/mean'] = np.zeros(shape, np.float32)
      out[f'batch_stats/{f}/var'] = np.ones(shape, np.float32)
  return out


def batches(run=RUN):
  """Every step's batch from ``np.random.default_rng(batch_seed)``: uint8 images
  ``[steps, B, 32, 32, 3]`` and int32 labels ``[steps, B]``."""
  rng = np.random.default_rng(run['batch_seed'])
  steps, b, s = num_steps(run), run['batch_size'], run['image_size']
  images = rng.integers(0, 256, (steps, b, s, s, 3), dtype=np.uint8)
  labels = rng.integers(0, run['num_classes'], (steps, b)).astype(np.int32)
  return images, labels


def normalize(images, run=RUN):
  """NumPy twin of ``ltjax.data.augment.normalize`` (``(x / 255 - mean) / std`` per
  channel, float32, NHWC); the test checks that the two agree."""
  x = np.asarray(images).astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(run['mean'], np.float32)) / np.asarray(run['std'], np.float32)
