"""Writes tests/fixtures/torchvision_resnets.npz: torchvision's ResNets on known weights.

  python bench/torchvision_fixture.py [--out tests/fixtures/torchvision_resnets.npz]

Needs torch and torchvision (its own venv, as bench/torch_twin.py's); the test that reads
the fixture (tests/models/test_pretrained.py) needs neither. For each network it records
torchvision's state-dict names and shapes (``spec``), and for those the test runs, the
pooled features and logits of ``model.eval()`` on two images: the weights and the
images come from ``random_state`` / ``random_images`` (NumPy, seeded), which the test
calls too, so no weights are stored.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, 'tests', 'fixtures', 'torchvision_resnets.npz')
FORWARD = ('resnet18', 'resnet50', 'resnext50_32x4d')  # run by the test
SPEC_ONLY = ('resnet101', 'resnet152')  # names and shapes only (the test loads them)
IMAGE_SIZE = 64
SEED = 0


def random_state(spec: list[tuple[str, tuple[int, ...]]], seed: int = SEED) -> dict[str, np.ndarray]:
  """Weights for the names and shapes of ``spec`` that keep a deep ResNet's activations
  finite: convolutions and fc N(0, 2 / fan-in), BatchNorm scales 0.5..1, biases and
  running means small, running variances 0.5..2."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in spec:
    if name.endswith('num_batches_tracked'):
      state[name] = np.asarray(7, np.int64)
    elif len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      state[name] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    elif name.endswith('running_var'):
      state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif name.endswith('weight'):
      state[name] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    else:  # bias, running_mean
      state[name] = rng.normal(0, 0.1, shape).astype(np.float32)
  return state


def random_images(seed: int = SEED) -> np.ndarray:
  """Two normalised NHWC images."""
  return np.random.default_rng(seed + 1).normal(0, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def main():
  import torch
  import torchvision

  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=DEFAULT_OUT)
  args = ap.parse_args()
  torch.set_num_threads(1)
  out = {'versions': np.asarray(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__}))}
  for name in FORWARD + SPEC_ONLY:
    model = getattr(torchvision.models, name)(weights=None)
    spec = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    out[f'{name}/spec'] = np.asarray(json.dumps(spec))
    if name in FORWARD:
      state = random_state(spec)
      model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
      model.eval()
      x = torch.from_numpy(random_images().transpose(0, 3, 1, 2).copy())
      with torch.no_grad():
        body = torch.nn.Sequential(*list(model.children())[:-1])  # up to the average pool
        features = body(x).flatten(1)
        logits = model(x)
      out[f'{name}/features'] = features.numpy()
      out[f'{name}/logits'] = logits.numpy()
      print(name, 'features', features.shape, 'mean |f|', float(features.abs().mean()))
  np.savez_compressed(args.out, **out)
  print('wrote', args.out, os.path.getsize(args.out), 'bytes')


if __name__ == '__main__':
  main()
