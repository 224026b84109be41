"""The paper numbers that live in configs: the CIFAR-LT schedule, DiVE's defaults, and
a shortened schedule keeping the shape of the full one."""
import os

import jax
import numpy as np
import pytest

from configs import cifar_lt, common, digits_lt, folder_lt, imagenet_lt, inat18, places_lt
from ltjax import config_lib, train


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('imb', [10, 50, 100])
def test_dive_cifar_configs_have_the_paper_schedule(dataset, imb):
  c = cifar_lt.get_config(f'dataset={dataset},imb={imb},method=dive')
  assert (c.method, c.data.name, c.data.imbalance_factor) == ('dive', dataset, imb)
  assert (c.model.name, c.model.depth) == ('cifar_resnet', 32)
  t = c.train
  assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (200, 128, 0.1, 0.9, 2e-4)
  # The DiVE paper's BBN recipe: milestones 120 and 160 of BBN's 1-based epoch count.
  points = train.schedule_points(t)
  assert (t.schedule, points.warmup, points.warmup_epochs, points.boundaries, t.lr_decay) == (
      'step', 'bbn', 5.0, (119, 159), 0.01)
  assert t.nesterov and c.data.drop_last
  d = c.dive
  assert (d.temperature, d.power, d.alpha, d.use_bsce, d.target) == (3.0, 0.5, 0.5, True, 't_tau')


def test_shortened_schedule_scales_in_proportion():
  c = cifar_lt.get_config('method=ldam_drw,epochs=20')
  points = train.schedule_points(c.train)
  assert c.train.epochs == 20 and points.warmup_epochs == 0.5
  assert points.boundaries == (16, 18) and train.scaled_epoch(c.train, c.loss.drw_epoch) == 16
  with pytest.raises(config_lib.ConfigError, match='at least 1 epoch'):
    cifar_lt.get_config('epochs=0')
  # BBN's 1-based milestones 120 and 160 scale to 60 and 80: the decay from 0-based 59, 79,
  # at epoch starts; the per-epoch warm-up keeps its shape over 2.5 epochs.
  points = train.schedule_points(cifar_lt.get_config('method=dive,epochs=100').train)
  assert (points.warmup, points.warmup_epochs, points.boundaries) == ('bbn', 2.5, (59, 79))
  # Under 2 warm-up epochs the warm-up rises every step (a per-epoch one would be no warm-up).
  points = train.schedule_points(cifar_lt.get_config('method=dive,epochs=6').train)
  assert (points.warmup, points.warmup_epochs, points.boundaries) == ('linear', 0.15, (3, 4))


def test_run_length_override_scales_the_schedule_too():
  """--config.train.epochs=N is the same run as the argument epochs=N: the schedule's
  points scale with the length wherever it is set (no hand rescaling in a config)."""
  for method in ('dive', 'ldam_drw', 'ce'):
    by_argument = cifar_lt.get_config(f'method={method},epochs=20').train
    overridden = cifar_lt.get_config(f'method={method}').train
    overridden.epochs = 20
    assert train.schedule_points(overridden) == train.schedule_points(by_argument)
    lr = lambda tc: np.asarray(jax.vmap(train.make_schedule(tc, 7))(np.arange(20 * 7)))
    np.testing.assert_array_equal(lr(overridden), lr(by_argument))
  # The digits' 60-epoch points scale the same way; at 60 they are unchanged.
  d = digits_lt.get_config().train
  assert train.schedule_points(d) == train.SchedulePoints('linear', 2.0, (40, 50))
  d.epochs = 30
  assert train.schedule_points(d) == train.SchedulePoints('linear', 1.0, (20, 25))
  # The classifier stage keeps its own length.
  from ltjax.recipes import decoupled

  s2 = decoupled.stage2_train_config(cifar_lt.get_config('method=crt'))
  assert train.schedule_points(s2).warmup_epochs == 0.0 and s2.epochs == 10


def _ldam_reference_lr(epoch, lr=0.1):
  """kaidic/LDAM-DRW cifar_train.py adjust_learning_rate, called before each epoch."""
  epoch = epoch + 1
  if epoch <= 5:
    return lr * epoch / 5
  if epoch > 180:
    return lr * 0.0001
  if epoch > 160:
    return lr * 0.01
  return lr


def _bbn_reference_lr(epoch, milestones, lr=0.1, gamma=0.01):
  """BBN / BagofTricks-LT WarmupMultiStepLR(warmup_factor=1/3, warmup_epochs=5,
  gamma), stepped before each epoch of ``range(1, 201)``: 0-based epoch e trains
  with ``last_epoch = e + 1``."""
  import bisect

  last_epoch = epoch + 1
  factor = 1.0
  if last_epoch < 5:
    alpha = last_epoch / 5
    factor = 1 / 3 * (1 - alpha) + alpha
  return lr * factor * gamma ** bisect.bisect_right(milestones, last_epoch)


