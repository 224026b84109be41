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


def random_grayscale(key, x, p=0.2):
  """torchvision's ``RandomGrayscale(p)``: per image, with probability ``p``, every
  channel set to the luma ``rgb_to_grayscale`` (``GRAY_WEIGHTS``)."""
  on = jax.random.bernoulli(key, p, (x.shape[0], 1, 1, 1))
  return jnp.where(on, jnp.broadcast_to(rgb_to_grayscale(x), x.shape), x)


# ------------------------------------------------- torchvision's ColorJitter, on the device
# Luma of ITU-R 601-2, as PIL's convert('L') (MoCo v2 ran its transforms on PIL images);
# torchvision's tensor rgb_to_grayscale uses 0.2989 for red.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _channels(x):
  c = x.shape[-1]
  if c not in (1, 3):
    raise ValueError(f'colour operations take 1 or 3 channels (NHWC), got shape {x.shape}.')
  return c


def _per_image(f, x):
  """A scalar, or a per-image ``[B]`` factor shaped to broadcast against ``x [B, ...]``."""
  f = jnp.asarray(f, jnp.float32)
  return f.reshape(f.shape + (1,) * (x.ndim - 1)) if f.ndim else f


def rgb_to_grayscale(x, weights=GRAY_WEIGHTS):
  """``[B, H, W, 3] -> [B, H, W, 1]``: ``w_r r + w_g g + w_b b``; 1 channel is returned as is."""
  if _channels(x) == 1:
    return x
  w = jnp.asarray(weights, jnp.float32)
  return (x[..., 0:1] * w[0] + x[..., 1:2] * w[1] + x[..., 2:3] * w[2]).astype(x.dtype)


def _blend(x, y, f):
  """torchvision's ``_blend``: ``(f x + (1 - f) y)`` clamped to [0, 1]."""
  return jnp.clip(f * x + (1.0 - f) * y, 0.0, 1.0)


def adjust_brightness(x, factor):
  """torchvision's ``adjust_brightness`` (a blend with black), per-image ``factor``."""
  return _blend(x, 0.0, _per_image(factor, x))


def adjust_contrast(x, factor):
  """torchvision's ``adjust_contrast``: a blend with the mean of the image's gray levels."""
  mean = jnp.mean(rgb_to_grayscale(x), axis=(-3, -2, -1), keepdims=True)
  return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x, factor):
  """torchvision's ``adjust_saturation``: a blend with the gray image (1 channel: unchanged)."""
  if _channels(x) == 1:
    return x
  return _blend(x, rgb_to_grayscale(x), _per_image(factor, x))


def rgb_to_hsv(x):
  """torchvision's ``_rgb2hsv`` on the last axis: ``[..., 3]`` RGB in [0, 1] to HSV, hue in [0, 1).

  The hue's sector is that of the first largest channel (torchvision's r, g, b priority),
  found by ``argmax`` rather than by ``maxc == r`` tests: inside a fused jitted step XLA
  may recompute a channel in two places with different roundings, and an equality test
  that then fails for every channel picks a wrong sector (a hue off by a third of a turn)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  top = jnp.argmax(x, -1)
  maxc, minc = jnp.max(x, -1), jnp.min(x, -1)
  cr = maxc - minc
  eqc = cr <= 0
  s = cr / jnp.where(eqc, 1.0, maxc)
  div = jnp.where(eqc, 1.0, cr)
  # (bc - gc), 2 + (rc - bc), 4 + (gc - rc) of torchvision, with xc = (maxc - x) / cr.
  h = jnp.select([top == 0, top == 1], [(g - b) / div, 2.0 + (b - r) / div], 4.0 + (r - g) / div)
  h = jnp.where(eqc, 0.0, h)
  h = jnp.fmod(h / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], -1)


def hsv_to_rgb(hsv):
  """torchvision's ``_hsv2rgb``: ``[..., 3]`` HSV back to RGB."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = [i == k for k in range(6)]
  pick = lambda *vals: jnp.select(sector, vals)
  return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], -1)


