"""Batch samplers that run inside the jitted step (Kang et al., decoupling).

A sampler maps ``(key, step)`` to the indices of one global batch of the training
set that lives on the device. ``key`` must be the same at every step of a run (the
sampler folds in the epoch or the step itself): indices then depend only on the seed
and the step, so a resumed run and a run on another number of devices draw the same
batches, and the instance sampler is one pass over the data per epoch.

- ``instance``: every image once per epoch, in a fresh permutation each epoch (the
  PyTorch ``shuffle=True`` loader). The last, partial batch of an epoch wraps around to
  the epoch's first images (static shapes); with ``drop_last`` (BBN's and
  BagofTricks-LT's loaders) it is dropped instead and each epoch sees ``N - N mod B``
  images of a fresh permutation. With every sampler, an epoch is ``steps_per_epoch``.
- ``class``: class-balanced, each class (with images) equally likely, then an image of it
  (both drawn with replacement: BagofTricks-LT's class-balanced sampling).
- ``class_aware``: class-balanced by cycles, as the ``ClassAwareSampler`` of Kang et al. and
  SSD-LT: rounds that visit every class once in a fresh random order, taking
  ``per_class`` consecutive images of it (Kang: 4, SSD-LT: 2), each class's images in a
  fresh random order that is used up before it is reshuffled (without replacement).
  The cycles run on across epochs, as Kang et al.'s sampler (built once; SSD-LT's is built
  anew each epoch, from its process's shard of the data). Every round, order and
  reshuffle is a pure function of the key and the position in the run, so resumes and
  device counts draw the same batches.
- ``sqrt``: class c drawn with probability proportional to ``sqrt(n_c)``.
- ``progressive``: ``(1 - a_t) * instance + a_t * class`` in epoch t (0-based) of T,
  ``a_t`` as ``progressive_form`` says (``PROGRESSIVE_FORMS``): ``kang`` t/(T - 1), Kang et
  al.'s code (``np.linspace(0, 1, T)``: instance-balanced in the first epoch, class-balanced
  in the last); ``bag`` (t + 1)/T, BagofTricks-LT's (``epoch / MAX_EPOCH`` over its 1-based
  epochs: class-balanced in the last); ``paper`` t/T, the formula of Kang et al.'s paper as
  written (never wholly class-balanced; ltjax's only form before 2026-11-28). Within a class
  the image is drawn with replacement, as BagofTricks-LT does; Kang et al.'s sampler cycles
  through each class's images (as ``class_aware``), which would need a per-class count
  carried from step to step.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.errors import ConfigError

KINDS = ('instance', 'class', 'class_aware', 'sqrt', 'progressive')
PROGRESSIVE_FORMS = ('kang', 'bag', 'paper')


def progressive_weight(form: str, epoch, total_epochs: int):
  """``a_t``: the class-balanced share of the ``progressive`` sampler in ``epoch`` (0-based,
  may be traced) of ``total_epochs``, clipped to [0, 1] (the definitions above)."""
  t, total = jnp.asarray(epoch, jnp.float32), max(total_epochs, 1)
  if form == 'kang':
    # np.linspace(0, 1, 1) is [0.]: a single epoch stays instance-balanced
    a = t / (total - 1) if total > 1 else jnp.zeros_like(t)
  elif form == 'bag':
    a = (t + 1) / total
  elif form == 'paper':
    a = t / total
  else:
    raise ConfigError(f'unknown progressive_form {form!r}; choose one of {PROGRESSIVE_FORMS}.')
  return jnp.clip(a, 0.0, 1.0)


def class_probabilities(kind: str, class_counts, epoch=0, total_epochs=1, progressive_form='kang'):
  """Probability of drawing each class under a sampler (the definitions above)."""
  counts = jnp.asarray(class_counts, jnp.float32)
  instance = counts / counts.sum()
  present = (counts > 0).astype(jnp.float32)  # a class without images cannot be drawn
  balanced = present / present.sum()
  if kind == 'instance':
    return instance
  if kind in ('class', 'class_aware'):
    return balanced
  if kind == 'sqrt':
    return jnp.sqrt(counts) / jnp.sqrt(counts).sum()
  if kind == 'progressive':
    a = progressive_weight(progressive_form, epoch, total_epochs)
    return (1 - a) * instance + a * balanced
  raise ConfigError(f'unknown sampler {kind!r}; choose one of {KINDS}.')


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Static description of a sampler; ``arrays`` are passed to the step as device data."""
  kind: str
  num_examples: int
  batch_size: int
  class_counts: tuple[int, ...]
  total_epochs: int
  drop_last: bool = False
  # class_aware: consecutive images taken from a class each time its turn comes.
  per_class: int = 1
  # progressive: how the class-balanced share grows (PROGRESSIVE_FORMS).
  progressive_form: str = 'kang'

  def __post_init__(self):
    if self.per_class < 1:
      raise ConfigError(f'samples_per_class={self.per_class}: a class-aware sampler takes at least one '
                        f'image of a class at its turn (Kang et al.: 4, SSD-LT: 2).')
    if self.drop_last and self.num_examples < self.batch_size:
      raise ConfigError(f'data.drop_last with {self.num_examples} training images and batch '
                        f'{self.batch_size} leaves no batch: lower the batch size or set '
                        f'--config.data.drop_last=False.')

  @property
  def steps_per_epoch(self) -> int:
    if self.drop_last:
      return self.num_examples // self.batch_size
    return math.ceil(self.num_examples / self.batch_size)

  @staticmethod
  def arrays(labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Training indices grouped by class, and where each class starts."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind='stable').astype(np.int32)
    counts = np.bincount(labels, minlength=num_classes)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    return {'by_class': order, 'class_offsets': offsets, 'class_sizes': counts.astype(np.int32)}

  def __call__(self, arrays, key, step):
    """Indices ``[batch_size]`` of the batch at ``step`` (a traced int)."""
    if self.kind not in KINDS:
      raise ConfigError(f'unknown sampler {self.kind!r}; choose one of {KINDS}.')
    epoch = step // self.steps_per_epoch
    if self.kind == 'instance':
      perm = jax.random.permutation(jax.random.fold_in(key, epoch), self.num_examples)
      pos = (step % self.steps_per_epoch) * self.batch_size + jnp.arange(self.batch_size)
      return perm[pos % self.num_examples]
    if self.kind == 'class_aware':
      return self._class_aware(arrays, key, step)
    k_class, k_item = jax.random.split(jax.random.fold_in(key, step))
    probs = class_probabilities(self.kind, self.class_counts, epoch, self.total_epochs, self.progressive_form)
    classes = jax.random.choice(k_class, len(self.class_counts), (self.batch_size,), p=probs)
    sizes = arrays['class_sizes'][classes]
    within = jnp.floor(jax.random.uniform(k_item, (self.batch_size,)) * sizes).astype(jnp.int32)
    within = jnp.minimum(within, sizes - 1)
    return arrays['by_class'][arrays['class_offsets'][classes] + within]

  def _cycle_positions(self, step):
    """Where the images of the batch at ``step`` (positions ``step * batch_size + [0,
    batch_size)`` of the run) fall in the class-aware cycles: ``(round, turn in the round,
    draw of the class so far)``; every round visits each of the present classes once."""
    xp = jnp if isinstance(step, jax.Array) else np
    m, k = self.per_class, len(self.present_classes)
    p = step * self.batch_size + xp.arange(self.batch_size)
    slot = p // m
    rounds, turn = slot // k, slot % k
    return rounds, turn, rounds * m + p % m

  @property
  def present_classes(self) -> np.ndarray:
    return np.flatnonzero(np.asarray(self.class_counts) > 0)

  def _class_aware(self, arrays, key, step):
    k_round, k_item = jax.random.split(key)
    rounds, turn, draw = self._cycle_positions(step)
    k, largest = len(self.present_classes), max(self.class_counts)
    orders = jax.vmap(lambda r: jax.random.permutation(jax.random.fold_in(k_round, r), k))(rounds)
    classes = jnp.asarray(self.present_classes, jnp.int32)[jnp.take_along_axis(orders, turn[:, None], 1)[:, 0]]
    sizes = arrays['class_sizes'][classes]

    def member(c, cycle, at, size):
      # The class's order in this cycle: its images ranked by keyed uniforms (padding last).
      u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(k_item, c), cycle), (largest,))
      return jnp.argsort(jnp.where(jnp.arange(largest) < size, u, 2.0))[at]

    within = jax.vmap(member)(classes, draw // sizes, draw % sizes, sizes)
    return arrays['by_class'][arrays['class_offsets'][classes] + within]

  def _host_class_aware(self, arrays, seed: int, step: int) -> np.ndarray:
    rounds, turn, draw = self._cycle_positions(step)
    present = self.present_classes
    orders = {r: np.random.default_rng([seed, 4, r]).permutation(len(present)) for r in set(rounds.tolist())}
    classes = np.array([present[orders[r][t]] for r, t in zip(rounds.tolist(), turn.tolist())])
    sizes = np.asarray(arrays['class_sizes'])[classes]
    cycles = {}
    within = np.empty(self.batch_size, np.int64)
    for i, (c, size, d) in enumerate(zip(classes.tolist(), sizes.tolist(), draw.tolist())):
      order = cycles.get((c, d // size))
      if order is None:
        order = cycles[c, d // size] = np.random.default_rng([seed, 5, c, d // size]).permutation(size)
      within[i] = order[d % size]
    return np.asarray(arrays['by_class'])[np.asarray(arrays['class_offsets'])[classes] + within]

  def host_indices(self, arrays, seed: int, step: int) -> np.ndarray:
    """The same samplers in NumPy, for the host pipeline: indices ``[batch_size]`` of the
    training set at ``step``, a pure function of ``(seed, step)`` (another random stream
    than the on-device sampler's, the same distribution). ``arrays``: ``Sampler.arrays``."""
    if self.kind not in KINDS:
      raise ConfigError(f'unknown sampler {self.kind!r}; choose one of {KINDS}.')
    epoch = step // self.steps_per_epoch
    if self.kind == 'instance':
      perm = _epoch_permutation(seed, epoch, self.num_examples)
      pos = (step % self.steps_per_epoch) * self.batch_size + np.arange(self.batch_size)
      return perm[pos % self.num_examples]
    if self.kind == 'class_aware':
      return self._host_class_aware(arrays, seed, step)
    rng = np.random.default_rng([seed, 2, step])
    probs = np.asarray(class_probabilities(self.kind, self.class_counts, epoch, self.total_epochs,
                                           self.progressive_form), np.float64)
    classes = rng.choice(len(self.class_counts), self.batch_size, p=probs / probs.sum())
    sizes = np.asarray(arrays['class_sizes'])[classes]
    within = np.minimum((rng.random(self.batch_size) * sizes).astype(np.int64), sizes - 1)
    return np.asarray(arrays['by_class'])[np.asarray(arrays['class_offsets'])[classes] + within]


# One permutation per epoch, kept while its steps are read (iNaturalist: 437k indices);
# reader threads may straddle an epoch boundary, so two are kept.
@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  perm = np.random.default_rng([seed, 3, epoch]).permutation(num_examples)
  perm.flags.writeable = False  # shared by every caller
  return perm