@pytest.mark.parametrize('method', ['crt', 'lws', 'tau_norm'])
def test_bag_classifier_stage_is_bagoftricks_classifier_balancing(method):
  """BagofTricks-LT's cRT / LWS configs: 30 epochs, WarmupMultiStepLR(lr 0.1, 5 warm-up
  epochs, x0.1 at 10 and 20), weight decay 5e-4, Nesterov, 'balance' sampling with
  replacement, batch 128; its tau-norm keeps the bias. Other schedules keep Kang et al.'s
  stage (10 epochs, cosine, class-aware cycles, plain momentum, tau-norm without bias)."""
  from ltjax import train
  from ltjax.recipes import decoupled

  c = cifar_lt.get_config(f'method={method},schedule=bag')
  config_lib.validate(c)
  s2 = decoupled.stage2_train_config(c)
  spe = 97
  lr = train.make_schedule(s2, spe)
  got = np.asarray(jax.vmap(lr)(np.arange(30) * spe))
  want = np.array([_bbn_reference_lr(e, [10, 20], gamma=0.1) for e in range(30)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.vmap(lr)(np.arange(30) * spe + spe - 1)), want, rtol=1e-5)
  assert (s2.epochs, s2.batch_size, s2.weight_decay, s2.momentum, s2.nesterov) == (30, 128, 5e-4, 0.9, True)
  assert (c.stage2.sampler, c.stage2.backbone_bn, c.loss.tau_norm_bias) == ('class', 'train', True)
  # The CE phase is BagofTricks-LT's baseline (the bag protocol itself).
  assert tuple(c.train.lr_boundaries) == (160, 180) and c.train.nesterov
  kang = cifar_lt.get_config(f'method={method},schedule=bbn')
  s2 = decoupled.stage2_train_config(kang)
  assert (s2.epochs, s2.schedule, s2.nesterov, s2.weight_decay) == (10, 'cosine', False, 2e-4)
  assert (kang.stage2.sampler, kang.loss.tau_norm_bias) == ('class_aware', False)


@pytest.mark.parametrize('schedule,method', [('ldam', 'ldam_drw'), ('bbn', 'dive'), ('bag', 'bsce'),
                                             ('', 'ce'), ('', 'ce_drw'), ('', 'cb_focal'), ('', 'cb')])
def test_named_schedules_give_the_reference_codes_lr_every_epoch(schedule, method):
  from ltjax import train

  arg = f'method={method}' + (f',schedule={schedule}' if schedule else '')
  c = cifar_lt.get_config(arg)
  schedule = schedule or ('ldam' if method in cifar_lt.LDAM_METHODS else 'bbn')
  reference = {'ldam': _ldam_reference_lr,
               'bbn': lambda e: _bbn_reference_lr(e, [120, 160]),
               'bag': lambda e: _bbn_reference_lr(e, [160, 180])}[schedule]
  spe = 97
  lr = train.make_schedule(c.train, spe)
  steps = np.arange(200) * spe
  got = np.asarray(jax.vmap(lr)(steps))
  want = np.array([reference(e) for e in range(200)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Constant within an epoch, as the reference sets it once per epoch.
  np.testing.assert_allclose(np.asarray(jax.vmap(lr)(steps + spe - 1)), want, rtol=1e-5)
  assert c.train.nesterov == (schedule != 'ldam') and c.data.drop_last == (schedule != 'ldam')
  assert c.loss.drw_epoch == 160


def test_unknown_schedule_is_refused():
  with pytest.raises(config_lib.ConfigError, match='ldam: LDAM-DRW'):
    cifar_lt.get_config('schedule=cosine')


def test_digits_default_is_dive():
  assert digits_lt.get_config().method == 'dive'


@pytest.mark.parametrize('method', ['ce', 'bsce', 'dive'])
def test_large_configs_have_the_decoupling_schedule(method):
  for module, data, model, wd in ((imagenet_lt, 'imagenet_lt', 'resnext50_32x4d', 5e-4),
                                  (inat18, 'inat18', 'resnet50', 1e-4)):
    c = module.get_config(f'method={method}')
    assert (c.method, c.data.name, c.model.name, c.model.dtype) == (method, data, model, 'bfloat16')
    t = c.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.warmup_epochs) == (90, 512, 0.2, wd, 0.0)
    assert (t.schedule, t.first_epoch) == ('cosine_epoch', 1)  # CosineAnnealingLR stepped before each epoch
    assert c.data.drop_last  # int(N / 512) steps an epoch
    jitter, mean = (0.4, (0.485, 0.456, 0.406)) if data == 'imagenet_lt' else (0.0, (0.466, 0.471, 0.380))
    assert (c.data.image_size, c.data.resize_size, c.data.augment.jitter, c.data.augment.pad) == (224, 256, jitter, 0)
    assert tuple(c.data.augment.mean) == mean  # Kang et al.'s dataloader.py: iNaturalist's own, no jitter
    assert c.data.mock_examples == 0


def test_ssd_large_configs_have_the_official_recipe():
  c = imagenet_lt.get_config('method=ssd')
  assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.schedule) == (135, 256, 0.1, 'cosine_epoch')
  # adjust_learning_rate(epoch) from 0-based epochs.
  assert c.train.first_epoch == 0 and c.stage2.first_epoch == 0
  assert (c.train.weight_decay, c.stage2.weight_decay) == (5e-4, 5e-4)
  assert inat18.get_config('method=ssd').train.weight_decay == 5e-4  # SSD-LT's, on iNaturalist too
  assert (c.stage2.sampler, c.stage2.samples_per_class) == ('class_aware', 2)  # stage II's num_samples_cls
  assert c.data.drop_last  # every stage's DataLoader
  for config in (cifar_lt, digits_lt):
    assert config.get_config('method=ssd').stage2.samples_per_class == 2
    assert config.get_config('method=crt').stage2.samples_per_class == 4
  assert (c.ssd.selfsup, c.ssd.queue_size, c.ssd.moco_momentum, c.ssd.moco_temperature) == ('contrastive', 115_712, 0.999, 0.2)
  assert c.ssd.generator == 'lws' and c.stage2.epochs == 5 and c.stage2.lr == 0.2
  # Phase II (and IV) at the official stage II's batch 512, phase I at 256; elsewhere the
  # classifier stage takes the main phase's batch (stage2.batch_size 0).
  from ltjax.recipes import decoupled

  assert (decoupled.stage2_train_config(c).batch_size, c.train.batch_size) == (512, 256)
  assert decoupled.stage2_train_config(imagenet_lt.get_config('method=crt')).batch_size == 512
  assert decoupled.stage2_train_config(imagenet_lt.get_config('method=ssd,smoke')).batch_size == 16
  assert decoupled.stage2_train_config(cifar_lt.get_config('method=crt')).batch_size == 128
  assert inat18.get_config('method=ssd').train.epochs == 90  # SSD's "1x"
  assert inat18.get_config('method=dive,epochs=200').train.epochs == 200
  # MoCo: stages II and III in model.train(), as the official code.
  assert (c.ssd.generator_bn, c.ssd.teacher_bn, c.stage2.backbone_bn) == ('train', 'train', 'train')


