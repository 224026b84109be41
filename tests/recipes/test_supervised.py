"""The one-phase recipes: each loss is the library's, DRW switches on at its epoch,
LDAM uses the cosine classifier, and every recipe trains without diverging."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import digits_lt
from ltjax import config_lib, losses, parallel, recipes, train
from ltjax.errors import ConfigError
from ltjax.data import registry
from ltjax.recipes import supervised


@pytest.fixture(scope='module')
def digits():
  return registry.load(digits_lt.get_config('smoke'))


def test_drw_weights_switch_at_their_epoch(digits):
  config = digits_lt.get_config()
  weights = supervised._drw_weights(config, digits)
  np.testing.assert_array_equal(weights(jnp.int32(47)), np.ones(10))
  cb = losses.class_balanced_weights(digits.class_counts, config.loss.cb_beta)
  np.testing.assert_allclose(weights(jnp.int32(48)), cb, rtol=1e-6)
  assert cb[-1] > cb[0]  # the rarest class weighs most


@pytest.mark.parametrize('method', ['ce', 'bsce', 'focal', 'cb_focal', 'cb', 'ce_drw', 'ldam_drw'])
def test_recipe_loss_is_the_library_loss(digits, method):
  config = digits_lt.get_config(f'method={method}')
  (phase,) = recipes.phases(config, digits)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 8))
  counts, lc = digits.class_counts, config.loss
  cb = losses.class_balanced_weights(counts, lc.cb_beta)
  late = lc.drw_epoch
  expected = {
      'ce': losses.cross_entropy(z, y),
      'bsce': losses.balanced_softmax_cross_entropy(z, y, counts),
      'focal': losses.focal_loss(z, y, lc.focal_gamma),
      'cb_focal': losses.focal_loss(z, y, lc.focal_gamma, cb),
      'cb': losses.focal_loss(z, y, 0.0, cb),
      'ce_drw': losses.cross_entropy(z, y, cb),
      'ldam_drw': losses.ldam_loss(z, y, counts, lc.ldam_max_margin, lc.ldam_scale, cb),
  }[method]
  assert phase.name == method
  got, metrics = jax.jit(phase.loss)({'logits': z}, y, jnp.int32(late))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert 'accuracy' in metrics
  head = jax.eval_shape(lambda: phase.model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
  # LDAM's cosine classifier has a bare kernel; the others a linear layer with bias.
  assert set(head['params']['head']) == ({'kernel'} if method == 'ldam_drw' else {'Dense_0'})


@pytest.mark.parametrize('method', ['focal', 'cb_focal'])
def test_sigmoid_focal_form_is_cui_et_als_classifier(digits, method):
  """loss.focal_form=sigmoid: Cui et al.'s loss, the classifier's bias from -log(C - 1)
  (each sigmoid starts at the prior 1/C), and weight decay on everything but that bias."""
  config = digits_lt.get_config(f'method={method}')
  config.loss.focal_form = 'sigmoid'
  (phase,) = recipes.phases(config, digits)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 8))
  w = losses.class_balanced_weights(digits.class_counts, config.loss.cb_beta) if method == 'cb_focal' else None
  got, _ = jax.jit(phase.loss)({'logits': z}, y, jnp.int32(0))
  np.testing.assert_allclose(got, losses.sigmoid_focal_loss(z, y, config.loss.focal_gamma, w), rtol=1e-6)
  variables = phase.model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  bias = variables['params']['head']['Dense_0']['bias']
  np.testing.assert_allclose(bias, np.full(10, -np.log(9)), rtol=1e-6)
  np.testing.assert_allclose(jax.nn.sigmoid(bias), 0.1, rtol=1e-5)
  # One step with zero gradients: weight decay shrinks every parameter but the bias.
  params = variables['params']
  tx = train.make_optimizer(config.train, 0.1, params=params, decayed=phase.decayed)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  moved = {k: bool(jnp.any(u != 0)) for k, u in traverse_util.flatten_dict(updates, sep='/').items()}
  nonzero = {k: bool(jnp.any(p != 0)) for k, p in traverse_util.flatten_dict(params, sep='/').items()}
  assert moved.pop('head/Dense_0/bias') is False and nonzero.pop('head/Dense_0/bias')
  assert moved == nonzero  # decay moves every parameter that is not 0 (BatchNorm's biases start at 0)
  config.loss.focal_form = 'tanh'
  with pytest.raises(ConfigError, match="loss.focal_form='tanh': must be one of softmax, sigmoid"):
    config_lib.validate(config)
  with pytest.raises(ConfigError, match='focal_form'):
    recipes.phases(config, digits)


@pytest.mark.parametrize('form', ['softmax', 'sigmoid'])
def test_cb_is_cui_et_als_class_balanced_loss(digits, form):
  """method=cb: the CB softmax or CB sigmoid loss at gamma 0 whatever loss.focal_gamma says
  (tests/test_losses.py checks both against Cui et al.'s code), on a head whose bias
  starts at 0 (softmax, this config's kaiming init) or at -log(C - 1) (sigmoid)."""
  config = digits_lt.get_config('method=cb')
  config.loss.focal_form, config.loss.focal_gamma = form, 2.0
  (phase,) = recipes.phases(config, digits)
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(16, 10)) * 3, jnp.float32)
  y = jnp.asarray(np.arange(16) % 10)
  w = losses.class_balanced_weights(digits.class_counts, config.loss.cb_beta)
  library = losses.focal_loss if form == 'softmax' else losses.sigmoid_focal_loss
  got, _ = jax.jit(phase.loss)({'logits': z}, y, jnp.int32(0))
  np.testing.assert_allclose(got, library(z, y, 0.0, w), rtol=1e-6)
  assert abs(float(got) - float(library(z, y, 2.0, w))) > 0.05  # gamma 2 would be another loss
  head = phase.model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)['params']['head']['Dense_0']
  np.testing.assert_allclose(head['bias'], np.full(10, -np.log(9) if form == 'sigmoid' else 0.0), rtol=1e-6)


