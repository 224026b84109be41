import colorsys
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common

from ltjax.data import augment
from ltjax.recipes import ssd


def images(b=64, h=6, w=6, c=2):
  return np.random.default_rng(0).integers(1, 255, size=(b, h, w, c)).astype(np.uint8)


def test_random_crop_is_a_window_of_the_zero_padded_image():
  x = images()
  out = np.asarray(jax.jit(augment.random_crop, static_argnums=2)(jax.random.key(0), x, 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = set()
  for i in range(len(x)):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 6])]
    assert hits, f'image {i} is not a crop of its padded image'
    offsets.add(hits[0])
  assert len(offsets) > 10  # offsets vary per image (25 possible)
  assert out.dtype == np.uint8 and out.shape == x.shape


def test_no_padding_is_identity():
  x = images()
  np.testing.assert_array_equal(augment.random_crop(jax.random.key(0), x, 0), x)


def test_random_flip_mirrors_about_half():
  x = images(b=400)
  out = np.asarray(jax.jit(augment.random_flip)(jax.random.key(1), x))
  same = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
  mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)])
  assert np.all(same ^ mirrored)
  assert 150 < mirrored.sum() < 250


def test_normalize():
  x = np.full((1, 2, 2, 3), 255, np.uint8)
  out = augment.normalize(x, (0.5, 0.5, 0.0), (0.5, 0.25, 2.0))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 2.0, 0.5])
  assert out.dtype == jnp.float32


def test_train_augment_is_deterministic_per_key():
  x = images()
  kw = dict(pad=2, flip=True, mean=(0.5, 0.5), std=(0.2, 0.2))
  a = augment.train_augment(jax.random.key(3), x, **kw)
  b = augment.train_augment(jax.random.key(3), x, **kw)
  c = augment.train_augment(jax.random.key(4), x, **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# ----------------------------------------------------------- MoCo v2's key view (torchvision)
W = np.array([0.299, 0.587, 0.114])  # PIL's convert('L'), torchvision's rgb_to_grayscale (0.2989)


def np_hue(img, f):
  """torchvision's adjust_hue, pixel by pixel with colorsys, in float64."""
  flat = [colorsys.rgb_to_hsv(*p) for p in img.reshape(-1, 3).astype(np.float64)]
  out = [colorsys.hsv_to_rgb((h + f) % 1.0, s, v) for h, s, v in flat]
  return np.array(out).reshape(img.shape)


def np_op(k, img, f):
  """torchvision's ColorJitter ops on one [H, W, 3] float64 image, blend then clamp."""
  blend = lambda other: np.clip(f * img + (1 - f) * other, 0, 1)
  gray = img @ W
  if k == 0:
    return blend(0.0)
  if k == 1:
    return blend(gray.mean())
  if k == 2:
    return blend(gray[..., None])
  return np_hue(img, f)


def np_blur(img, sigma, size):
  """torchvision's gaussian_blur by hand: reflect padding, the 2-D kernel as an outer product."""
  t = np.arange(size) - size // 2
  k = np.exp(-0.5 * (t / sigma) ** 2)
  k2 = np.outer(k, k) / k.sum() ** 2
  r = size // 2
  pad = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode='reflect')
  h, w = img.shape[:2]
  return sum(k2[i, j] * pad[i:i + h, j:j + w] for i in range(size) for j in range(size))


def unit_images(b, h=3, w=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(b, h, w, 3)).astype(np.float32)


def within_binomial(hits, p):
  n = hits.size
  return abs(hits.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n)