def test_ssd_cifar_config_has_the_official_stage_ii_and_keeps_rotations_normalisation():
  """SSD-LT's ssd_stage_ii.py defaults (5 epochs, batch 512, lr 0.2 cosine once an epoch from
  epoch 0, weight decay 5e-4, plain momentum) for phases II and IV; the rotation-trained
  phase-I network frozen on its running statistics, phase IV's backbone as stage2 says."""
  from ltjax.recipes import decoupled

  for imb in (100, 10):
    c = cifar_lt.get_config(f'method=ssd,imb={imb}')
    t = decoupled.stage2_train_config(c)
    assert (t.epochs, t.batch_size, t.lr, t.schedule, t.first_epoch, t.warmup_epochs) == (5, 512, 0.2, 'cosine_epoch', 0, 0.0)
    assert (t.weight_decay, t.nesterov, c.stage2.sampler, c.stage2.samples_per_class) == (5e-4, False, 'class_aware', 2)
    assert (c.train.batch_size, c.train.epochs, c.train.nesterov) == (128, 200, True)  # phases I and III: bbn
    assert (c.ssd.selfsup, c.ssd.generator_bn, c.ssd.teacher_bn, c.stage2.backbone_bn) == ('rotation', 'eval', 'eval', 'train')
  # The other classifier methods keep their own stage.
  assert decoupled.stage2_train_config(cifar_lt.get_config('method=crt')).epochs == 10
  assert decoupled.stage2_train_config(cifar_lt.get_config('method=lws,schedule=bag')).epochs == 30


def test_rotation_with_a_training_mode_phase_one_network_is_warned_about(capsys):
  c = cifar_lt.get_config('method=ssd')
  config_lib.validate(c)
  assert 'warning' not in capsys.readouterr().out
  c.ssd.teacher_bn = 'train'
  config_lib.validate(c)
  out = capsys.readouterr().out
  assert 'ssd.teacher_bn=train with ssd.selfsup=rotation' in out and '--config.ssd.teacher_bn=eval' in out
  c.ssd.teacher_bn = 'eval'
  c.ssd.student_selfsup = True  # the student trains on rotations too: phase IV's backbone
  config_lib.validate(c)
  out = capsys.readouterr().out
  assert 'stage2.backbone_bn=train (phase IV' in out and '--config.stage2.backbone_bn=eval' in out
  c.ssd.selfsup = 'contrastive'  # the official pairing: no warning
  config_lib.validate(c)
  assert 'warning' not in capsys.readouterr().out


