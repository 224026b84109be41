"""The paper numbers that live in configs: the CIFAR-LT schedule, DiVE's defaults, and
a shortened schedule keeping the shape of the full one."""
import pytest

from configs import cifar_lt, digits_lt
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