@pytest.mark.parametrize('normed_init', ['unit', 'shifted'])
def test_normed_head_gives_cosines(digits, normed_init):
  config = digits_lt.get_config('method=ldam_drw')
  config.model.normed_init = normed_init
  (phase,) = recipes.phases(config, digits)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 1)), jnp.float32)
  variables = phase.model.init(jax.random.key(0), x, train=False)
  out = phase.model.apply(variables, x, train=False)
  f = out['features'] / np.linalg.norm(out['features'], axis=-1, keepdims=True)
  kernel = np.asarray(variables['params']['head']['kernel'])
  if normed_init == 'unit':
    # LDAM-DRW's NormedLinear: the parameter is the weight, U(-1, 1) renormed to unit columns
    # (weight decay then acts on the weight itself).
    w = kernel
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-5)
    assert (w < 0).any() and (w > 0).any()
  else:  # ltjax's earlier parametrisation, kept to resume its runs: w = p - 1, p ~ U[0, 2)
    assert kernel.min() >= 0 and kernel.max() < 2
    w = kernel - 1.0
  np.testing.assert_allclose(out['logits'], f @ (w / np.linalg.norm(w, axis=0)), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out['logits']).max()) <= 1.0 + 1e-6


def test_ldam_is_evaluated_as_the_softmax_it_trains(digits):
  """LDAM trains softmax(s (cos - m_y)): its evaluated logits (ECE, NLL, predict's
  probabilities) are s cos, the linear heads' are unscaled; top-1 is the same."""
  from ltjax import evaluate

  config = digits_lt.get_config('method=ldam_drw')
  (phase,) = recipes.phases(config, digits)
  assert phase.eval_scale == config.loss.ldam_scale == 30.0
  assert recipes.phases(digits_lt.get_config('method=ce'), digits)[0].eval_scale == 1.0
  x = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(4, 8, 8, 1)), jnp.uint8)
  normalize = lambda im: im.astype(jnp.float32) / 255.0
  variables = phase.model.init(jax.random.key(0), normalize(x), train=False)
  cosines = evaluate.make_forward(phase.model, normalize)(variables, x)
  scaled = evaluate.make_forward(phase.model, normalize, scale=phase.eval_scale)(variables, x)
  np.testing.assert_allclose(scaled, 30.0 * np.asarray(cosines), rtol=1e-6)
  assert float(jnp.abs(cosines).max()) <= 1.0 + 1e-6


def test_unit_columns_as_torch_renorm():
  """``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` in NumPy: torch's renorm scales a
  column of norm > maxnorm by maxnorm / (norm + 1e-7)."""
  from ltjax.models import heads

  key = jax.random.key(3)
  w = np.asarray(heads._unit_columns(key, (64, 10)))
  u = np.asarray(jax.random.uniform(key, (64, 10), jnp.float32, -1.0, 1.0), np.float64)
  norm = np.linalg.norm(u, axis=0, keepdims=True)
  np.testing.assert_allclose(w, u * (1e-5 / (norm + 1e-7)) * 1e5, rtol=1e-5)
  assert np.abs(np.linalg.norm(w, axis=0) - 1).max() < 1e-5


@pytest.mark.parametrize('method', ['focal', 'cb_focal', 'cb_focal:sigmoid', 'cb', 'cb:sigmoid', 'ce_drw',
                                    'ldam_drw'])
def test_recipe_trains(tmp_path, digits, method):
  method, _, form = method.partition(':')
  config = digits_lt.get_config(f'smoke,method={method}')
  config.loss.focal_form = form or config.loss.focal_form
  config.train.epochs = 4  # DRW (epoch 3 in smoke) switches on inside the run
  (phase,) = recipes.phases(config, digits)
  mesh = parallel.make_mesh(8)
  variables, stats = train.train_phase(phase, digits, config, str(tmp_path / (method + form)), mesh)
  assert stats['steps_run'] == 28
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(variables['params']))
