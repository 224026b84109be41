"""torchvision's ResNet weights in ltjax's backbones, against torchvision's own forward.

``tests/fixtures/torchvision_resnets.npz`` (``bench/torchvision_fixture.py``, torch
2.14.1 / torchvision 0.29.1 CPU) holds torchvision's state-dict names and shapes, and for
ResNet-18, ResNet-50 and ResNeXt-50 the pooled features and logits of ``model.eval()``
on two 64x64 images, with weights and images drawn by the script's NumPy functions, which
this test calls too. Measured (float32, jax 0.12 CPU): the largest feature difference is
5.7e-7 (ResNet-18), 6.8e-7 (ResNet-50) and 5.0e-7 (ResNeXt-50) of the largest feature;
the test allows 1e-4 of it.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import torchvision_fixture as tvf
from configs import common
from ltjax.errors import ConfigError
from ltjax import files
from ltjax.models import build_model, pretrained
from ltjax.models.resnet import IMAGENET_RESNETS

FIXTURE = pathlib.Path(__file__).parent.parent / 'fixtures' / 'torchvision_resnets.npz'


def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def spec(fx, name):
  return [(k, tuple(s)) for k, s in json.loads(str(fx[f'{name}/spec']))]


def model_config(name, **fields):
  c = common.base_config().model
  c.update(dict(name=name, conv_impl='xla', **fields))
  return c


def loaded(name, fx, num_classes=7):
  """An ltjax model of ``name`` with the fixture's weights in its backbone."""
  model = build_model(model_config(name), num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  stages, bottleneck, _, _ = IMAGENET_RESNETS[name]
  backbone = pretrained.load_backbone(
      {'params': variables['params']['backbone'], 'batch_stats': variables['batch_stats']['backbone']},
      tvf.random_state(spec(fx, name)), stages, bottleneck)
  variables = {'params': {**variables['params'], 'backbone': backbone['params']},
               'batch_stats': {**variables['batch_stats'], 'backbone': backbone['batch_stats']}}
  return model, variables


@pytest.mark.parametrize('name', tvf.FORWARD)
def test_features_match_torchvision(name):
  fx = fixture()
  model, variables = loaded(name, fx)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, tvf.random_images())
  expected = fx[f'{name}/features']
  np.testing.assert_allclose(np.asarray(out['features']), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_fc_and_counters_are_left_out():
  """The ImageNet classifier (fc) and BatchNorm's num_batches_tracked are not loaded; the
  head keeps its own initialisation; nothing else is left at its random init."""
  fx = fixture()
  model = build_model(model_config('resnet18'), 1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  state = tvf.random_state(spec(fx, 'resnet18'))
  out = pretrained.load_backbone({'params': variables['params']['backbone'],
                                  'batch_stats': variables['batch_stats']['backbone']}, state, *IMAGENET_RESNETS['resnet18'][:2])
  for col in ('params', 'batch_stats'):
    for leaf in jax.tree.leaves(out[col]):
      assert isinstance(leaf, np.ndarray)  # every leaf came from the file
  np.testing.assert_array_equal(out['params']['Conv_0']['kernel'], state['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(out['batch_stats']['ImageNetBasicBlock_2']['BatchNorm_0']['var'], state['layer2.0.bn1.running_var'])
  np.testing.assert_array_equal(out['params']['ImageNetBasicBlock_2']['BatchNorm_2']['scale'],
                                state['layer2.0.downsample.1.weight'])


@pytest.mark.parametrize('name', tvf.SPEC_ONLY)
def test_deep_resnets_take_every_tensor(name):
  """ResNet-101/152: every torchvision tensor (fc aside) finds its variable, and every
  backbone variable is set (shapes only: no forward)."""
  fx = fixture()
  model = build_model(model_config(name), 365)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  sp = spec(fx, name)
  state = {k: np.zeros(s, np.float32) for k, s in sp}
  out = pretrained.load_backbone({'params': zeros['params']['backbone'], 'batch_stats': zeros['batch_stats']['backbone']},
                                 state, *IMAGENET_RESNETS[name][:2])
  size = sum(int(np.prod(s)) for k, s in sp if not k.startswith('fc.') and not k.endswith('num_batches_tracked'))
  assert sum(leaf.size for leaf in jax.tree.leaves(out)) == size


def test_wrong_network_is_an_error_that_lists_the_misfits():
  fx = fixture()
  model = build_model(model_config('resnet18'), 5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  backbone = {'params': variables['params']['backbone'], 'batch_stats': variables['batch_stats']['backbone']}
  with pytest.raises(ConfigError, match=r'(?s)does not fit this backbone.*layer1\.0\.conv1\.weight: shape.*model\.name'):
    pretrained.load_backbone(backbone, tvf.random_state(spec(fx, 'resnet50')), *IMAGENET_RESNETS['resnet18'][:2])
  state = tvf.random_state(spec(fx, 'resnet18'))
  del state['layer4.1.bn2.running_var']
  with pytest.raises(ConfigError, match='layer4.1.bn2.running_var: missing'):
    pretrained.load_backbone(backbone, state, *IMAGENET_RESNETS['resnet18'][:2])


def test_file_formats(tmp_path):
  """.npz (and the DataParallel 'module.' prefix), .safetensors and .pth read alike; an
  unknown extension or a missing file is a ConfigError that says what to do."""
  fx = fixture()
  state = tvf.random_state(spec(fx, 'resnet18'))
  np.savez(tmp_path / 'w.npz', **{f'module.{k}': v for k, v in state.items()})
  read = pretrained.read_state_dict(str(tmp_path / 'w.npz'))
  assert read.keys() == state.keys()
  np.testing.assert_array_equal(read['layer3.1.conv2.weight'], state['layer3.1.conv2.weight'])
  safetensors = pytest.importorskip('safetensors.numpy')
  safetensors.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / 'w.safetensors'))
  read = pretrained.read_state_dict(str(tmp_path / 'w.safetensors'))
  np.testing.assert_array_equal(read['fc.weight'], state['fc.weight'])
  pretrained.convert(str(tmp_path / 'w.safetensors'), str(tmp_path / 'converted.npz'))  # the README's convert
  read = pretrained.read_state_dict(str(tmp_path / 'converted.npz'))
  assert read.keys() == state.keys()
  np.testing.assert_array_equal(read['layer4.1.bn2.running_var'], state['layer4.1.bn2.running_var'])
  with pytest.raises(ConfigError, match='unknown weights format'):
    pretrained.read_state_dict(str(tmp_path / 'w.h5'))
  with pytest.raises(ConfigError, match='no such file'):
    pretrained.read_state_dict(str(tmp_path / 'absent.npz'))


def test_checksum_is_checked(tmp_path):
  path = tmp_path / 'w.npz'
  np.savez(path, a=np.zeros(3))
  import hashlib
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  assert files.fetch(str(path), digest) == str(path)
  with pytest.raises(ConfigError, match='sha256'):
    files.fetch(str(path), '0' * 64)
  # A download named as torchvision's are (resnet152-394f9c45.pth: the start of its sha256)
  # is checked against it; a local file of such a name (a converted .npz) is not.
  served = tmp_path / 'served'
  served.mkdir()
  (served / f'resnet-{digest[:8]}.npz').write_bytes(path.read_bytes())
  (served / 'resnet-0badf00d.npz').write_bytes(path.read_bytes())
  cache = tmp_path / 'cache'
  got = files.fetch((served / f'resnet-{digest[:8]}.npz').as_uri(), cache_dir=str(cache))
  assert got.startswith(str(cache)) and got.endswith(f'resnet-{digest[:8]}.npz')
  assert pathlib.Path(got).read_bytes() == path.read_bytes()
  with pytest.raises(ConfigError, match=r'does not start with the 0badf00d.*delete .*resnet-0badf00d.npz'):
    files.fetch((served / 'resnet-0badf00d.npz').as_uri(), cache_dir=str(cache))
  assert files.fetch(str(served / 'resnet-0badf00d.npz')) == str(served / 'resnet-0badf00d.npz')
  with pytest.raises(ConfigError, match='download failed'):
    files.fetch((served / 'absent-12345678.npz').as_uri(), cache_dir=str(cache))


@pytest.mark.slow  # trains end to end
def test_a_run_starts_from_the_file_and_resumes_without_it(tmp_path):
  """model.pretrained through the trainer: a phase that starts afresh takes the file's
  backbone (here torchvision's ResNet-18 names and shapes, with a 1-channel stem for the
  embedded 8x8 digits; lr 1e-9, so one epoch moves no weight measurably) and its own
  head; resumed, it reads its checkpoint, not the file (gone by then)."""
  from configs import digits_lt
  from ltjax import parallel, recipes, train
  from ltjax.data import registry

  fx = fixture()
  sp = [(k, (64, 1, 7, 7) if k == 'conv1.weight' else s) for k, s in spec(fx, 'resnet18')]
  state = tvf.random_state(sp)
  np.savez(tmp_path / 'r18.npz', **state)
  config = digits_lt.get_config('smoke')
  config.model.update(dict(name='resnet18', conv_impl='xla', pretrained=str(tmp_path / 'r18.npz')))
  config.train.update(dict(epochs=1, lr=1e-9, momentum=0.0, weight_decay=0.0, warmup_epochs=0))
  config.run.checkpoint_min_seconds = 0
  dataset = registry.load(config)
  mesh = parallel.make_mesh(1)
  phase = recipes.phases(config, dataset)[0]
  variables, _ = train.train_phase(phase, dataset, config, str(tmp_path / 'ce'), mesh)
  backbone = variables['params']['backbone']
  np.testing.assert_allclose(backbone['Conv_0']['kernel'], state['conv1.weight'].transpose(2, 3, 1, 0), atol=1e-6)
  np.testing.assert_allclose(backbone['ImageNetBasicBlock_7']['BatchNorm_1']['scale'], state['layer4.1.bn2.weight'],
                             atol=1e-6)
  assert variables['params']['head']['Dense_0']['kernel'].shape == (512, dataset.num_classes)
  (tmp_path / 'r18.npz').unlink()
  config.train.epochs = 2  # one more epoch: the phase resumes from its checkpoint
  again, stats = train.train_phase(recipes.phases(config, dataset)[0], dataset, config, str(tmp_path / 'ce'), mesh)
  assert stats['steps_run'] > 0


def test_pretrained_needs_an_imagenet_resnet():
  from ltjax import config_lib

  c = common.base_config()
  c.model.pretrained = 'resnet50.npz'
  with pytest.raises(ConfigError, match='model.pretrained.*set model.name'):
    config_lib.validate(c)