def adjust_hue(x, factor):
  """torchvision's ``adjust_hue``: the hue turned by ``factor`` (per image, in [-0.5, 0.5]
  of a full turn, wrapping around), saturation and value kept (1 channel: unchanged)."""
  if _channels(x) == 1:
    return x
  hsv = rgb_to_hsv(x)
  h = jnp.mod(hsv[..., 0] + _per_image(factor, hsv[..., 0]), 1.0)
  return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], -1)).astype(x.dtype)


COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # torchvision's fn_idx


def color_jitter_params(key, b, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, random_order=True):
  """torchvision's ``ColorJitter.get_params`` for ``b`` images: ``order [B, 4]`` (op indices
  into ``COLOR_OPS``: a uniformly random permutation per image, or 0, 1, 2, 3) and
  ``factors [B, 4]``: brightness, contrast, saturation uniform in ``[max(0, 1 - s), 1 + s]``,
  hue uniform in ``[-h, h]``."""
  if not 0 <= hue <= 0.5:
    raise ValueError(f'hue={hue}: torchvision takes 0 <= hue <= 0.5.')
  k_order, k_f = jax.random.split(key)
  if random_order:
    order = jnp.argsort(jax.random.uniform(k_order, (b, 4)), axis=1).astype(jnp.int32)
  else:
    order = jnp.broadcast_to(jnp.arange(4, dtype=jnp.int32), (b, 4))
  lo = jnp.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue], jnp.float32)
  hi = jnp.array([1 + brightness, 1 + contrast, 1 + saturation, hue], jnp.float32)
  factors = jax.random.uniform(k_f, (b, 4), minval=lo, maxval=hi)
  return order, factors


def jitter_in_order(x, order, factors, active=(True, True, True, True)):
  """Applies ``COLOR_OPS[order[i, 0]]``, then ``[order[i, 1]]`` ... to image ``i`` with its
  ``factors[i]``: four rounds, each computing the active ops and keeping per image the one
  its order names (an inactive op, torchvision's factor None, leaves the image as is).
  The rounds are a loop: the ops are compiled once, not four times."""
  def one_round(r, x):
    which = jax.lax.dynamic_index_in_dim(order, r, axis=1, keepdims=False)
    y = x
    for k, op in enumerate(COLOR_OPS):
      if active[k]:
        y = jnp.where((which == k)[:, None, None, None], op(x, factors[:, k]), y)
    return y

  return jax.lax.fori_loop(0, 4, one_round, x)


def random_color_jitter(key, x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8,
                        random_order=True):
  """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` on ``x`` in
  [0, 1] ``[B, H, W, C]``: per image, with probability ``p``, the four torchvision
  adjustments in a random order (``random_order``; else brightness, contrast, saturation,
  hue) with factors drawn as torchvision draws them. A strength of 0 skips its op."""
  if p <= 0:
    return x
  k_on, k_params = jax.random.split(key)
  order, factors = color_jitter_params(k_params, x.shape[0], brightness, contrast, saturation, hue, random_order)
  active = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
  y = jitter_in_order(x, order, factors, active)
  on = jax.random.bernoulli(k_on, p, (x.shape[0], 1, 1, 1))
  return jnp.where(on, y, x)


# ------------------------------------------------------------------- Gaussian blur
BLUR_KERNEL = 23  # torchvision GaussianBlur's kernel_size in MoCo v3 / BYOL-style 224 recipes


def gaussian_kernel1d(sigma, size: int = BLUR_KERNEL):
  """torchvision's ``_get_gaussian_kernel1d``: ``size`` taps at ``-(size-1)/2 .. (size-1)/2``,
  ``exp(-t^2 / 2 sigma^2)`` normalised to sum 1; ``sigma [B]`` gives ``[B, size]``."""
  if size < 1 or size % 2 == 0:
    raise ValueError(f'blur kernel size {size} must be odd and positive.')
  t = jnp.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)[..., None]
  pdf = jnp.exp(-0.5 * (t / sigma) ** 2)
  return pdf / jnp.sum(pdf, -1, keepdims=True)


