import jax
import jax.numpy as jnp
import numpy as np

from ltjax.data import augment


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