def test_large_configs_have_kangs_classifier_stages():
  """cls_crt.yaml / cls_lws.yaml: ImageNet-LT 10 / 5 epochs, iNaturalist 30 / 5, lr 0.2,
  weight decay 5e-4 / 1e-4, the per-epoch cosine, ClassAwareSampler with 4 images a turn,
  and int(N / 512) steps an epoch (run_networks.py's epoch_steps: drop_last)."""
  from ltjax.recipes import decoupled

  for module, crt_epochs, wd in ((imagenet_lt, 10, 5e-4), (inat18, 30, 1e-4)):
    for method, epochs in (('crt', crt_epochs), ('lws', 5)):
      c = module.get_config(f'method={method}')
      t = decoupled.stage2_train_config(c)
      assert (t.epochs, t.batch_size, t.lr, t.weight_decay) == (epochs, 512, 0.2, wd)
      assert (t.schedule, t.first_epoch) == ('cosine_epoch', 1)
      assert (c.stage2.sampler, c.stage2.samples_per_class, c.data.drop_last) == ('class_aware', 4, True)
      assert c.train.weight_decay == wd
  # CIFAR's classifier stage: cosine every step, the reference codes' class-aware cycles.
  c = cifar_lt.get_config('method=crt')
  assert (c.stage2.schedule, c.stage2.epochs, c.stage2.sampler) == ('cosine', 10, 'class_aware')
  # ImageNet-LT: stage 2 and DiVE's student start from the best validation epoch
  # (load_model's state_dict_best; BALMS's code the same), tau over tau_norm.py's
  # np.linspace(0, 2, 21); SSD-LT's stages pass on their last checkpoint.
  for method in ('crt', 'lws', 'tau_norm', 'dive'):
    c = imagenet_lt.get_config(f'method={method}')
    assert (c.handoff, c.run.val_every_epochs) == ('best_val', 1)
  np.testing.assert_allclose(imagenet_lt.get_config('method=tau_norm').loss.tau_norm_sweep, np.linspace(0, 2, 21))
  # Fields a method does not read keep their defaults, so that its runs' workdirs from
  # before they were set still resume.
  default = common.base_config()
  for method in ('ssd', 'ce', 'bsce'):
    c = imagenet_lt.get_config(f'method={method}')
    assert (c.handoff, c.loss.tau_norm_sweep) == ('last', default.loss.tau_norm_sweep)
  c = inat18.get_config('method=tau_norm')  # no validation split: the last epoch, Kang's grid on the test set
  assert (c.handoff, c.run.val_every_epochs, len(c.loss.tau_norm_sweep)) == ('last', 0, 21)


def test_places_lt_config_is_oltrs_stage_1_and_kangs_stage_2():
  """OLTR's config/Places_LT/stage_1.py for the CE phase (ResNet-152 from ImageNet weights,
  30 epochs, batch 128, feature lr 0.001 and classifier lr 0.1, weight decay 5e-4,
  StepLR(10, 0.1) stepped after each epoch, int(N / 128) steps); Kang et al.'s
  config/Places_LT/cls_crt.yaml and cls_lws.yaml for stage 2 (10 / 5 epochs, batch 256,
  lr 0.1, cosine stepped before each epoch, class-aware cycles of 4, BatchNorm in training
  mode)."""
  from ltjax import train
  from ltjax.recipes import decoupled

  c = places_lt.get_config('method=crt')
  assert (c.data.name, c.model.name, c.model.pretrained) == ('places_lt', 'resnet152', places_lt.TORCHVISION_RESNET152)
  t = c.train
  assert (t.epochs, t.batch_size, t.lr, t.backbone_lr_scale, t.momentum, t.weight_decay) == (30, 128, 0.1, 0.01, 0.9, 5e-4)
  assert decoupled.stage2_train_config(c).backbone_lr_scale == 1.0  # the refit's backbone is frozen
  schedule = train.make_schedule(t, steps_per_epoch=488)  # int(62,500 / 128)
  np.testing.assert_allclose([schedule(488 * e) for e in (0, 9, 10, 19, 20, 29)], [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  assert schedule(488 * 10 - 1) == pytest.approx(0.1)
  assert c.data.drop_last and c.data.sampler == 'instance'
  for method, epochs in (('crt', 10), ('lws', 5)):
    c = places_lt.get_config(f'method={method}')
    s2 = decoupled.stage2_train_config(c)
    assert (s2.epochs, s2.batch_size, s2.lr, s2.weight_decay, s2.schedule, s2.first_epoch) == \
        (epochs, 256, 0.1, 5e-4, 'cosine_epoch', 1)
    assert (c.stage2.sampler, c.stage2.samples_per_class, c.stage2.backbone_bn) == ('class_aware', 4, 'train')
  assert len(places_lt.get_config('method=tau_norm').loss.tau_norm_sweep) == 21
  # epochs=N scales OLTR's decays with it; scratch, smoke and mock start from random weights.
  short = places_lt.get_config('epochs=6')
  assert train.schedule_points(short.train).boundaries == (2, 4)
  for arg in ('scratch', 'smoke', 'mock'):
    assert places_lt.get_config(arg).model.pretrained == ''
  with pytest.raises(config_lib.ConfigError, match='places_lt.py has ce, crt, lws, tau_norm'):
    places_lt.get_config('method=dive')


def test_pretrained_weights_unreadable_here_are_refused_before_the_run(monkeypatch):
  """A .pth without torch (places_lt.py's default) or a .safetensors without safetensors is
  a ConfigError when the config is checked, not after a download and the data's loading."""
  import importlib.util

  find_spec = importlib.util.find_spec
  c = places_lt.get_config('method=crt')
  monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: object() if n == 'torch' else find_spec(n, *a))
  config_lib.validate(c)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n in ('torch', 'safetensors') else find_spec(n, *a))
  with pytest.raises(config_lib.ConfigError, match=r'a PyTorch file needs torch to read.*convert it once'):
    config_lib.validate(c)
  c.model.pretrained = 'https://huggingface.co/x/model.safetensors'
  with pytest.raises(config_lib.ConfigError, match='pip install safetensors'):
    config_lib.validate(c)
  c.model.pretrained = 'resnet152.npz'
  config_lib.validate(c)
  c.model.pretrained = 'resnet152.h5'
  with pytest.raises(config_lib.ConfigError, match='unknown weights format'):
    config_lib.validate(c)


