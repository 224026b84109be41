"""The CPU convolution path computes what lax.conv computes: forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import common

from ltjax.models import layers


def conv_ref(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape,kernel,strides,padding', [
    ((4, 8, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((4, 9, 7, 6), (3, 3, 6, 4), (2, 2), ((1, 1), (1, 1))),   # odd sizes, stride 2
    ((2, 8, 8, 4), (1, 1, 4, 8), (2, 2), ((0, 0), (0, 0))),   # 1x1 projection
    ((2, 10, 10, 2), (5, 3, 2, 3), (1, 2), ((2, 1), (0, 1))),  # asymmetric
])
def test_taps_conv_matches_lax_conv(shape, kernel, strides, padding):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, kernel) * 0.3
  y_ref = conv_ref(x, w, strides, padding)
  g = jax.random.normal(kg, y_ref.shape)
  loss = lambda conv: (lambda x, w: jnp.sum(conv(x, w) * g))
  fast = lambda x, w: layers.taps_conv_general_dilated(x, w, strides, padding, dimension_numbers=layers._NHWC,
                                                        min_output_positions=0)
  np.testing.assert_allclose(jax.jit(fast)(x, w), y_ref, rtol=1e-5, atol=1e-5)
  dx_ref, dw_ref = jax.grad(loss(lambda x, w: conv_ref(x, w, strides, padding)), (0, 1))(x, w)
  dx, dw = jax.jit(jax.grad(loss(fast), (0, 1)))(x, w)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


def test_same_padding_string_and_fallback():
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
  dn = layers._NHWC
  np.testing.assert_allclose(layers.taps_conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn,
                                                             min_output_positions=0),
                             lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn), rtol=1e-5, atol=1e-5)
  # Dilated kernels are not a tap product: they fall back to lax.conv.
  got = layers.taps_conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=dn)
  np.testing.assert_allclose(got, lax.conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2),
                                                           dimension_numbers=dn), rtol=1e-5, atol=1e-5)


def test_small_maps_use_xla():
  x = jnp.ones((2, 8, 8, 3))
  w = jnp.ones((3, 3, 3, 4))
  jaxpr = str(jax.make_jaxpr(lambda w: layers.taps_conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=layers._NHWC))(w))
  assert 'custom_vjp' not in jaxpr  # 64 output positions < 1024: plain lax.conv
  jaxpr = str(jax.make_jaxpr(lambda w: layers.taps_conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=layers._NHWC, min_output_positions=64))(w))
  assert 'custom_vjp' in jaxpr


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_flax_conv_with_taps_matches_xla_in_a_model(monkeypatch):
  monkeypatch.setattr(layers, 'TAPS_MIN_OUTPUT_POSITIONS', 0)
  from ltjax.models import build_model

  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  labels = jnp.array([0, 1, 2, 1])
  grads = {}
  for impl in ('xla', 'taps'):
    model_config = common.base_config().model
    model_config.update(name='cifar_resnet', depth=8, width=4, dtype='float32', conv_impl=impl)
    model = build_model(model_config, 3)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss(params):
      out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return -jnp.mean(jax.nn.log_softmax(out['logits'])[jnp.arange(4), labels])

    grads[impl] = jax.jit(jax.grad(loss))(variables['params'])
    uses_taps = 'custom_vjp' in str(jax.make_jaxpr(loss)(variables['params']))
    assert uses_taps == (impl == 'taps')
  for a, b in zip(jax.tree.leaves(grads['xla']), jax.tree.leaves(grads['taps'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_conv_impl_choice():
  one_cpu = jax.default_backend() == 'cpu' and jax.local_device_count() == 1
  assert layers.resolve_conv_impl('auto') == ('taps' if one_cpu else 'xla')
  assert layers.resolve_conv_impl('taps') == 'taps' and layers.resolve_conv_impl('xla') == 'xla'
  with pytest.raises(ValueError, match='unknown conv'):
    layers.resolve_conv_impl('winograd')


@pytest.mark.parametrize('init', ['kaiming', 'ldam', 'torch'])
def test_linear_head_inits_as_the_reference_codes(init):
  """kaiming: N(0, 2/d) W, zero b (ltjax); ldam: N(0, 2/d) W, U(+-1/sqrt(d)) b
  (LDAM-DRW's resnet32); torch: U(+-1/sqrt(d)) W and b (nn.Linear, BBN / BagofTricks)."""
  from ltjax.models.heads import LinearHead

  d, c = 64, 1000
  p = LinearHead(c, init_scheme=init).init(jax.random.key(0), jnp.zeros((1, d)))['params']['Dense_0']
  w, b = np.asarray(p['kernel']), np.asarray(p['bias'])
  bound = 1 / np.sqrt(d)
  if init == 'torch':
    assert np.abs(w).max() <= bound and abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
  else:
    assert abs(w.std() - np.sqrt(2 / d)) < 0.02 * np.sqrt(2 / d)
  if init == 'kaiming':
    assert not b.any()
  else:
    assert np.abs(b).max() <= bound and abs(b.std() - bound / np.sqrt(3)) < 0.1 * bound
  with pytest.raises(ValueError, match='model.head_init'):
    LinearHead(c, init_scheme='xavier').init(jax.random.key(0), jnp.zeros((1, d)))


@pytest.mark.parametrize('init', ['kaiming', 'torch'])
def test_projection_head_inits(init):
  """torch: MoCo v2's / SSD-LT's MLP of nn.Linear layers, W and b ~ U(+-1/sqrt(d_in)) with
  each layer's own d_in; kaiming: N(0, 2/d_in) W, zero b."""
  from ltjax.models.heads import ProjectionHead

  d, hidden, dim = 256, 512, 128
  p = ProjectionHead(dim, hidden, init_scheme=init).init(jax.random.key(0), jnp.zeros((1, d)))['params']
  for layer, d_in in (('Dense_0', d), ('Dense_1', hidden)):
    w, b = np.asarray(p[layer]['kernel']), np.asarray(p[layer]['bias'])
    bound = 1 / np.sqrt(d_in)
    if init == 'torch':
      assert np.abs(w).max() <= bound and abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
      assert np.abs(b).max() <= bound and b.std() > 0.4 * bound
    else:
      assert abs(w.std() - np.sqrt(2 / d_in)) < 0.02 * np.sqrt(2 / d_in) and not b.any()


def test_lws_head_scales_the_whole_linear_output_bias_included():
  """Kang et al.'s and SSD-LT's LWS: ``x = fc(x); x *= scales``: z_c = s_c (w_c . f + b_c)."""
  from ltjax.models import heads

  head = heads.LWSHead(3)
  f = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  v = head.init(jax.random.key(0), f)
  w = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  b = np.array([0.5, -1.0, 2.0], np.float32)
  s = np.array([0.5, 2.0, -1.5], np.float32)
  lin = v['params']['linear']
  (dense_name,) = lin.keys()
  params = {'scales': jnp.asarray(s), 'linear': {dense_name: {'kernel': jnp.asarray(w), 'bias': jnp.asarray(b)}}}
  got = jax.jit(head.apply)({'params': params}, f)
  np.testing.assert_allclose(got, s * (np.asarray(f) @ w + b), rtol=1e-5, atol=1e-6)
