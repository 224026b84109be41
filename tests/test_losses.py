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
  """PyTorch's F.cross_entropy(z, y, weight=w): the weighted mean, sum w_y CE / sum w_y."""
  ce = -np_log_softmax(z.astype(np.float64))[np.arange(len(y)), y]
  if w is not None:
    return np.sum(w[y] * ce) / np.sum(w[y])
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
  y, counts = jnp.array([1]), jnp.array([5000, 50, 5])
  for value in (losses.cross_entropy(z, y),
                losses.balanced_softmax_cross_entropy(z, y, counts),
                losses.focal_loss(z, y), losses.ldam_loss(z / 1000, y, counts),
                losses.distillation_loss(z, z[:, ::-1], 2.0),
                losses.dive_distillation_loss(z, z[:, ::-1], 3.0, 0.5),
                losses.info_nce(z, z, jnp.concatenate([z, -z]).astype(jnp.bfloat16))):
    assert jnp.isfinite(value) and value.dtype == jnp.float32


def test_rotation_loss_is_four_way_ce():
  z = jnp.asarray(np.random.default_rng(5).normal(size=(8, 4)), jnp.float32)
  r = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
  np.testing.assert_allclose(jax.jit(losses.rotation_loss)(z, r), np_ce(np.asarray(z), np.asarray(r)), rtol=1e-6)


# ---------------------------------------------------------------- the loss library
def np_softmax(z):
  return np.exp(np_log_softmax(z.astype(np.float64)))


def np_kl(p, z):
  return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np_log_softmax(z.astype(np.float64))), 0), -1)