def test_large_config_variants_and_errors():
  c = imagenet_lt.get_config('method=dive,mock')
  assert c.data.mock_examples == 64 and c.train.batch_size == 16 and c.train.lr == pytest.approx(0.2 * 16 / 512)
  assert imagenet_lt.get_config('smoke').data.mock_examples == 0
  # A one-epoch smoke phase trains (Kang's first_epoch 1 would put its only epoch at lr 0).
  smoke = imagenet_lt.get_config('method=crt,smoke')
  assert smoke.train.first_epoch == smoke.stage2.first_epoch == 0
  with pytest.raises(config_lib.ConfigError, match='ldam_drw'):
    imagenet_lt.get_config('method=ldam_drw')


def test_a_workdir_that_saved_nothing_takes_the_corrected_config(tmp_path, capsys):
  """A run refused after it wrote config.json but before any phase saved (a missing
  teacher, a batch too large) leaves nothing to keep: the corrected command runs there.
  Once a phase has saved a checkpoint (or finished), a changed config is refused."""
  import json

  from ltjax import evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  evaluate.write_results(str(tmp_path / 'config.json'), json.loads(digits_lt.get_config('smoke').to_json()))
  os.makedirs(tmp_path / 'ce' / 'checkpoints')  # started, nothing saved
  c = digits_lt.get_config('smoke')
  c.train.lr = 0.05
  assert pipeline.check_workdir(c, str(tmp_path)) is False  # main then writes its config.json
  assert 'config.json is replaced by this run\'s (train.lr changed)' in capsys.readouterr().out
  os.makedirs(tmp_path / 'ce' / 'checkpoints' / '5')
  with pytest.raises(WorkdirConflictError, match='train.lr: 0.1 in the workdir, 0.05 now'):
    pipeline.check_workdir(c, str(tmp_path))


def test_another_recipes_fields_do_not_block_a_resume(tmp_path):
  """SSD's fields (its BatchNorm defaults changed on 2026-11-29) in a DiVE or CE workdir:
  that run never reads them, so it resumes; in an SSD workdir they are refused."""
  import json

  from ltjax import evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  for method in ('dive', 'ce', 'ssd'):
    old = cifar_lt.get_config(f'method={method}')
    old.ssd.teacher_bn, old.ssd.generator_bn = 'train', 'train'
    old.dive.alpha = 0.3 if method != 'dive' else old.dive.alpha
    workdir = tmp_path / method
    evaluate.write_results(str(workdir / 'config.json'), json.loads(old.to_json()))
    evaluate.write_results(str(workdir / 'selfsup' / 'results.json'), {})  # a phase it finished
    now = cifar_lt.get_config(f'method={method}')
    if method == 'ssd':
      with pytest.raises(WorkdirConflictError, match="ssd.generator_bn: 'train' in the workdir, 'eval' now"):
        pipeline.check_workdir(now, str(workdir))
    else:
      assert pipeline.check_workdir(now, str(workdir))
      now.seed = 3  # what the run computes: still refused
      with pytest.raises(WorkdirConflictError, match='seed: 0 in the workdir, 3 now'):
        pipeline.check_workdir(now, str(workdir))


