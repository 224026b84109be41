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


def color_jitter(key, x, brightness=0.4, contrast=0.4, saturation=0.4, p=0.8):
  """Per image, with probability ``p``: brightness, contrast and saturation factors
  drawn uniformly from ``[1 - s, 1 + s]`` (in that order), on ``x`` in [0, 1]
  ``[B, H, W, C]``; clipped to [0, 1]. (torchvision's ColorJitter draws a random
  order and also jitters hue; neither is done here.)"""
  b = x.shape[0]
  k_on, k_b, k_c, k_s = jax.random.split(key, 4)
  factor = lambda k, s: jax.random.uniform(k, (b, 1, 1, 1), minval=1 - s, maxval=1 + s)
  gray = lambda y: jnp.mean(y, axis=-1, keepdims=True)
  y = jnp.clip(x * factor(k_b, brightness), 0, 1)
  mean = jnp.mean(gray(y), axis=(1, 2, 3), keepdims=True)
  y = jnp.clip((y - mean) * factor(k_c, contrast) + mean, 0, 1)
  g = gray(y)
  y = jnp.clip((y - g) * factor(k_s, saturation) + g, 0, 1)
  on = jax.random.bernoulli(k_on, p, (b, 1, 1, 1))
  return jnp.where(on, y, x)


def random_grayscale(key, x, p=0.2):
  """Per image, with probability ``p``, every channel set to the channel mean."""
  on = jax.random.bernoulli(key, p, (x.shape[0], 1, 1, 1))
  return jnp.where(on, jnp.broadcast_to(jnp.mean(x, -1, keepdims=True), x.shape), x)


def moco_view(key, images, *, pad: int, flip: bool, mean, std, scale: float = 255.0):
  """MoCo v2's key view for small images: the dataset's crop and flip, colour jitter
  (0.4, p 0.8) and grayscale (p 0.2), then normalisation. Blur and the random resized
  crop belong to large images (the host pipeline crops, ``moco_colour`` does the rest)."""
  k_crop, k_flip, k_col = jax.random.split(key, 3)
  images = random_crop(k_crop, images, pad)
  if flip:
    images = random_flip(k_flip, images)
  return moco_colour(k_col, images, mean, std, scale)


def moco_colour(key, images, mean, std, scale: float = 255.0):
  """MoCo v2's colour part on already cropped uint8 images: jitter (0.4, p 0.8),
  grayscale (p 0.2), normalisation."""
  k_jit, k_gray = jax.random.split(key)
  x = images.astype(jnp.float32) / scale
  x = random_grayscale(k_gray, color_jitter(k_jit, x))
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def host_batch_augment(key, images, *, jitter: float, mean, std, scale: float = 255.0):
  """The device half of the large-image training augmentation (the host did the random
  resized crop and flip): ``ColorJitter(jitter, jitter, jitter)`` on every image, as the
  decoupling code's ImageNet-LT transform, then normalisation."""
  x = images.astype(jnp.float32) / scale
  if jitter > 0:
    x = color_jitter(key, x, jitter, jitter, jitter, p=1.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
