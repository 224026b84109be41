"""On-device augmentation, run inside the jitted step on a uint8 batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop(key, images, pad: int):
  """Zero-pads ``pad`` pixels on each side, then crops back to the original size
  at a uniformly random offset per image (the CIFAR recipe: pad 4, crop 32)."""
  if pad <= 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key, images):
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def normalize(images, mean, std, scale: float = 255.0):
  """``(x / scale - mean) / std`` per channel, in float32."""
  x = images.astype(jnp.float32) / scale
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def train_augment(key, images, *, pad: int, flip: bool, mean, std, scale: float = 255.0):
  """The training augmentation named by a dataset's config: crop, flip, normalise."""
  k_crop, k_flip = jax.random.split(key)
  images = random_crop(k_crop, images, pad)
  if flip:
    images = random_flip(k_flip, images)
  return normalize(images, mean, std, scale)