def test_pretrained_weights_may_move_where_their_hash_pins_them(tmp_path):
  import json

  from ltjax import evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  c = places_lt.get_config('method=ce')
  c.model.pretrained, c.model.pretrained_sha256 = '/old/resnet152.npz', 'ab' * 32
  evaluate.write_results(str(tmp_path / 'config.json'), json.loads(c.to_json()))
  evaluate.write_results(str(tmp_path / 'ce' / 'results.json'), {})  # a phase it finished
  moved = c.copy_and_resolve_references()
  moved.model.pretrained = 'https://example.org/resnet152.npz'
  assert pipeline.check_workdir(moved, str(tmp_path))
  moved.model.pretrained_sha256 = 'cd' * 32  # other weights
  with pytest.raises(WorkdirConflictError, match=r'(?s)model.pretrained: .*model.pretrained_sha256: '):
    pipeline.check_workdir(moved, str(tmp_path))
  moved.model.pretrained, moved.model.pretrained_sha256 = '', 'ab' * 32  # no weights: not a move
  with pytest.raises(WorkdirConflictError, match="model.pretrained: '/old/resnet152.npz' in the workdir, '' now"):
    pipeline.check_workdir(moved, str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match='model.pretrained_sha256 is set without model.pretrained'):
    config_lib.validate(moved)
  unpinned = c.copy_and_resolve_references()
  unpinned.model.pretrained_sha256 = ''
  evaluate.write_results(str(tmp_path / 'config.json'), json.loads(unpinned.to_json()))
  unpinned.model.pretrained = '/new/resnet152.npz'  # no hash: the file may differ
  with pytest.raises(WorkdirConflictError, match="model.pretrained: '/old/resnet152.npz' in the workdir"):
    pipeline.check_workdir(unpinned, str(tmp_path))


def test_workdir_check_lets_only_the_run_group_change(tmp_path):
  """How a run executes (config.run: data location, devices, cadence, phases) may change
  when a workdir is resumed; anything that changes what it computes is refused."""
  import json

  from ltjax import evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  evaluate.write_results(str(tmp_path / 'config.json'), json.loads(digits_lt.get_config('smoke').to_json()))
  evaluate.write_results(str(tmp_path / 'ce' / 'results.json'), {})  # a phase it finished
  c = digits_lt.get_config('smoke')
  c.run.update(data_dir='/elsewhere', cache_dir='/cache', num_devices=2, phases='ce', eval_batch_size=64,
               host_threads=2, log_every_steps=1, eval_every_epochs=1, checkpoint_min_seconds=0.0)
  assert pipeline.check_workdir(c, str(tmp_path))
  c.train.lr = 0.05
  c.data.augment.pad = 2
  with pytest.raises(WorkdirConflictError) as e:
    pipeline.check_workdir(c, str(tmp_path))
  assert 'train.lr: 0.1 in the workdir, 0.05 now' in str(e.value)
  assert 'data.augment.pad: 1 in the workdir, 2 now' in str(e.value) and 'run.' not in str(e.value)
  assert 'not a field of both' not in str(e.value) and 'added since' not in str(e.value)


