import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common

from ltjax.errors import ConfigError
from ltjax.models import build_model


def model_config(**fields):
  """``config.model`` of the base config (every field a model reads), updated."""
  c = common.base_config().model
  c.update(fields)
  return c


def cfg(depth=32, width=16):
  return model_config(name='cifar_resnet', depth=depth, width=width, dtype='float32', conv_impl='xla')


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


def imagenet_cfg(name, dtype='float32', **fields):
  return model_config(name=name, depth=0, width=0, dtype=dtype, conv_impl='xla', **fields)


@pytest.mark.parametrize('name,expected', [
    # torchvision's counts with a 1000-class fc: resnet18 11,689,512, resnet50 25,557,032,
    # resnet101 44,549,160, resnet152 60,192,808, resnext50_32x4d 25,028,904. ResNet-10 (one basic block a stage) by hand:
    # stem 9,408 + 128; stage 1: 2 x 36,864 + 256; stage 2: 73,728 + 147,456 + 8,192 +
    # 768; stage 3: 294,912 + 589,824 + 32,768 + 1,536; stage 4: 1,179,648 + 2,359,296 +
    # 131,072 + 3,072; fc 513,000 = 5,418,792.
    ('resnet10', 5_418_792), ('resnet18', 11_689_512), ('resnet50', 25_557_032),
    ('resnet101', 44_549_160), ('resnet152', 60_192_808), ('resnext50_32x4d', 25_028_904)])
def test_imagenet_backbones_match_torchvision_sizes(name, expected):
  model = build_model(imagenet_cfg(name), 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert count(variables['params']) == expected


def test_resnext_groups_and_feature_size():
  model = build_model(imagenet_cfg('resnext50_32x4d'), 5)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  grouped = variables['params']['backbone']['Bottleneck_0']['Conv_1']['kernel']
  assert grouped.shape == (3, 3, 4, 128)  # 32 groups of 4 input channels, 128 = 32 x 4 wide
  assert variables['params']['head']['Dense_0']['kernel'].shape == (2048, 5)


def test_conv_init_over_fan_in_or_fan_out():
  """fan_in: N(0, 2 / (k k in/groups)), LDAM-DRW's / BagofTricks-LT's ResNet-32
  (kaiming_normal_); fan_out: N(0, 2 / (k k out)), Kang et al.'s ResNext
  (normal_(0, sqrt(2 / n)), n = k k out_channels) and torchvision's, whatever the groups."""
  model = build_model(imagenet_cfg('resnext50_32x4d', conv_init='fan_out'), 5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']['backbone']
  grouped = np.asarray(params['Bottleneck_0']['Conv_1']['kernel'])  # 3x3, 32 groups of 4 -> 128
  assert abs(grouped.std() - np.sqrt(2 / (9 * 128))) < 0.02 * np.sqrt(2 / (9 * 128))
  stem = np.asarray(params['Conv_0']['kernel'])  # 7x7, 3 -> 64
  assert abs(stem.std() - np.sqrt(2 / (49 * 64))) < 0.03 * np.sqrt(2 / (49 * 64))
  model = build_model(imagenet_cfg('resnext50_32x4d', conv_init='fan_in'), 5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']['backbone']
  grouped = np.asarray(params['Bottleneck_0']['Conv_1']['kernel'])
  assert abs(grouped.std() - np.sqrt(2 / (9 * 4))) < 0.02 * np.sqrt(2 / (9 * 4))
  conv = np.asarray(build_model(cfg(), 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
                    ['params']['backbone']['BasicBlock_0']['Conv_0']['kernel'])  # 3x3, 16 -> 16
  assert abs(conv.std() - np.sqrt(2 / (9 * 16))) < 0.03 * np.sqrt(2 / (9 * 16))
  with pytest.raises(ConfigError, match='model.conv_init'):
    build_model(model_config(conv_init='lecun'), 10)


def test_large_configs_init_as_their_reference_code():
  from configs import cifar_lt, imagenet_lt, inat18

  for config in (imagenet_lt.get_config('method=dive'), inat18.get_config('method=ssd')):
    assert (config.model.conv_init, config.model.head_init) == ('fan_out', 'torch')
  assert cifar_lt.get_config('method=bsce').model.conv_init == 'fan_in'


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_bfloat16_computes_in_bf16_keeps_float32_parameters():
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  outs = {}
  for dtype in ('float32', 'bfloat16'):
    model = build_model(imagenet_cfg('resnet10', dtype), 7)
    variables = model.init(jax.random.key(0), x, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    outs[dtype] = out
    jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
    assert ('bf16[' in jaxpr) == (dtype == 'bfloat16')
  assert outs['bfloat16']['features'].dtype == jnp.float32
  # Same parameters, bf16 arithmetic: close to float32, not equal.
  np.testing.assert_allclose(outs['bfloat16']['logits'], outs['float32']['logits'], rtol=0.1, atol=0.1)
  assert not np.array_equal(outs['bfloat16']['logits'], outs['float32']['logits'])