def test_adjust_hue_matches_colorsys_identity_and_wrap_around():
  hue = jax.jit(augment.adjust_hue)
  x = unit_images(1, 4, 4)
  x[0, 0, 0] = (0.5, 0.5, 0.5)  # gray: no hue to turn
  x[0, 0, 1] = (1.0, 0.0, 0.0)
  x[0, 0, 2] = (0.2, 0.9, 0.9)  # max in two channels
  for f in (0.0, 0.1, -0.1, 0.37, 0.5, -0.5):
    out = np.asarray(hue(x, jnp.array([f])))
    np.testing.assert_allclose(out[0], np_hue(x[0], f), atol=2e-6, err_msg=f'hue shift {f}')
    np.testing.assert_allclose(out[0, 0, 0], [0.5, 0.5, 0.5], atol=1e-7)
  np.testing.assert_allclose(hue(x, jnp.array([0.0])), x, atol=1e-6)  # shift 0: identity
  np.testing.assert_allclose(hue(x, jnp.array([0.5])), hue(x, jnp.array([-0.5])), atol=1e-6)  # half a turn either way
  red = x[:, :1, 1:2]
  np.testing.assert_allclose(hue(red, jnp.array([1 / 3]))[0, 0, 0], [0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(hue(red, jnp.array([-1 / 3]))[0, 0, 0], [0, 0, 1], atol=1e-6)
  np.testing.assert_allclose(hue(red, jnp.array([0.5]))[0, 0, 0], [0, 1, 1], atol=1e-6)
  # Per-image factors; one channel is left as is (torchvision).
  many = unit_images(4, 3, 3)
  fs = np.array([0.05, -0.3, 0.5, -0.45], np.float32)
  out = np.asarray(hue(many, fs))
  for i in range(4):
    np.testing.assert_allclose(out[i], np_hue(many[i], fs[i]), atol=2e-6)
  assert out.dtype == np.float32 and out.shape == many.shape
  np.testing.assert_array_equal(augment.adjust_hue(many[..., :1], fs), many[..., :1])


def test_jitter_order_varies_per_image_and_each_image_follows_its_own_order():
  b = 512
  order, factors = jax.jit(augment.color_jitter_params, static_argnums=1)(jax.random.key(0), b)
  order, factors = np.asarray(order), np.asarray(factors)
  assert (np.sort(order, 1) == np.arange(4)).all()  # a permutation per image
  assert len({tuple(o) for o in order}) == 24  # every order of the four ops occurs
  first = np.bincount(order[:, 0], minlength=4) / b
  assert np.all(np.abs(first - 0.25) < 5 * np.sqrt(0.25 * 0.75 / b))
  assert (factors[:, :3] >= 0.6).all() and (factors[:, :3] <= 1.4).all()
  assert (np.abs(factors[:, 3]) <= 0.1).all() and factors[:, 3].std() > 0.04
  fixed, _ = augment.color_jitter_params(jax.random.key(0), b, random_order=False)
  assert (np.asarray(fixed) == np.arange(4)).all()
  # Each image, its ops in its order, against the NumPy reference of torchvision's ops.
  n = 24
  x = unit_images(n, 3, 3)
  big = factors[:n].copy()
  big[:, 3] *= 4  # hue up to +-0.4 turns
  out = np.asarray(jax.jit(augment.jitter_in_order)(x, order[:n], big))
  for i in range(n):
    ref = x[i].astype(np.float64)
    for k in order[i]:
      ref = np_op(k, ref, float(big[i, k]))
    np.testing.assert_allclose(out[i], ref, atol=3e-6, err_msg=f'image {i}, order {order[i]}')
  assert len({tuple(o) for o in order[:n]}) > 10


def test_fixed_order_jitter_is_the_sequential_application():
  x = unit_images(8, 5, 5)

  @jax.jit
  def run(key, x):
    fixed = augment.random_color_jitter(key, x, p=1.0, random_order=False)
    _, k_params = jax.random.split(key)  # random_color_jitter's own split
    _, f = augment.color_jitter_params(k_params, 8, random_order=False)
    seq = augment.adjust_hue(augment.adjust_saturation(
        augment.adjust_contrast(augment.adjust_brightness(x, f[:, 0]), f[:, 1]), f[:, 2]), f[:, 3])
    rnd = augment.random_color_jitter(key, x, p=1.0, random_order=True)
    only_b = augment.random_color_jitter(key, x / 2, 0.4, 0.0, 0.0, 0.0, p=1.0)  # x / 2: no clipping at 1
    return fixed, seq, rnd, only_b

  fixed, seq, rnd, only_b = (np.asarray(a) for a in run(jax.random.key(3), x))
  np.testing.assert_allclose(fixed, seq, atol=1e-6)
  assert fixed.dtype == np.float32 and fixed.shape == x.shape
  assert fixed.min() >= 0 and fixed.max() <= 1
  assert not np.allclose(rnd, fixed, atol=1e-3)  # the same factors in other orders
  # A strength of 0 skips its op: brightness alone is a per-image scale.
  ratio = only_b / (x / 2)
  np.testing.assert_allclose(ratio, ratio[:, :1, :1, :1] * np.ones_like(ratio), rtol=1e-5)


def test_gaussian_blur_matches_numpy_reference():
  x = unit_images(4, 12, 10)
  sigma = np.array([0.5, 1.0, 2.0, 1.7], np.float32)
  blur = jax.jit(augment.gaussian_blur, static_argnums=2)
  out = np.asarray(blur(x, sigma, 23))
  assert out.shape == x.shape and out.dtype == np.float32
  for i in range(4):
    np.testing.assert_allclose(out[i], np_blur(x[i], sigma[i], 23), atol=2e-6)
  np.testing.assert_allclose(blur(x, sigma, 5)[1], np_blur(x[1], 1.0, 5), atol=2e-6)
  np.testing.assert_allclose(blur(np.full_like(x, 0.3), sigma, 23), 0.3, atol=1e-6)  # weights sum to 1
  np.testing.assert_allclose(blur(x[:, :, ::-1], sigma, 23), out[:, :, ::-1], atol=1e-6)  # commutes with the flip
  np.testing.assert_allclose(augment.gaussian_kernel1d(np.float32(2.0), 23).sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='odd'):
    augment.gaussian_kernel1d(1.0, 4)


def test_random_blur_p0_identity_and_sigma_range():
  x = unit_images(6, 8, 8)
  f = jax.jit(augment.random_gaussian_blur, static_argnames=('p', 'sigma', 'size'))
  np.testing.assert_array_equal(f(jax.random.key(0), x, p=0.0), x)
  out = np.asarray(f(jax.random.key(0), x, p=1.0, sigma=(0.1, 2.0)))
  assert out.shape == x.shape and out.dtype == np.float32
  k_on, k_sigma = jax.random.split(jax.random.key(0))  # random_gaussian_blur's own split
  s = np.asarray(jax.random.uniform(k_sigma, (6,), minval=0.1, maxval=2.0))
  for i in range(6):
    np.testing.assert_allclose(out[i], np_blur(x[i], s[i], 23), atol=2e-6)


def test_key_view_probabilities_hold_over_a_large_batch():
  n = 4000
  x = unit_images(n, 2, 2, seed=1)
  u8 = (x * 255).astype(np.uint8)

  @jax.jit
  def run(key, x, u8):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return (augment.random_color_jitter(k1, x, p=0.8),
            augment.random_grayscale(k2, x, 0.2),
            augment.random_gaussian_blur(k3, x, p=0.5, sigma=(1.0, 2.0)),
            augment.moco_colour(k4, u8, (0.5,) * 3, (0.25,) * 3))

  jit, gray, blur, view = (np.asarray(a) for a in run(jax.random.key(1), x, u8))
  changed = lambda y: np.abs(y - x).reshape(n, -1).max(-1) > 1e-6
  assert within_binomial(changed(jit), 0.8)
  is_gray = np.ptp(gray, axis=-1).max((1, 2)) == 0
  assert within_binomial(is_gray, 0.2)
  np.testing.assert_allclose(gray[is_gray][..., 0], x[is_gray] @ W.astype(np.float32), rtol=1e-6)
  assert within_binomial(changed(blur), 0.5)
  # The whole key view: grayscale survives the blur and the normalisation.
  assert view.shape == u8.shape and view.dtype == np.float32
  assert within_binomial(np.ptp(view, axis=-1).max((1, 2)) < 1e-6, 0.2)


def test_key_view_config_is_the_official_recipe_and_reaches_moco_colour():
  kv = common.base_config().ssd.key_view
  args = ssd.key_view_args(kv)
  assert args == dict(jitter=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                      blur_kernel=23, random_order=True)
  defaults = {k: p.default for k, p in inspect.signature(augment.moco_colour).parameters.items() if k in args}
  assert defaults == args
  assert inspect.signature(augment.moco_view).parameters['blur_p'].default == 0.0  # small images: no blur unless asked
  bad = common.base_config().ssd.key_view
  bad.blur_p = 1.5
  with pytest.raises(ssd.ConfigError, match='blur_p'):
    ssd.check_key_view(bad)
  bad = common.base_config().ssd.key_view
  bad.hue = 0.6
  with pytest.raises(ssd.ConfigError, match='hue'):
    ssd.check_key_view(bad)
  # moco_view: blur and jitter only as asked; one channel (digits) works.
  u8 = (unit_images(8, 8, 8) * 255).astype(np.uint8)
  kw = dict(pad=0, flip=False, mean=(0.0,), std=(1.0,), jitter_p=0.0, grayscale_p=0.0)

  @jax.jit
  def run(key, u8):
    return (augment.moco_view(key, u8, **kw), augment.moco_view(key, u8, **kw, blur_p=1.0, blur_sigma=(1.0, 2.0)),
            augment.moco_view(key, u8[..., :1], pad=1, flip=False, mean=(0.3,), std=(0.4,), blur_p=0.5))

  plain, blurred, one = run(jax.random.key(0), u8)
  np.testing.assert_allclose(plain, u8 / 255.0, rtol=1e-6)
  assert not np.allclose(blurred, u8 / 255.0, atol=1e-3)
  assert one.shape == (8, 8, 8, 1) and bool(jnp.isfinite(one).all())