def test_workdir_check_reads_fields_added_since_a_run_as_they_then_were(tmp_path):
  """A run recorded before a field existed resumes under a newer ltjax when the field's
  value now gives what ltjax computed then (config_lib.LEGACY_VALUES), and is refused,
  saying why, when it does not."""
  import json

  from ltjax import config_lib, evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  def record(config, drop):
    recorded = json.loads(config.to_json())
    for key in drop:
      *groups, field = key.split('.')
      node = recorded
      for group in groups:
        node = node[group]
      del node[field]
    evaluate.write_results(str(tmp_path / 'config.json'), recorded)
    os.makedirs(tmp_path / 'ce' / 'checkpoints' / '7', exist_ok=True)  # a checkpoint it saved

  old = digits_lt.get_config('smoke,method=ssd')
  old.ssd.teacher_bn, old.stage2.backbone_bn = 'eval', 'eval'  # what ltjax did before the fields
  record(old, [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD])
  assert pipeline.check_workdir(old, str(tmp_path))
  with pytest.raises(WorkdirConflictError) as e:
    pipeline.check_workdir(digits_lt.get_config('smoke,method=ssd'), str(tmp_path))  # today's defaults
  assert "stage2.backbone_bn: 'eval' (before the field existed) in the workdir, 'train' now" in str(e.value)
  assert 'stage2.samples_per_class' not in str(e.value) and 'progressive_form' not in str(e.value)
  # ssd.generator_bn reads as that run's stage2.backbone_bn (its phase II ran so): 'eval', as today's
  assert 'generator_bn' not in str(e.value) and 'teacher_bn' not in str(e.value)
  # The fix names the flags that resume it as it was (the test's `old` config above).
  assert ("resume it with the workdir's values: --config.stage2.backbone_bn=eval (its config: "
          f"{tmp_path / 'config.json'}); of them, stage2.backbone_bn did not exist when that run started") in str(e.value)
  old = digits_lt.get_config('smoke,method=ssd')
  old.ssd.teacher_bn, old.ssd.generator_bn, old.stage2.backbone_bn = 'train', 'train', 'train'
  record(old, ['ssd.generator_bn'])  # an SSD run of phase II in training mode, before the field
  assert pipeline.check_workdir(old, str(tmp_path))
  with pytest.raises(WorkdirConflictError, match=r"ssd.generator_bn: 'train' \(before the field existed\)"):
    old.ssd.generator_bn = 'eval'
    pipeline.check_workdir(old, str(tmp_path))
  # LDAM-DRW's runs had the shifted cosine classifier; other methods never built it.
  old = digits_lt.get_config('smoke,method=ldam_drw')
  old.ssd.teacher_bn, old.stage2.backbone_bn, old.model.normed_init = 'eval', 'eval', 'shifted'
  record(old, [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD])
  assert pipeline.check_workdir(old, str(tmp_path))
  old.model.normed_init = 'unit'
  with pytest.raises(WorkdirConflictError, match='--config.model.normed_init=shifted'):
    pipeline.check_workdir(old, str(tmp_path))
  # tau_norm's runs kept the CE classifier's bias; no other method reads the field.
  old = digits_lt.get_config('smoke,method=tau_norm')
  old.ssd.teacher_bn, old.stage2.backbone_bn, old.loss.tau_norm_bias = 'eval', 'eval', True
  record(old, [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD])
  assert pipeline.check_workdir(old, str(tmp_path))
  old.loss.tau_norm_bias = False
  with pytest.raises(WorkdirConflictError, match='--config.loss.tau_norm_bias=True'):
    pipeline.check_workdir(old, str(tmp_path))
  # The progressive sampler mixed in t/T; runs with another sampler never read the field.
  old = digits_lt.get_config('smoke,method=ce')
  old.ssd.teacher_bn, old.stage2.backbone_bn = 'eval', 'eval'
  old.data.sampler, old.data.progressive_form = 'progressive', 'paper'
  record(old, [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD])
  assert pipeline.check_workdir(old, str(tmp_path))
  old.data.progressive_form = 'kang'
  with pytest.raises(WorkdirConflictError, match='--config.data.progressive_form=paper'):
    pipeline.check_workdir(old, str(tmp_path))
  old = digits_lt.get_config('smoke,method=ssd')  # its phases sample by instance: the form was never read
  old.ssd.teacher_bn, old.stage2.backbone_bn, old.data.sampler = 'eval', 'eval', 'progressive'
  record(old, [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD])
  assert pipeline.check_workdir(old, str(tmp_path))
  old = digits_lt.get_config('smoke,method=ssd')
  old.ssd.teacher_bn, old.stage2.backbone_bn = 'eval', 'eval'
  # A field added that has no recorded legacy value (or one removed since): absent, and said so.
  record(old, ['data.holdout'])
  with pytest.raises(WorkdirConflictError, match=r"(?s)data.holdout: '<absent>' in the workdir.*"
                                                 r"ltjax version that started it \(data.holdout is not a field of both\)"):
    pipeline.check_workdir(old, str(tmp_path))


def test_configs_cannot_add_fields():
  """The base config is locked: a config (or a test) that sets a field it lacks, such as
  an old name of a moved field, fails instead of adding a field nothing reads."""
  from configs import common

  c = common.base_config()
  with pytest.raises(AttributeError):
    c.log_every_steps = 5  # lives in c.run
  with pytest.raises(AttributeError):
    c.train.eval_batch_size = 64
  c.run.log_every_steps = 5


def test_smoke_keeps_the_imbalance_factor_given():
  assert cifar_lt.get_config('smoke,imb=10').data.imbalance_factor == 10.0
  assert cifar_lt.get_config('smoke').data.imbalance_factor == 100.0


# ---------------------------------------------------------------- every field, bad values
CONFIGS = {'digits_lt': digits_lt.get_config, 'cifar_lt': cifar_lt.get_config,
           'imagenet_lt': imagenet_lt.get_config, 'inat18': inat18.get_config, 'folder_lt': folder_lt.get_config,
           'places_lt': lambda arg: places_lt.get_config(arg or 'scratch')}  # its default .pth needs torch
CANDIDATES = (-1, -0.5, 0, 0.6, 1.5, 10**9, 'nonsense', (), (-1.0,), (0.5,), 'xyz')


def _fields(config):
  import json

  from flax import traverse_util

  return traverse_util.flatten_dict(json.loads(config.to_json()), sep='.')


def _set(config, path, value):
  *parents, leaf = path.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


@pytest.mark.slow  # 6 configs x 101 fields x 11 values: about 8 s
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_field_has_a_rule_and_every_bad_value_is_named(name):
  """Table-driven: every field of the config set to a value of the wrong type (refused
  by the locked config: ``--config`` overrides exit 2) and, where its rule restricts it,
  to values outside its range (refused by ``config_lib.validate``, which names the field
  and what it may be)."""
  config = CONFIGS[name](None)
  config_lib.validate(config)
  fields = _fields(config)
  assert set(fields) <= set(config_lib.RULES), set(fields) - set(config_lib.RULES)
  tried = 0
  for path, value in fields.items():
    wrong_type = 3 if isinstance(value, str) else 'x'
    c = CONFIGS[name](None)
    with pytest.raises(TypeError):
      _set(c, path, wrong_type)
    check, _ = config_lib.RULES[path]
    for bad in CANDIDATES:
      c = CONFIGS[name](None)
      try:
        _set(c, path, bad)
      except TypeError:
        continue  # another type: refused above
      if check(_fields(c)[path]):
        continue  # allowed
      with pytest.raises(config_lib.ConfigError, match=f'{path}='):
        config_lib.validate(c)
      tried += 1
  assert tried > 80, tried


