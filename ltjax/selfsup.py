"""Self-supervision pieces of SSD's phase I, pure functions usable inside a jitted
step: rotated copies of a batch, the momentum encoder's moving average and MoCo's
FIFO queue of keys (METHODS.md 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rotate_batch(x):
  """Each image at 0, 90, 180 and 270 degrees (counter-clockwise):
  ``[B, H, W, C] -> [4B, H, W, C]``, all of rotation 0 first, then 1, 2, 3; and the
  rotation labels ``[4B]`` (0..3). Images must be square."""
  if x.shape[1] != x.shape[2]:
    raise ValueError(f'rotation prediction needs square images, got {x.shape[1]}x{x.shape[2]}.')
  rotated = jnp.concatenate([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])
  labels = jnp.repeat(jnp.arange(4, dtype=jnp.int32), x.shape[0])
  return rotated, labels


def ema_update(ema, params, momentum: float):
  """MoCo's momentum encoder: ``ema <- m * ema + (1 - m) * params`` per leaf."""
  return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, ema, params)


def init_queue(key, size: int, dim: int) -> dict:
  """A queue of ``size`` random unit keys with label -1 (no class), write pointer 0."""
  keys = jax.random.normal(key, (size, dim), jnp.float32)
  keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
  return {'keys': keys, 'labels': jnp.full((size,), -1, jnp.int32), 'ptr': jnp.zeros((), jnp.int32)}


def enqueue(queue: dict, keys, labels) -> dict:
  """Writes a batch of (unit-normalised) keys and their labels over the oldest entries,
  FIFO, wrapping around the end; shapes never change, so nothing recompiles."""
  size, n = queue['keys'].shape[0], keys.shape[0]
  if n > size:
    raise ValueError(f'a batch of {n} keys does not fit a queue of {size}.')
  keys = keys.astype(jnp.float32)
  keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)
  idx = (queue['ptr'] + jnp.arange(n)) % size
  return {'keys': queue['keys'].at[idx].set(keys), 'labels': queue['labels'].at[idx].set(labels),
          'ptr': (queue['ptr'] + n) % size}
