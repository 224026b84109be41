"""Where a phase's training batches come from: the two data modes behind one interface,
so that the trainer (``ltjax/train.py``) has no branch on either.

- ``DeviceFeed``: the whole (small) training set lives on the device, replicated, and the
  jitted step samples its batch (``Sampler``), gathers it and augments it (crop, flip,
  normalise). Batches depend only on the seed and the step: nothing to checkpoint.
- ``HostFeed``: a grain pipeline over TFDS (``ltjax/data/host.py``) reads, decodes and
  crops each process's rows of every global batch on the host, one batch ahead of the
  device; the step receives the global batch, sharded on ``data``, and does the colour
  jitter and normalisation. A step's batch depends on the seed and the step alone: a
  resumed run starts the pipeline at its checkpoint's step (nothing of the pipeline is
  checkpointed, so the process, thread or worker count may change between runs).

A feed has two halves. Inside the jitted step: ``batch(data, key, step)`` (the uint8
``images`` and ``labels`` of the step) and ``augment(key, images)``. On the host, in the
loop: ``restore(mgr, state)`` (the latest checkpoint, and the feed positioned after it),
``next()`` (the step's ``data`` argument, placed as ``data_sharding``), ``prefetch()``
(called once the step is dispatched) and ``close()``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from ltjax import checkpoint, parallel
from ltjax.data import augment, host
from ltjax.data.host import HostDataset
from ltjax.data.samplers import Sampler

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class DeviceFeed:
  """The training set on the device (``arrays``: uint8 ``images``, ``labels`` and
  ``Sampler.arrays``), replicated; the step samples and gathers its batch."""
  sampler: Sampler
  augment_fn: AugmentFn
  mesh: Any
  arrays: dict | None = None

  @property
  def data_sharding(self):
    return parallel.replicated(self.mesh)

  def batch(self, data, key, step) -> dict:
    shard = parallel.batch_sharding(self.mesh)
    idx = jax.lax.with_sharding_constraint(self.sampler(data, key, step), shard)
    return {'images': jax.lax.with_sharding_constraint(data['images'][idx], shard),
            'labels': data['labels'][idx]}

  def augment(self, key, images):
    return self.augment_fn(key, images)

  def restore(self, mgr, state):
    self._data = jax.device_put(self.arrays, self.data_sharding)
    return checkpoint.restore_latest(mgr, state)

  def next(self):
    return self._data

  def prefetch(self) -> None:
    pass

  def close(self) -> None:
    pass


@dataclasses.dataclass
class HostFeed:
  """Global batches read by the host pipeline; ``rows`` of each one are this process's."""
  sampler: Sampler
  augment_fn: AugmentFn
  mesh: Any
  # The host half (``restore`` / ``next``): not needed to build a step.
  dataset: HostDataset | None = None
  seed: int = 0
  total_steps: int = 0
  two_views: bool = False

  def __post_init__(self):
    self._batches = None
    self._upcoming = None

  @property
  def data_sharding(self):
    return parallel.batch_sharding(self.mesh)

  def batch(self, data, key, step) -> dict:
    return data

  def augment(self, key, images):
    return self.augment_fn(key, images)

  def restore(self, mgr, state):
    state = checkpoint.restore_latest(mgr, state)
    start = int(state.step)
    # The batches after the checkpoint's step, as if never stopped.
    self._batches = host.train_iterator(self.dataset, self.sampler, self.seed, self.total_steps,
                                        parallel.local_rows(self.mesh, self.sampler.batch_size),
                                        two_views=self.two_views, start=start)
    self._remaining = self.total_steps - start
    self.prefetch()
    return state

  def _read(self):
    return parallel.global_batch(next(self._batches), self.mesh)

  def next(self):
    data = self._upcoming
    self._upcoming = None
    return data

  def prefetch(self) -> None:
    """Reads the next batch, if any is left: called while the device runs a step."""
    if self._remaining > 0:
      self._upcoming = self._read()
      self._remaining -= 1

  def close(self) -> None:
    if self._batches is not None and hasattr(self._batches, 'close'):
      self._batches.close()  # grain's reader threads


def make_feed(dataset, sampler: Sampler, config, mesh, total_steps: int, two_views: bool = False,
              seed: int | None = None):
  """The feed of ``dataset``: a ``HostFeed`` for the large datasets, else a ``DeviceFeed``,
  with the training augmentation that ``config.data.augment`` names. ``seed``: the host
  pipeline's (default ``config.seed``; a device feed draws from the step's key)."""
  aug = config.data.augment
  if isinstance(dataset, HostDataset):
    def host_augment(key, images):  # the host cropped and flipped
      return augment.host_batch_augment(key, images, jitter=aug.jitter, mean=aug.mean, std=aug.std,
                                        scale=dataset.pixel_scale)

    return HostFeed(sampler, host_augment, mesh, dataset, config.seed if seed is None else seed,
                    total_steps, two_views)

  def device_augment(key, images):
    return augment.train_augment(key, images, pad=aug.pad, flip=aug.flip, mean=aug.mean,
                                 std=aug.std, scale=dataset.pixel_scale)

  arrays = {'images': dataset.train_images, 'labels': dataset.train_labels,
            **Sampler.arrays(dataset.train_labels, dataset.num_classes)}
  return DeviceFeed(sampler, device_augment, mesh, arrays)