def test_rules_between_fields():
  c = digits_lt.get_config()
  c.data.many_above, c.data.few_below = 10, 20
  with pytest.raises(config_lib.ConfigError, match='shot groups would overlap'):
    config_lib.validate(c)
  c = imagenet_lt.get_config()
  c.data.resize_size = 200
  with pytest.raises(config_lib.ConfigError, match='centre crop must fit'):
    config_lib.validate(c)
  # Kang's per-epoch cosine (first_epoch 1) trains its last epoch at lr 0: one epoch would be all at 0.
  with pytest.raises(config_lib.ConfigError, match=r'train.epochs=1 with train.schedule=cosine_epoch and '
                                                   r'train.first_epoch=1: every epoch would train at lr 0'):
    config_lib.validate(imagenet_lt.get_config('epochs=1'))
  config_lib.validate(imagenet_lt.get_config('epochs=2'))
  config_lib.validate(imagenet_lt.get_config('method=ssd,epochs=1'))  # SSD-LT's cosine starts at epoch 0
  c = imagenet_lt.get_config('method=crt')
  c.stage2.epochs = 1
  with pytest.raises(config_lib.ConfigError, match='stage2.epochs=1 with stage2.schedule=cosine_epoch'):
    config_lib.validate(c)


def test_lr_boundaries_the_run_does_not_reach_are_warned_of(capsys):
  """A step schedule's boundary at or after the last epoch never decays the lr: a warning
  names it and the fix (a shorter run of a long config scales its points instead); no
  config of ltjax's own draws it."""
  from configs import cifar_lt, digits_lt

  from ltjax import config_lib

  config = digits_lt.get_config('smoke,method=crt')
  config.train.lr_boundaries = (3, 50)
  config.stage2.schedule, config.stage2.lr_boundaries = 'step', (9,)  # (a cosine schedule has none)
  config_lib.validate(config)
  out = capsys.readouterr().out
  assert ('ltjax: warning: train.lr_boundaries=(3, 50) with train.epochs=4: the lr never decays at 50, which the '
          'run does not reach. Fix, unless you mean it: boundaries below 4, or train.schedule_epochs=N') in out
  assert f'stage2.lr_boundaries=(9,) with stage2.epochs={config.stage2.epochs}: the lr never decays at 9' in out
  shorter = cifar_lt.get_config('method=ce')
  shorter.train.epochs = 20  # its boundaries (for 200 epochs) scale to 16 and 18
  for c in (shorter, digits_lt.get_config('method=ssd'), cifar_lt.get_config('method=crt,smoke')):
    config_lib.validate(c)
  assert 'lr_boundaries' not in capsys.readouterr().out


def test_a_workdir_of_another_method_names_the_config_string_to_resume_it(tmp_path):
  """Only the method differs (ce in the workdir, focal now): the fix names the config
  string's method, which --config.method cannot set, and no empty list of flags."""
  import json

  from ltjax import evaluate, pipeline
  from ltjax.errors import WorkdirConflictError

  evaluate.write_results(str(tmp_path / 'config.json'), json.loads(digits_lt.get_config('smoke,method=ce').to_json()))
  os.makedirs(tmp_path / 'ce' / 'checkpoints' / '7')  # a checkpoint it saved
  with pytest.raises(WorkdirConflictError) as e:
    pipeline.check_workdir(digits_lt.get_config('smoke,method=focal'), str(tmp_path))
  assert "  method: 'ce' in the workdir, 'focal' now" in str(e.value)
  assert (f"resume it with the config string's method=ce (its config: {tmp_path / 'config.json'}); nothing was "
          f"changed") in str(e.value)


@pytest.mark.parametrize('method', sorted(__import__('ltjax.recipes', fromlist=['RECIPES']).RECIPES))
def test_a_misspelled_phase_is_refused_before_the_data_is_read(tmp_path, monkeypatch, method):
  """run.phases is checked against the recipe's phases built for a stand-in of two classes:
  the names the real data gives, for every method, without loading it."""
  from ltjax import pipeline, recipes
  from ltjax.data import registry
  from ltjax.errors import ConfigError

  config = digits_lt.get_config(f'smoke,method={method}')
  real = [p.name for p in recipes.phases(config, registry.load(config))]
  assert [p.name for p in recipes.phases(config, pipeline._StandIn())] == real
  config.run.phases = f'{real[-1]},nosuch'
  monkeypatch.setattr(registry, 'load', lambda config: pytest.fail('the data was read'))
  with pytest.raises(ConfigError, match=rf"run.phases names \['nosuch'\], not phases of '{method}': "):
    pipeline.run(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
