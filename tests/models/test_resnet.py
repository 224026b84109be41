import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ltjax.errors import ConfigError
from ltjax.models import build_model


def cfg(depth=32, width=16):
  return ml_collections.ConfigDict({'name': 'cifar_resnet', 'depth': depth, 'width': width, 'dtype': 'float32', 'conv_impl': 'xla'})


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_resnet32_matches_ldam_drw_size():
  model = build_model(cfg(), 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  # 461,232 conv + 2,272 BN + 650 linear parameters, as LDAM-DRW's resnet32 (0.46M).
  assert count(variables['params']) == 464154
  assert count(variables['params']['head']) == 650
  assert set(variables['params']) == {'backbone', 'head'}


def test_outputs_and_shapes():
  model = build_model(cfg(depth=8, width=4), 7)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  out = model.apply(variables, x, train=False)
  assert out['logits'].shape == (2, 7) and out['features'].shape == (2, 16)
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert 'batch_stats' in updates


def test_option_a_shortcut_is_parameter_free():
  # Depth 8 = 1 block a stage: 3x3 convs only, no 1x1 projection on the shortcut.
  model = build_model(cfg(depth=8, width=4), 3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)), train=False)['params']
  kernels = [x.shape for x in jax.tree.leaves(params) if x.ndim == 4]
  assert all(k[:2] == (3, 3) for k in kernels) and len(kernels) == 7


@pytest.mark.parametrize('depth', [7, 30, 2])
def test_bad_depth(depth):
  with pytest.raises(ConfigError, match='6n \\+ 2'):
    build_model(cfg(depth=depth), 10)


def test_bfloat16_computes_in_bf16_keeps_float32_params():
  c = cfg(depth=8, width=4)
  x = jnp.ones((2, 8, 8, 3))
  f32 = build_model(c, 5)
  c.dtype = 'bfloat16'
  bf16 = build_model(c, 5)
  variables = f32.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(0), x, train=False)))
  out16 = bf16.apply(variables, x, train=False)['logits']
  out32 = f32.apply(variables, x, train=False)['logits']
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.1, atol=0.1)
  c.dtype = 'float16'
  with pytest.raises(ConfigError, match='bfloat16'):
    build_model(c, 5)
