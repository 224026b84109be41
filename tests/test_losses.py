"""Jitted losses against independent NumPy formulas, hand-computed cases and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ltjax import losses


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y, w=None):
  ce = -np_log_softmax(z.astype(np.float64))[np.arange(len(y)), y]
  if w is not None:
    ce = ce * w[y]
  return ce.mean()


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(16, 7)).astype(np.float32) * 3
  y = rng.integers(0, 7, size=16)
  counts = np.array([500, 300, 120, 60, 25, 9, 3])
  return z, y, counts


def test_cross_entropy_hand_case():
  # logits (0, log 3): softmax = (1/4, 3/4); CE for y=0 is log 4, for y=1 log(4/3).
  z = jnp.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
  y = jnp.array([0, 1])
  got = jax.jit(losses.cross_entropy)(z, y)
  np.testing.assert_allclose(got, (np.log(4) + np.log(4 / 3)) / 2, rtol=1e-6)


def test_cross_entropy_matches_numpy(batch):
  z, y, counts = batch
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(z, y), np_ce(z, y), rtol=1e-5)
  w = np.linspace(0.5, 2.0, 7)
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(z, y, w), np_ce(z, y, w), rtol=1e-5)


def test_cross_entropy_gradient(batch):
  z, y, _ = batch
  grad = jax.jit(jax.grad(losses.cross_entropy))(z, y)
  p = np.exp(np_log_softmax(z.astype(np.float64)))
  expected = (p - np.eye(7)[y]) / len(y)  # d CE / d z = softmax - onehot
  np.testing.assert_allclose(grad, expected, atol=1e-6)
  check_grads(lambda z: losses.cross_entropy(z, y), (z,), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


def test_balanced_softmax_matches_numpy(batch):
  z, y, counts = batch
  got = jax.jit(losses.balanced_softmax_cross_entropy)(z, y, counts)
  np.testing.assert_allclose(got, np_ce(z + np.log(counts), y), rtol=1e-5)
  got_tau = jax.jit(losses.balanced_softmax_cross_entropy, static_argnums=3)(z, y, counts, 0.5)
  np.testing.assert_allclose(got_tau, np_ce(z + 0.5 * np.log(counts), y), rtol=1e-5)


def test_balanced_softmax_hand_case():
  # Equal logits, counts (3, 1): adjusted softmax = (3/4, 1/4); label 1 costs log 4.
  got = losses.balanced_softmax_cross_entropy(jnp.zeros((1, 2)), jnp.array([1]), jnp.array([3, 1]))
  np.testing.assert_allclose(got, np.log(4.0), rtol=1e-6)


def test_balanced_softmax_uniform_counts_is_ce(batch):
  z, y, _ = batch
  np.testing.assert_allclose(losses.balanced_softmax_cross_entropy(z, y, np.full(7, 37)),
                             losses.cross_entropy(z, y), rtol=1e-6)


def test_balanced_softmax_gradient(batch):
  z, y, counts = batch
  grad = jax.jit(jax.grad(losses.balanced_softmax_cross_entropy))(z, y, counts)
  p = np.exp(np_log_softmax(z.astype(np.float64) + np.log(counts)))
  np.testing.assert_allclose(grad, (p - np.eye(7)[y]) / len(y), atol=1e-6)
  check_grads(lambda z: losses.balanced_softmax_cross_entropy(z, y, counts), (z,), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


def test_bf16_logits_are_stable():
  z = jnp.array([[1000.0, -1000.0, 0.0]], jnp.bfloat16)
  for value in (losses.cross_entropy(z, jnp.array([1])),
                losses.balanced_softmax_cross_entropy(z, jnp.array([1]), jnp.array([5000, 50, 5]))):
    assert jnp.isfinite(value) and value.dtype == jnp.float32
