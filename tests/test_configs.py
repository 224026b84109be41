"""The paper numbers that live in configs: the CIFAR-LT schedule, DiVE's defaults, and
a shortened schedule keeping the shape of the full one."""
import pytest

from configs import cifar_lt, digits_lt, imagenet_lt, inat18
from ltjax import config_lib


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('imb', [10, 50, 100])
def test_dive_cifar_configs_have_the_paper_schedule(dataset, imb):
  c = cifar_lt.get_config(f'dataset={dataset},imb={imb},method=dive')
  assert (c.method, c.data.name, c.data.imbalance_factor) == ('dive', dataset, imb)
  assert (c.model.name, c.model.depth) == ('cifar_resnet', 32)
  t = c.train
  assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (200, 128, 0.1, 0.9, 2e-4)
  assert (t.schedule, t.warmup_epochs, tuple(t.lr_boundaries), t.lr_decay) == ('step', 5.0, (120, 160), 0.01)
  d = c.dive
  assert (d.temperature, d.power, d.alpha, d.use_bsce, d.target) == (3.0, 0.5, 0.5, True, 't_tau')


def test_shortened_schedule_scales_in_proportion():
  c = cifar_lt.get_config('method=ldam_drw,epochs=20')
  assert c.train.epochs == 20 and c.train.warmup_epochs == 0.5
  assert tuple(c.train.lr_boundaries) == (16.0, 18.0) and c.loss.drw_epoch == 16
  with pytest.raises(config_lib.ConfigError, match='at least 1 epoch'):
    cifar_lt.get_config('epochs=0')


def test_digits_default_is_dive():
  assert digits_lt.get_config().method == 'dive'


@pytest.mark.parametrize('method', ['ce', 'bsce', 'dive'])
def test_large_configs_have_the_decoupling_schedule(method):
  for module, data, model in ((imagenet_lt, 'imagenet_lt', 'resnext50_32x4d'), (inat18, 'inat18', 'resnet50')):
    c = module.get_config(f'method={method}')
    assert (c.method, c.data.name, c.model.name, c.model.dtype) == (method, data, model, 'bfloat16')
    t = c.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.schedule, t.warmup_epochs) == (90, 512, 0.2, 5e-4, 'cosine', 0.0)
    assert (c.data.image_size, c.data.resize_size, c.data.augment.jitter, c.data.augment.pad) == (224, 256, 0.4, 0)
    assert c.data.mock_examples == 0


def test_ssd_large_configs_have_the_official_recipe():
  c = imagenet_lt.get_config('method=ssd')
  assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.schedule) == (135, 256, 0.1, 'cosine')
  assert (c.ssd.selfsup, c.ssd.queue_size, c.ssd.moco_momentum, c.ssd.moco_temperature) == ('contrastive', 115_712, 0.999, 0.2)
  assert c.ssd.generator == 'lws' and c.stage2.epochs == 5 and c.stage2.lr == 0.2
  assert inat18.get_config('method=ssd').train.epochs == 90  # SSD's "1x"
  assert inat18.get_config('method=dive,epochs=200').train.epochs == 200


def test_large_config_variants_and_errors():
  c = imagenet_lt.get_config('method=dive,mock')
  assert c.data.mock_examples == 64 and c.train.batch_size == 16 and c.train.lr == pytest.approx(0.2 * 16 / 512)
  assert imagenet_lt.get_config('smoke').data.mock_examples == 0
  with pytest.raises(config_lib.ConfigError, match='ldam_drw'):
    imagenet_lt.get_config('method=ldam_drw')