def test_focal_matches_numpy_and_reduces_to_ce(batch):
  z, y, counts = batch
  p = np_softmax(z)[np.arange(len(y)), y]
  expected = np.mean(-(1 - p) ** 2 * np.log(p))
  np.testing.assert_allclose(jax.jit(losses.focal_loss)(z, y), expected, rtol=1e-5)
  np.testing.assert_allclose(losses.focal_loss(z, y, gamma=0.0), losses.cross_entropy(z, y), rtol=1e-6)
  # Hand case: p_y = 1/2, gamma 2 -> (1/2)^2 log 2.
  np.testing.assert_allclose(losses.focal_loss(jnp.zeros((1, 2)), jnp.array([0])), 0.25 * np.log(2), rtol=1e-6)
  check_grads(lambda z: losses.focal_loss(z, y), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_focal_on_well_classified_examples_hand_case():
  """Where focusing matters most: p_y = 0.999 (logits (log 999, 0)) gives
  (1 - p_y)^gamma log(1 / p_y) = 1e-3^gamma log(1000 / 999); its gradient on the true
  logit is -(1-p)^g (1 - p - g p log p) (the derivative of -(1-p)^g log p in z_y)."""
  z = jnp.array([[np.log(999.0), 0.0]], jnp.float32)
  y = jnp.array([0])
  for gamma in (1.0, 2.0):
    expected = 1e-3 ** gamma * np.log(1000 / 999)
    np.testing.assert_allclose(jax.jit(lambda z: losses.focal_loss(z, y, gamma))(z), expected, rtol=1e-4)
    p = 0.999
    d_zy = -(1 - p) ** gamma * ((1 - p) - gamma * p * np.log(p))
    g = jax.jit(jax.grad(lambda z: losses.focal_loss(z, y, gamma)))(z)
    np.testing.assert_allclose(g, [[d_zy, -d_zy]], rtol=1e-3)


def test_weighted_cross_entropy_divides_by_the_batch_weights():
  """LDAM-DRW's F.cross_entropy(weight=w): hand case with weights 1 and 3 on two
  examples of CE log 4 and log(4/3): (log 4 + 3 log(4/3)) / 4, not / 2."""
  z = jnp.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
  y = jnp.array([0, 1])
  w = jnp.array([1.0, 3.0])
  got = jax.jit(losses.cross_entropy)(z, y, w)
  np.testing.assert_allclose(got, (np.log(4) + 3 * np.log(4 / 3)) / 4, rtol=1e-6)
  # Scaling every weight changes nothing (it is a weighted mean).
  np.testing.assert_allclose(losses.cross_entropy(z, y, 7 * w), got, rtol=1e-6)


def test_weighted_cross_entropy_gradient(batch):
  z, y, counts = batch
  w = losses.class_balanced_weights(counts)
  grad = jax.jit(jax.grad(losses.cross_entropy))(z, y, w)
  p = np.exp(np_log_softmax(z.astype(np.float64)))
  onehot = np.eye(7)[y]
  expected = w[y][:, None] * (p - onehot) / np.sum(w[y])
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_ldam_drw_weighting_matches_the_reference(batch):
  """LDAMLoss of LDAM-DRW: F.cross_entropy(s * (z - m_y onehot), y, weight=w)."""
  z, y, counts = batch
  w = losses.class_balanced_weights(counts)
  m = counts.astype(np.float64) ** -0.25
  m = m * 0.5 / m.max()
  zm = 30.0 * (z - m[y][:, None] * np.eye(7)[y])
  got = jax.jit(lambda z: losses.ldam_loss(z, y, counts, 0.5, 30.0, w))(z)
  np.testing.assert_allclose(got, np_ce(zm, y, w), rtol=1e-5)


def test_cb_focal_matches_ldam_drws_focal_loss(batch):
  """LDAM-DRW's FocalLoss(weight=w, gamma): c = F.cross_entropy(reduction='none',
  weight=w) = w_y CE; loss = mean((1 - exp(-c))^gamma c)."""
  z, y, counts = batch
  w = losses.class_balanced_weights(counts)
  c = w[y] * -np_log_softmax(z.astype(np.float64))[np.arange(len(y)), y]
  for gamma in (0.0, 1.0, 2.0):
    expected = np.mean((1 - np.exp(-c)) ** gamma * c)
    got = jax.jit(lambda z: losses.focal_loss(z, y, gamma, w))(z)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  check_grads(lambda z: losses.focal_loss(z, y, 1.0, w), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_focal_gradient_stays_finite_on_fitted_examples():
  """An example fitted to float32 precision (CE rounds to 0) gave NaN gradients at gamma
  0 (0 * inf) and below 1 (d x^gamma / dx infinite at 0); LDAM-DRW's torch FocalLoss
  stays finite at gamma 0. Margins of 30 make p_y exactly 1 in float32."""
  z = jnp.array([[30.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
  y = jnp.array([0, 1])
  for gamma in (0.0, 0.5, 1.0, 2.0):
    g = jax.jit(jax.grad(lambda z: losses.focal_loss(z, y, gamma)))(z)
    assert np.isfinite(g).all(), gamma
    g_sig = jax.jit(jax.grad(lambda z: losses.sigmoid_focal_loss(z, y, gamma)))(z * 10)
    assert np.isfinite(g_sig).all(), gamma
  np.testing.assert_allclose(jax.grad(lambda z: losses.focal_loss(z, y, 0.0))(z),
                             jax.grad(lambda z: losses.cross_entropy(z, y))(z), atol=1e-7)


def np_cui_focal(z, y, w, gamma):
  """Cui et al.'s src/cifar_main.py focal_loss (TF), transcribed: sigmoid_cross_entropy_
  with_logits, modulator exp(-gamma y z - gamma log1p(exp(-z))) (1 at gamma 0), alpha =
  the example's class weight tiled over the classes, reduce_sum / reduce_sum(labels)."""
  z = z.astype(np.float64)
  labels = np.eye(z.shape[1])[y]
  bce = np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))
  modulator = 1.0 if gamma == 0 else np.exp(-gamma * labels * z - gamma * np.log1p(np.exp(-z)))
  alpha = np.tile(w[y][:, None], (1, z.shape[1]))
  return np.sum(alpha * modulator * bce) / np.sum(labels)


def test_sigmoid_focal_matches_cui_et_al(batch):
  z, y, counts = batch
  w = losses.class_balanced_weights(counts)
  for gamma in (0.0, 0.5, 1.0, 2.0):
    got = jax.jit(lambda z: losses.sigmoid_focal_loss(z, y, gamma, w))(z)
    np.testing.assert_allclose(got, np_cui_focal(z, y, w, gamma), rtol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_focal_loss(z, y, 2.0), np_cui_focal(z, y, np.ones(7), 2.0), rtol=1e-5)
  # Hand case: z = 0, two classes: every sigmoid at 1/2, BCE log 2, (1 - p_t) = 1/2:
  # 2 classes x (1/2) log 2 = log 2 at gamma 1; weight 3 triples it.
  np.testing.assert_allclose(losses.sigmoid_focal_loss(jnp.zeros((1, 2)), jnp.array([1]), 1.0), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(losses.sigmoid_focal_loss(jnp.zeros((1, 2)), jnp.array([1]), 1.0, jnp.array([1.0, 3.0])),
                             3 * np.log(2), rtol=1e-6)
  check_grads(lambda z: losses.sigmoid_focal_loss(z, y, 1.0, w), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_cb_softmax_and_sigmoid_match_cui_et_al(batch):
  """Cui et al.'s --loss-type=softmax: tf.losses.softmax_cross_entropy(onehot, z,
  weights=w_y), SUM_BY_NONZERO_WEIGHTS (all w > 0: the plain mean of w_y CE, not PyTorch's
  weighted mean np_ce); --loss-type=sigmoid: np_cui_focal at gamma 0. Gradients in closed
  form: w_y (softmax(z) - onehot) / B and w_y (sigmoid(z) - onehot) / B."""
  z, y, counts = batch
  w = np.asarray(losses.class_balanced_weights(counts), np.float64)
  zd, onehot, b = z.astype(np.float64), np.eye(7)[y], len(y)
  ce = -np_log_softmax(zd)[np.arange(b), y]
  softmax_loss = np.sum(w[y] * ce) / np.count_nonzero(w[y])
  assert abs(softmax_loss - np_ce(z, y, w)) > 0.05
  cases = [(losses.focal_loss, softmax_loss, w[y][:, None] * (np.exp(np_log_softmax(zd)) - onehot) / b),
           (losses.sigmoid_focal_loss, np_cui_focal(z, y, w, 0.0), w[y][:, None] * (1 / (1 + np.exp(-zd)) - onehot) / b)]
  for loss_fn, value, grad in cases:
    f = jax.jit(lambda z: loss_fn(z, y, 0.0, w))
    np.testing.assert_allclose(f(z), value, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda z: loss_fn(z, y, 0.0, w)))(z), grad, rtol=1e-4, atol=1e-6)


def test_class_balanced_weights():
  counts = np.array([5000, 500, 50, 5])
  w = (1 - 0.999) / (1 - 0.999 ** counts)
  np.testing.assert_allclose(losses.class_balanced_weights(counts, 0.999), w * 4 / w.sum(), rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(losses.class_balanced_weights(counts)), 4.0, rtol=1e-6)
  np.testing.assert_allclose(losses.class_balanced_weights(counts, 1e-6), np.ones(4), rtol=1e-4)  # beta -> 0


@pytest.mark.parametrize('max_m,s', [(0.5, 30.0), (0.3, 10.0)])
def test_ldam_loss_value_and_gradient_at_its_margin_and_scale(batch, max_m, s):
  """F.cross_entropy(s (z - m_y onehot), y, weight=w) with m = max_m n^-1/4 / max(n^-1/4);
  gradient s w_y (softmax(s (z - m_y onehot)) - onehot) / sum w_y."""
  z, y, counts = batch
  w = losses.class_balanced_weights(counts, 0.999)
  m = counts.astype(np.float64) ** -0.25
  m = max_m * m / m.max()
  onehot = np.eye(7)[y]
  zm = s * (z - m[y][:, None] * onehot)
  f = jax.jit(lambda z: losses.ldam_loss(z, y, counts, max_m, s, w))
  np.testing.assert_allclose(f(z), np_ce(zm, y, w), rtol=1e-5)
  expected = s * w[y][:, None] * (np_softmax(zm) - onehot) / np.sum(w[y])
  np.testing.assert_allclose(jax.jit(jax.grad(f))(z), expected, rtol=1e-4, atol=1e-6)


def test_classes_without_training_images():
  """An empty class (a class emptied by data.skip_bad_images): its weight and margin are
  0 and the others are as if it were absent (weights still summing to C); BSCE gives it
  prior 0 and DiVE's virtual examples leave it out; every loss stays finite."""
  counts = np.array([500, 50, 0])
  w = (1 - 0.999) / (1 - 0.999 ** np.array([500.0, 50.0]))
  np.testing.assert_allclose(losses.class_balanced_weights(counts, 0.999), [*(w * 3 / w.sum()), 0.0], rtol=1e-6)
  np.testing.assert_allclose(losses.class_balanced_weights([500, 50, 5], 0.0), [1, 1, 1])  # beta 0: equal
  np.testing.assert_allclose(losses.ldam_margins(counts), [0.5 * (50 / 500) ** 0.25, 0.5, 0.0], rtol=1e-6)
  rng = np.random.default_rng(1)
  z = rng.normal(size=(6, 3)).astype(np.float32)
  zt = rng.normal(size=(6, 3)).astype(np.float32)
  y = np.array([0, 1, 0, 1, 1, 0])
  for loss in (lambda z: losses.ldam_loss(z, y, counts, class_weights=losses.class_balanced_weights(counts)),
               lambda z: losses.balanced_softmax_cross_entropy(z, y, counts),
               lambda z: losses.dive_student_loss(z, zt, y, counts, target='t_tau')[0],
               lambda z: losses.dive_student_loss(z, zt, y, counts, target='t_tilde')[0]):
    value, grad = jax.jit(jax.value_and_grad(loss))(z)
    assert np.isfinite(value) and np.isfinite(grad).all()
  # bsce_tau 0: no adjustment at all (not 0 * log 0), the plain CE.
  np.testing.assert_allclose(losses.balanced_softmax_cross_entropy(z, y, counts, tau=0.0),
                             np_ce(z, y), rtol=1e-6)
  for target in ('t_tau', 't_tilde'):
    assert np.isfinite(losses.dive_student_loss(z, zt, y, counts, target=target, bsce_tau=0.0)[0])
  # t_tilde, written out: t over the present classes, BSCE logits of the present classes.
  t = np_softmax(zt[:, :2] / 3.0) ** 0.5
  t /= t.sum(-1, keepdims=True)
  mix = 0.5 * np.eye(2)[y] + 0.5 * t
  expected = -np.mean(np.sum(mix * np_log_softmax(z[:, :2] + np.log([500.0, 50.0])), -1))
  np.testing.assert_allclose(losses.dive_student_loss(z, zt, y, counts, target='t_tilde')[0], expected, rtol=1e-5)


def test_ldam_margins_and_loss(batch):
  z, y, counts = batch
  m = losses.ldam_margins(counts)
  np.testing.assert_allclose(m, 0.5 * (counts / counts.min()) ** -0.25, rtol=1e-6)
  assert float(m.max()) == pytest.approx(0.5) and int(jnp.argmax(m)) == int(np.argmin(counts))
  zm = z - np.eye(7)[y] * np.asarray(m)[y][:, None]
  np.testing.assert_allclose(jax.jit(losses.ldam_loss)(z, y, counts), np_ce(30 * zm, y), rtol=1e-5)
  check_grads(lambda z: losses.ldam_loss(z, y, counts, scale=1.0), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_distillation_matches_numpy_and_is_zero_for_identical_logits(batch):
  z, y, _ = batch
  zt = z[::-1].copy()
  T = 2.0
  expected = T ** 2 * np.mean(np_kl(np_softmax(zt / T), z / T))
  np.testing.assert_allclose(jax.jit(losses.distillation_loss, static_argnums=2)(z, zt, T), expected, rtol=1e-5)
  np.testing.assert_allclose(losses.distillation_loss(z, z, 3.0), 0.0, atol=1e-6)
  g_teacher = jax.grad(lambda t: losses.distillation_loss(z, t, T))(zt)
  assert float(jnp.abs(g_teacher).max()) == 0.0  # the teacher is a constant
  # d/dz_s of T^2 KL at temperature T is T (q - p) / B.
  grad = jax.grad(lambda s: losses.distillation_loss(s, zt, T))(z)
  np.testing.assert_allclose(grad, T * (np_softmax(z / T) - np_softmax(zt / T)) / len(z), atol=1e-6)


def test_power_normalize():
  p = np.array([[0.81, 0.09, 0.09, 0.01]])
  np.testing.assert_allclose(losses.power_normalize(p, 1.0), p, rtol=1e-6)  # p = 1: identity
  np.testing.assert_allclose(losses.power_normalize(p, 0.5), [[0.9, 0.3, 0.3, 0.1]] / np.float64(1.6), rtol=1e-6)
  np.testing.assert_allclose(losses.power_normalize(p, 0.0), np.full((1, 4), 0.25), rtol=1e-6)


def test_dive_distillation_matches_numpy(batch):
  z, _, _ = batch
  zt = np.roll(z, 1, axis=0)
  tau, p = 3.0, 0.5
  t = np_softmax(zt / tau) ** p
  t /= t.sum(-1, keepdims=True)
  expected = tau ** 2 * np.mean(np_kl(t, z / tau))
  got = jax.jit(losses.dive_distillation_loss, static_argnums=(2, 3))(z, zt, tau, p)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # power 1 is plain distillation at temperature tau.
  np.testing.assert_allclose(losses.dive_distillation_loss(z, zt, tau, 1.0),
                             losses.distillation_loss(z, zt, tau), rtol=1e-6)
  check_grads(lambda s: losses.dive_distillation_loss(s, zt, tau, p), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def np_dive_student(z, zt, y, counts, tau, p, alpha, use_bsce=True, target='t_tau', bsce_tau=1.0):
  """DiVE's student loss written from METHODS.md, in float64."""
  z, zt = z.astype(np.float64), zt.astype(np.float64)
  t = np_softmax(zt / tau) ** p
  t /= t.sum(-1, keepdims=True)
  adj = z + bsce_tau * np.log(counts) if use_bsce else z
  hard = np_ce(adj, y)
  if target == 't_tau':
    return (1 - alpha) * hard + alpha * tau ** 2 * np.mean(np_kl(t, z / tau))
  mix = (1 - alpha) * np.eye(z.shape[1])[y] + alpha * t
  return -np.mean(np.sum(mix * np_log_softmax(adj), -1))


@pytest.mark.parametrize('use_bsce', [True, False])
@pytest.mark.parametrize('target', ['t_tau', 't_tilde'])
@pytest.mark.parametrize('tau,p,alpha', [(3.0, 0.5, 0.5), (1.0, 1.0, 0.3), (2.0, 0.25, 0.9)])
def test_dive_student_loss_matches_numpy(batch, use_bsce, target, tau, p, alpha):
  z, y, counts = batch
  zt = np.roll(z, 3, axis=0) * 0.7
  fn = jax.jit(lambda s, t: losses.dive_student_loss(s, t, y, counts, tau, p, alpha, use_bsce, target)[0])
  np.testing.assert_allclose(fn(z, zt), np_dive_student(z, zt, y, counts, tau, p, alpha, use_bsce, target),
                             rtol=1e-5)
  # Gradients: numerical check on the student; none reaches the teacher.
  check_grads(lambda s: fn(s, zt), (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
  assert float(jnp.abs(jax.grad(fn, argnums=1)(z, zt)).max()) == 0.0


@pytest.mark.parametrize('target', ['t_tau', 't_tilde'])
def test_dive_student_bsce_tau_scales_the_log_prior(batch, target):
  z, y, counts = batch
  zt = np.roll(z, 2, axis=0)
  fn = jax.jit(lambda s: losses.dive_student_loss(s, zt, y, counts, 3.0, 0.5, 0.5, True, target, bsce_tau=0.5)[0])
  expected = np_dive_student(z, zt, y, counts, 3.0, 0.5, 0.5, True, target, bsce_tau=0.5)
  np.testing.assert_allclose(fn(z), expected, rtol=1e-5)
  assert abs(expected - np_dive_student(z, zt, y, counts, 3.0, 0.5, 0.5, True, target)) > 1e-3


def test_dive_student_loss_limits_and_hand_case(batch):
  z, y, counts = batch
  zt = np.roll(z, 1, axis=0)
  loss = lambda **kw: float(losses.dive_student_loss(z, zt, y, counts, **kw)[0])
  bsce = float(losses.balanced_softmax_cross_entropy(z, y, counts))
  # alpha = 0: the hard term alone (BSCE, or CE without use_bsce), whichever the target.
  for target in ('t_tau', 't_tilde'):
    np.testing.assert_allclose(loss(alpha=0.0, target=target), bsce, rtol=1e-6)
    np.testing.assert_allclose(loss(alpha=0.0, target=target, use_bsce=False),
                               float(losses.cross_entropy(z, y)), rtol=1e-6)
  # alpha = 1: the tau^2-scaled distillation term alone, blind to the labels.
  np.testing.assert_allclose(loss(alpha=1.0), float(losses.dive_distillation_loss(z, zt, 3.0, 0.5)), rtol=1e-6)
  other = (y + 1) % 7
  np.testing.assert_allclose(float(losses.dive_student_loss(z, zt, other, counts, alpha=1.0)[0]), loss(alpha=1.0),
                             rtol=1e-6)
  # The tau^2 factor: tau = 3 with p = 1 is 9 times the KL at temperature 3.
  t = np_softmax(zt.astype(np.float64) / 3)
  np.testing.assert_allclose(loss(alpha=1.0, power=1.0), 9 * np.mean(np_kl(t, z / 3)), rtol=1e-5)
  # Hand case: 2 classes, teacher logits (0, log 9) at tau 1: t = (0.1, 0.9); with p = 0.5,
  # t ~ (1, 3) / 4. Student logits 0: KL(t || (1/2, 1/2)) = log 2 - H(t).
  got = losses.dive_student_loss(jnp.zeros((1, 2)), jnp.array([[0.0, np.log(9.0)]]), jnp.array([1]),
                                 np.array([1, 1]), temperature=1.0, power=0.5, alpha=1.0)[0]
  h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  np.testing.assert_allclose(got, np.log(2) - h, rtol=1e-6)


def test_dive_student_loss_rejects_unknown_target(batch):
  z, y, counts = batch
  with pytest.raises(ValueError, match='t_tilde'):
    losses.dive_student_loss(z, z, y, counts, target='mixture')


def np_info_nce(q, k, queue, T, labels=None, queue_labels=None):
  n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, k, queue = n(q.astype(np.float64)), n(k.astype(np.float64)), n(queue.astype(np.float64))
  out = []
  for i in range(len(q)):
    negs = [q[i] @ queue[j] for j in range(len(queue)) if labels is None or queue_labels[j] != labels[i]]
    logits = np.array([q[i] @ k[i]] + negs) / T
    out.append(-(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
  return np.mean(out)


def test_info_nce_matches_numpy_and_mask_ignores_same_label_keys():
  rng = np.random.default_rng(2)
  q, k, queue = rng.normal(size=(6, 8)), rng.normal(size=(6, 8)), rng.normal(size=(20, 8))
  labels, queue_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 20)
  np.testing.assert_allclose(jax.jit(losses.info_nce)(q, k, queue), np_info_nce(q, k, queue, 0.2), rtol=1e-5)
  masked = jax.jit(losses.info_nce)(q, k, queue, 0.2, labels, queue_labels)
  np.testing.assert_allclose(masked, np_info_nce(q, k, queue, 0.2, labels, queue_labels), rtol=1e-5)
  # Changing only queue entries whose label some query shares, for that query, is invisible:
  # with all queries of label 0, label-0 keys can be anything.
  lab0 = np.zeros(6, int)
  changed = queue.copy()
  changed[queue_labels == 0] = rng.normal(size=((queue_labels == 0).sum(), 8))
  np.testing.assert_allclose(losses.info_nce(q, k, queue, 0.2, lab0, queue_labels),
                             losses.info_nce(q, k, changed, 0.2, lab0, queue_labels), rtol=1e-6)
  g = jax.grad(lambda kk: losses.info_nce(q, kk, queue))(jnp.asarray(k))
  assert float(jnp.abs(g).max()) == 0.0  # keys come from the momentum encoder: no gradient
  check_grads(lambda qq: losses.info_nce(qq, k, queue), (jnp.asarray(q),), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