def gaussian_blur(x, sigma, size: int = BLUR_KERNEL):
  """torchvision's ``gaussian_blur`` with a per-image ``sigma [B]`` (the same in both
  directions) on ``[B, H, W, C]``: reflect padding of ``size // 2``, then the separable
  kernel, one shifted sum per direction."""
  b, h, w, _ = x.shape
  k = gaussian_kernel1d(jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,)), size)
  r = size // 2
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode='reflect')
  tap = lambda t: k[:, t, None, None, None]
  rows = sum(tap(t) * xp[:, :, t:t + w, :] for t in range(size))  # [B, H + 2r, W, C]
  return sum(tap(t) * rows[:, t:t + h, :, :] for t in range(size)).astype(x.dtype)


def random_gaussian_blur(key, x, p=0.5, sigma=(0.1, 2.0), size: int = BLUR_KERNEL):
  """``RandomApply([GaussianBlur(size, sigma)], p)``: per image, with probability ``p``,
  a Gaussian blur of standard deviation uniform in ``sigma``."""
  if p <= 0:
    return x
  k_on, k_sigma = jax.random.split(key)
  s = jax.random.uniform(k_sigma, (x.shape[0],), minval=sigma[0], maxval=sigma[1])
  on = jax.random.bernoulli(k_on, p, (x.shape[0], 1, 1, 1))
  return jnp.where(on, gaussian_blur(x, s, size), x)


def moco_view(key, images, *, pad: int, flip: bool, mean, std, scale: float = 255.0, blur_p: float = 0.0,
              **colour):
  """MoCo v2's key view for small images: the dataset's crop and flip, then ``moco_colour``
  (``colour``: its keyword arguments). Blur only with ``blur_p > 0`` (MoCo-on-CIFAR code
  has none); the random resized crop belongs to large images (the host pipeline crops)."""
  k_crop, k_flip, k_col = jax.random.split(key, 3)
  images = random_crop(k_crop, images, pad)
  if flip:
    images = random_flip(k_flip, images)
  return moco_colour(k_col, images, mean, std, scale, blur_p=blur_p, **colour)


def moco_colour(key, images, mean, std, scale: float = 255.0, *, jitter: float = 0.4, hue: float = 0.1,
                jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                blur_sigma=(0.1, 2.0), blur_kernel: int = BLUR_KERNEL, random_order: bool = True):
  """MoCo v2's key view after the crop (and flip, which commutes with all of this), on
  uint8 images: ``RandomApply([ColorJitter(jitter, jitter, jitter, hue)], jitter_p)``,
  ``RandomGrayscale(grayscale_p)``, ``RandomApply([GaussianBlur(blur_kernel, blur_sigma)],
  blur_p)``, normalisation. Defaults: the official recipe (``config.ssd.key_view``)."""
  k_jit, k_gray, k_blur = jax.random.split(key, 3)
  x = images.astype(jnp.float32) / scale
  x = random_color_jitter(k_jit, x, jitter, jitter, jitter, hue, p=jitter_p, random_order=random_order)
  x = random_grayscale(k_gray, x, grayscale_p)
  x = random_gaussian_blur(k_blur, x, blur_p, tuple(blur_sigma), blur_kernel)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def host_batch_augment(key, images, *, jitter: float, mean, std, scale: float = 255.0):
  """The device half of the large-image training augmentation (the host did the random
  resized crop and flip): ``ColorJitter(jitter, jitter, jitter)`` on every image, as the
  decoupling code's ImageNet-LT transform, then normalisation."""
  x = images.astype(jnp.float32) / scale
  if jitter > 0:  # torchvision's ColorJitter(j, j, j, 0): its random order, every image
    x = random_color_jitter(key, x, jitter, jitter, jitter, hue=0.0, p=1.0, random_order=True)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
