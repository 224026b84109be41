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
