"""Shared by the recipe tests (imported by name: a second conftest.py would clash with
tests/conftest.py in pytest's import mode): the embedded dataset, one train step built as the
trainer builds it, and exact comparison of variable trees."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_lt
from ltjax import feeds, parallel, train
from ltjax.data import augment, registry
from ltjax.data.samplers import Sampler


@pytest.fixture(scope='module')
def digits():
  return registry.load(digits_lt.get_config('smoke'))


def same(a, b):
  """Every leaf of two variable trees bit-identical."""
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def make_step(phase, dataset, config, batch_size, num_devices=0):
  """``(step, tx, data)``: the un-jitted train step of ``phase`` (instance sampling,
  the config's augmentation and schedule), its optimizer, and the dataset arrays."""
  mesh = parallel.make_mesh(num_devices)
  sampler = Sampler(kind='instance', num_examples=len(dataset.train_labels), batch_size=batch_size,
                    class_counts=tuple(int(c) for c in dataset.class_counts), total_epochs=1)
  schedule = train.make_schedule(config.train, sampler.steps_per_epoch)
  tx = train.make_optimizer(config.train, schedule)
  aug = config.data.augment
  aug_fn = lambda k, x: augment.train_augment(k, x, pad=aug.pad, flip=aug.flip, mean=aug.mean, std=aug.std,
                                              scale=dataset.pixel_scale)
  data = {'images': jnp.asarray(dataset.train_images), 'labels': jnp.asarray(dataset.train_labels),
          **Sampler.arrays(dataset.train_labels, dataset.num_classes)}
  return train.make_train_step(phase, schedule, feeds.DeviceFeed(sampler, aug_fn, mesh)), tx, data


def predict_matches_the_run(workdir, tmp_path, phase='', head=''):
  """``ltjax.predict`` on the digits run's test images written as 8-bit PNG files (the embedded
  digits, 0..16 scaled to 0..255) gives the per-class accuracy and NLL of the phase's own
  evaluation (of its ``head``: an extra head's, ``results['heads']``); returns the phase it
  chose."""
  import json
  import os
  import pathlib

  from PIL import Image

  from ltjax import predict

  import ml_collections

  with open(os.path.join(workdir, 'config.json')) as f:
    dataset = registry.load(ml_collections.ConfigDict(json.load(f)))  # the run's own test images
  folder = tmp_path / 'test_images'
  folder.mkdir(exist_ok=True)
  for i, image in enumerate(dataset.test_images):
    Image.fromarray(np.round(image[..., 0] * 255.0 / 16).astype(np.uint8)).save(folder / f'{i:04d}.png')
  out = tmp_path / 'predictions.json'
  rows = predict.run(str(workdir), [str(folder)], phase=phase, k=dataset.num_classes, out=str(out), quiet=True,
                     head=head)
  names = dataset.class_names
  top1 = np.array([names.index(r['top'][0]['class']) for r in rows])
  labels = dataset.test_labels
  prob = np.array([next(t['probability'] for t in r['top'] if t['class'] == names[l]) for r, l in zip(rows, labels)])
  meta = json.loads(out.read_text())
  chosen = meta['phase']
  want = json.loads(pathlib.Path(workdir, chosen, 'results.json').read_text())
  if head:
    assert meta['head'] == head
    if head != want.get('main_head'):
      want = want['heads'][head]
  assert [100 * float((top1[labels == c] == c).mean()) for c in range(len(names))] == want['per_class']
  assert float(-np.log(prob).mean()) == pytest.approx(want['nll'], rel=1e-5)
  return chosen
