"""SSD's self-supervision pieces: rotations, the momentum encoder's average, the queue,
and the key view's colour augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import selfsup
from ltjax.data import augment


def test_rotations_hand_case_labels_and_four_quarter_turns_are_identity():
  img = jnp.array([[1, 2], [3, 4]]).reshape(1, 2, 2, 1)
  x = jnp.concatenate([img, img + 10])  # a batch of 2
  rotated, labels = jax.jit(selfsup.rotate_batch)(x)
  assert rotated.shape == (8, 2, 2, 1)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(rotated[0, :, :, 0], [[1, 2], [3, 4]])
  np.testing.assert_array_equal(rotated[2, :, :, 0], [[2, 4], [1, 3]])  # 90 degrees counter-clockwise
  np.testing.assert_array_equal(rotated[4, :, :, 0], [[4, 3], [2, 1]])  # 180
  np.testing.assert_array_equal(rotated[6, :, :, 0], [[3, 1], [4, 2]])  # 270
  np.testing.assert_array_equal(rotated[3], jnp.rot90(x[1], 1))
  y = np.random.default_rng(0).normal(size=(3, 5, 5, 2)).astype(np.float32)
  r = y
  for _ in range(4):  # a quarter turn four times is the identity
    r = selfsup.rotate_batch(r)[0][3:6]
  np.testing.assert_array_equal(r, y)
  with pytest.raises(ValueError, match='square'):
    selfsup.rotate_batch(jnp.zeros((1, 4, 6, 1)))


def test_ema_update():
  ema = {'a': jnp.array([1.0, 2.0]), 'b': {'c': jnp.array(4.0)}}
  params = {'a': jnp.array([3.0, 0.0]), 'b': {'c': jnp.array(0.0)}}
  out = jax.jit(selfsup.ema_update, static_argnums=2)(ema, params, 0.9)
  np.testing.assert_allclose(out['a'], [0.9 * 1 + 0.1 * 3, 0.9 * 2], rtol=1e-6)
  np.testing.assert_allclose(out['b']['c'], 3.6, rtol=1e-6)
  same = selfsup.ema_update(ema, params, 1.0)  # m = 1: frozen
  np.testing.assert_array_equal(same['a'], ema['a'])


def test_queue_fifo_order_and_wrap_around():
  q = selfsup.init_queue(jax.random.key(0), 5, 2)
  np.testing.assert_allclose(np.linalg.norm(q['keys'], axis=-1), 1.0, rtol=1e-6)
  assert (np.asarray(q['labels']) == -1).all() and int(q['ptr']) == 0
  push = jax.jit(selfsup.enqueue)
  k = lambda *v: jnp.array([[x, 0.0] for x in v])  # keys (x, 0)
  q = push(q, 3 * k(1, 1, 1), jnp.array([10, 11, 12]))
  assert int(q['ptr']) == 3
  np.testing.assert_array_equal(q['labels'], [10, 11, 12, -1, -1])
  np.testing.assert_allclose(q['keys'][:3], [[1, 0]] * 3)  # normalised on the way in
  q = push(q, k(-1, -1, -1), jnp.array([13, 14, 15]))
  assert int(q['ptr']) == 1  # 6 mod 5
  np.testing.assert_array_equal(q['labels'], [15, 11, 12, 13, 14])  # the oldest (10) overwritten
  np.testing.assert_allclose(np.asarray(q['keys'])[[0, 3, 4]], [[-1, 0]] * 3)
  with pytest.raises(ValueError, match='does not fit'):
    selfsup.enqueue(q, jnp.ones((6, 2)), jnp.zeros(6, jnp.int32))


def test_key_view_colour_augmentation():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(64, 4, 4, 3)), jnp.float32)
  gray = augment.random_grayscale(jax.random.key(0), x, p=1.0)
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(gray[..., 1], np.asarray(x) @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
  np.testing.assert_array_equal(augment.random_grayscale(jax.random.key(0), x, p=0.0), x)
  jit = augment.random_color_jitter(jax.random.key(1), x, p=1.0)
  assert jit.shape == x.shape and float(jit.min()) >= 0 and float(jit.max()) <= 1
  changed = np.abs(np.asarray(jit) - np.asarray(x)).reshape(64, -1).max(-1) > 1e-6
  assert changed.all()
  np.testing.assert_array_equal(augment.random_color_jitter(jax.random.key(1), x, p=0.0), x)
  # With p 0.8, about 80 % of the images change (within 5 binomial sigmas).
  some = augment.random_color_jitter(jax.random.key(2), jnp.tile(x, (16, 1, 1, 1)), p=0.8)
  frac = (np.abs(np.asarray(some) - np.tile(np.asarray(x), (16, 1, 1, 1))).reshape(1024, -1).max(-1) > 1e-6).mean()
  assert abs(frac - 0.8) < 5 * np.sqrt(0.8 * 0.2 / 1024)
