"""The generic trainer: schedules, the optimizer against PyTorch's SGD formula, and the
same losses on 1 and 8 devices (BatchNorm statistics over the global batch)."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import feeds, parallel, recipes, train
from ltjax.data import registry
from conftest import crash_and_resume
from configs import common, digits_lt


def tc(**kw):
  c = digits_lt.get_config().train
  c.schedule_epochs = 0  # the points as given
  c.update(kw)
  return c


def test_step_schedule_with_warmup():
  s = train.make_schedule(tc(lr=0.1, epochs=200, warmup_epochs=5, lr_boundaries=(120, 160), lr_decay=0.01), 10)
  np.testing.assert_allclose(s(0), 0.1 / 50, rtol=1e-5)
  np.testing.assert_allclose(s(49), 0.1, rtol=1e-5)  # warm-up ends at lr
  np.testing.assert_allclose(s(50), 0.1, rtol=1e-5)
  np.testing.assert_allclose(s(1199), 0.1, rtol=1e-5)
  np.testing.assert_allclose(s(1200), 1e-3, rtol=1e-5)  # epoch 120: x0.01
  np.testing.assert_allclose(s(1600), 1e-5, rtol=1e-5)  # epoch 160: x0.01 again
  np.testing.assert_allclose(s(1999), 1e-5, rtol=1e-5)


def test_cosine_schedule():
  s = train.make_schedule(tc(lr=0.2, epochs=10, warmup_epochs=0, schedule='cosine'), 10)
  np.testing.assert_allclose(s(0), 0.2, rtol=1e-6)
  np.testing.assert_allclose(s(50), 0.1, rtol=1e-5)
  np.testing.assert_allclose(s(100), 0.0, atol=1e-7)


def _torch_cosine_annealing(base_lr, t_max, epochs):
  """The lr of each epoch under PyTorch's CosineAnnealingLR(T_max, eta_min=0) stepped at
  the start of every epoch, as Kang et al.'s run_networks.py does: its recursive form."""
  lr, last, lrs = base_lr, 0, []
  for _ in range(epochs):
    last += 1
    if (last - 1 - t_max) % (2 * t_max) == 0:
      lr = lr + base_lr * (1 - math.cos(math.pi / t_max)) / 2
    else:
      lr = (1 + math.cos(math.pi * last / t_max)) / (1 + math.cos(math.pi * (last - 1) / t_max)) * lr
    lrs.append(lr)
  return lrs


@pytest.mark.parametrize('warmup', ['none', 'linear', 'ldam'])
def test_cosine_set_once_an_epoch_as_ssd_lt_and_kang(warmup):
  """SSD-LT's adjust_learning_rate(--cos): lr/2 (1 + cos(pi e / E)) for 0-based epoch e;
  Kang et al.: CosineAnnealingLR stepped before each epoch (first_epoch 1). Constant
  within an epoch; a warm-up before it leaves the epochs after it unchanged."""
  spe, epochs = 7, 5
  steps = np.arange(epochs * spe)
  ssd = [0.2 * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
  kang = _torch_cosine_annealing(0.2, epochs, epochs)
  np.testing.assert_allclose(kang[-1], 0.0, atol=1e-12)  # Kang's last epoch trains at 0
  warm = {'none': dict(warmup_epochs=0), 'linear': dict(warmup_epochs=2, warmup='linear'),
          'ldam': dict(warmup_epochs=2, warmup='ldam')}[warmup]
  for first, want in ((0, ssd), (1, kang)):
    s = train.make_schedule(tc(lr=0.2, epochs=epochs, schedule='cosine_epoch', first_epoch=first, **warm), spe)
    got = np.asarray(jax.vmap(s)(steps)).reshape(epochs, spe)
    after = 0 if warmup == 'none' else 2
    np.testing.assert_allclose(got[after:], np.repeat(np.asarray(want)[after:, None], spe, 1), rtol=1e-5, atol=1e-7)
    if warmup == 'ldam':  # the per-epoch warm-up multiplies: (e + 1) / 2 in epoch 0
      np.testing.assert_allclose(got[0], 0.5 * want[0], rtol=1e-5)
    if warmup == 'linear':  # rises every step to lr
      assert np.all(np.diff(got[:2].reshape(-1)) > 0) and np.isclose(got[1, -1], 0.2)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_matches_pytorch_formula(nesterov):
  """torch.optim.SGD(lr, momentum, weight_decay, nesterov): d = g + wd p; b = m b + d;
  p -= lr b, or with Nesterov (BBN's and BagofTricks-LT's SGD) p -= lr (d + m b)."""
  c = tc(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
  tx = train.make_optimizer(c, 0.1)
  target = np.array([1.0, -2.0, 3.0])
  p = jnp.array([0.5, 0.5, 0.5])
  state = tx.init(p)
  p_ref, buf = np.array([0.5, 0.5, 0.5]), np.zeros(3)
  for _ in range(4):
    g = jax.grad(lambda p: 0.5 * jnp.sum((p - target) ** 2))(p)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    d = (p_ref - target) + 0.01 * p_ref
    buf = 0.9 * buf + d
    p_ref = p_ref - 0.1 * (d + 0.9 * buf if nesterov else buf)
  np.testing.assert_allclose(p, p_ref, rtol=1e-6)


def _train(tmp_path, num_devices, **train_overrides):
  config = digits_lt.get_config('smoke')
  config.train.update(train_overrides)
  config.run.checkpoint_min_seconds = 0
  config.run.num_devices = num_devices
  config.train.epochs = 1
  config.run.log_every_steps = 1
  dataset = registry.load(config)
  mesh = parallel.make_mesh(num_devices)
  phase = recipes.phases(config, dataset)[0]
  d = tmp_path / f'dev{num_devices}'
  variables, stats = train.train_phase(phase, dataset, config, str(d), mesh)
  assert stats['steps_run'] == 7 and stats['train_seconds'] > 0
  with open(d / 'metrics.jsonl') as f:
    losses = [json.loads(l)['train/loss'] for l in f]
  return losses, variables


def test_one_and_eight_devices_agree(tmp_path):
  assert jax.device_count() == 8
  l1, v1 = _train(tmp_path, 1)
  l8, v8 = _train(tmp_path, 8)
  assert len(l1) == len(l8) == 7
  np.testing.assert_allclose(l1, l8, rtol=2e-4)
  # BatchNorm running statistics after 7 steps: the same only if each step's batch
  # statistics were taken over the global batch, not per device.
  for a, b in zip(jax.tree.leaves(v1['batch_stats']), jax.tree.leaves(v8['batch_stats'])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  for a, b in zip(jax.tree.leaves(v1['params']), jax.tree.leaves(v8['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('frozen_head', [False, True])
def test_backbone_lr_scale_is_a_parameter_group_of_its_own_lr(frozen_head):
  """train.backbone_lr_scale=0.01: the backbone follows torch.optim.SGD's formula at lr
  0.001, the head at 0.1 (OLTR's two parameter groups), weight decay and momentum as
  PyTorch's per group; with a frozen head (a trainable mask) the head stays put."""
  c = tc(lr=0.1, momentum=0.9, weight_decay=0.01, backbone_lr_scale=0.01)
  target = {'backbone': np.array([1.0, -2.0]), 'head': np.array([3.0])}
  p = {'backbone': jnp.array([0.5, 0.5]), 'head': jnp.array([0.5])}
  trainable = (lambda path: path[0] == 'backbone') if frozen_head else None
  tx = train.make_optimizer(c, 0.1, trainable, p)
  state = tx.init(p)
  ref = {k: np.asarray(v) for k, v in p.items()}
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  lrs = {'backbone': 0.001, 'head': 0.0 if frozen_head else 0.1}
  loss = lambda p: sum(0.5 * jnp.sum((p[k] - target[k]) ** 2) for k in p)
  update = jax.jit(tx.update)
  for _ in range(4):
    updates, state = update(jax.grad(loss)(p), state, p)
    p = optax.apply_updates(p, updates)
    for k in ref:
      d = (ref[k] - target[k]) + 0.01 * ref[k]
      buf[k] = 0.9 * buf[k] + d
      ref[k] = ref[k] - lrs[k] * buf[k]
  for k in ref:
    np.testing.assert_allclose(p[k], ref[k], rtol=1e-6)
  if frozen_head:
    assert float(p['head'][0]) == 0.5


def test_the_backbone_lr_is_logged_beside_the_heads(tmp_path):
  _train(tmp_path, 1, backbone_lr_scale=0.01)
  with open(tmp_path / 'dev1' / 'metrics.jsonl') as f:
    rows = [json.loads(l) for l in f]
  assert len(rows) == 7 and rows[-1]['train/lr'] > 0
  for r in rows:
    np.testing.assert_allclose(r['train/lr_backbone'], 0.01 * r['train/lr'], rtol=1e-6)
  _train(tmp_path / 'one', 1)  # one lr for every parameter: no second column
  with open(tmp_path / 'one' / 'dev1' / 'metrics.jsonl') as f:
    assert all('train/lr_backbone' not in json.loads(l) for l in f)


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    parallel.check_batch_size(100, parallel.make_mesh(8))


def test_diverging_loss_stops_with_a_clear_error_and_no_nan_checkpoint(tmp_path):
  from ltjax import checkpoint
  from ltjax.errors import NonFiniteLossError

  with pytest.raises(NonFiniteLossError, match=r'Fix: lower the lr \(--config.train.lr.*with a new --workdir'):
    _train(tmp_path, 8, lr=1e30, warmup_epochs=0)
  mgr = checkpoint.manager(str(tmp_path / 'dev8' / 'checkpoints'))
  assert mgr.latest_step() is None  # the diverged state was never saved


def test_parameters_made_non_finite_by_a_finite_loss_step_are_refused(tmp_path):
  """An infinite lr: step 1's loss (computed before its update) is finite, its update is
  not. The step reports it, and the run stops there, before step 2's NaN loss."""
  from ltjax.errors import NonFiniteLossError

  with pytest.raises(NonFiniteLossError, match=r'the parameters are not finite .* at step 1 '):
    _train(tmp_path, 1, lr=float('inf'), warmup_epochs=0)
  with open(tmp_path / 'dev1' / 'metrics.jsonl') as f:
    assert f.read() == ''  # nothing of the diverged step is logged


def _index_step(num_examples, batch, num_devices, kind='instance'):
  """The real jitted step on a training set whose images carry their own index (pixel
  (0, 0) holds ``i % 256``, (0, 1) ``i // 256``); it reports the indices it trained on."""
  from ltjax.data.samplers import Sampler
  from ltjax.models import build_model

  num_classes = 4
  labels = np.arange(num_examples) % num_classes
  images = np.zeros((num_examples, 8, 8, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(num_examples) % 256
  images[:, 0, 1, 0] = np.arange(num_examples) // 256
  model_cfg = common.base_config().model
  model_cfg.update(name='cifar_resnet', depth=8, width=2, dtype='float32', conv_impl='xla')
  model = build_model(model_cfg, num_classes)

  def prepare(key, batch, x, aux):
    idx = batch['images'][:, 0, 0, 0].astype(jnp.int32) + 256 * batch['images'][:, 0, 1, 0].astype(jnp.int32)
    return x, {'index': idx}, aux

  def loss(outputs, y, epoch):
    return jnp.mean(outputs['logits'] ** 2), {'index': outputs['index']}

  c = tc(lr=0.01, epochs=3, warmup_epochs=0, lr_boundaries=())
  phase = train.Phase(name='p', model=model, loss=loss, sampler=kind, train=c,
                      hooks=train.StepHooks(prepare=prepare))
  sampler = Sampler(kind, num_examples, batch, tuple(np.bincount(labels, minlength=num_classes)), 3)
  schedule = train.make_schedule(c, sampler.steps_per_epoch)
  mesh = parallel.make_mesh(num_devices)
  params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
  tx = train.make_optimizer(c, schedule)
  rep = parallel.replicated(mesh)
  state = jax.device_put(train.new_state(phase.model, params, tx), rep)
  data = jax.device_put({'images': images, 'labels': labels.astype(np.int32),
                         **Sampler.arrays(labels, num_classes)}, rep)
  step = jax.jit(train.make_train_step(phase, schedule, feeds.DeviceFeed(sampler, lambda k, x: x.astype(jnp.float32), mesh)),
                 in_shardings=(rep, rep, rep, rep), out_shardings=(rep, rep))
  def run(state, steps, rng=jax.random.key(5)):
    out = []
    for _ in range(steps):
      state, metrics = step(state, data, rng, {})
      out.append(np.asarray(metrics['index']))
    return state, out

  return sampler, state, run


@pytest.mark.parametrize('num_devices', [1, 8])
def test_instance_sampling_through_the_step_is_one_pass_per_epoch(num_devices):
  """Every training image once per epoch (only the last batch wraps), a new order each
  epoch, the same indices on 1 and 8 devices, and after a resume mid-epoch."""
  n, batch = 100, 16  # 7 steps an epoch, the last one wraps 12 images
  sampler, state0, run = _index_step(n, batch, num_devices)
  assert sampler.steps_per_epoch == 7
  state, batches = run(state0, 3 * 7)
  epochs = [np.concatenate(batches[e * 7:(e + 1) * 7]) for e in range(3)]
  for flat in epochs:
    counts = np.bincount(flat, minlength=n)
    assert counts.min() == 1 and counts.max() == 2 and (counts == 2).sum() == 7 * 16 - n
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  # Resume at step 10 (mid-epoch 1): the same batches as the uninterrupted run.
  _, resumed = run(state0.replace(step=jnp.int32(10)), 4)
  for a, b in zip(batches[10:14], resumed):
    np.testing.assert_array_equal(a, b)
  if num_devices == 8:
    _, _, run1 = _index_step(n, batch, 1)
    _, one = run1(state0.replace(step=jnp.int32(0)), 7)
    for a, b in zip(batches[:7], one):
      np.testing.assert_array_equal(a, b)


def test_each_phase_of_a_recipe_draws_its_own_batch_order_from_the_same_initial_weights():
  """A DiVE student (stream 1) neither replays its teacher's (stream 0) batches nor its
  augmentation, as the reference's separate runs do not; both start from the seed's
  initial weights (BagofTricks-LT seeds both runs alike). Stream 0 is the seed's own
  stream, so one-phase runs are unchanged; the host pipeline's streams differ too."""
  from ltjax.data.samplers import Sampler

  init0, step0 = train.phase_keys(0, 0)
  init1, step1 = train.phase_keys(0, 1)
  old_init, old_step = jax.random.split(jax.random.key(0))
  assert np.array_equal(jax.random.key_data(init0), jax.random.key_data(old_init))
  assert np.array_equal(jax.random.key_data(step0), jax.random.key_data(old_step))
  assert np.array_equal(jax.random.key_data(init1), jax.random.key_data(init0))
  # SSD's phase III is a new network (own_init): its weights from its own stream; phase 0 keeps the seed's.
  own1, own_step1 = train.phase_keys(0, 1, own_init=True)
  assert not np.array_equal(jax.random.key_data(own1), jax.random.key_data(init0))
  assert np.array_equal(jax.random.key_data(own_step1), jax.random.key_data(step1))
  assert np.array_equal(jax.random.key_data(train.phase_keys(0, 0, own_init=True)[0]), jax.random.key_data(init0))
  sampler, state0, run = _index_step(100, 16, 1)
  _, teacher = run(state0, 7, rng=step0)
  _, student = run(state0, 7, rng=step1)
  assert not np.array_equal(np.concatenate(teacher), np.concatenate(student))
  assert sorted(np.concatenate(student)[:100]) == list(range(100))  # still one pass an epoch
  assert (train.host_seed(3, 0), train.host_seed(3, 1)) == (3, 3 + 2**32)
  s = Sampler('instance', 100, 16, (25, 25, 25, 25), 3)
  assert not np.array_equal(s.host_indices({}, train.host_seed(0, 0), 0), s.host_indices({}, train.host_seed(0, 1), 0))


def test_metrics_log_keeps_only_the_steps_the_resumed_run_holds(tmp_path):
  """metrics.jsonl after a kill at step 9 and a resume from the checkpoint at step 7: the
  records of steps 8 and 9 (trained again) and the evaluations at 7 (evaluated again)
  are dropped, as is a line the kill cut; a phase trained again from 0 starts empty."""
  from ltjax.logs import MetricLogger

  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'train/loss': 1.0 / s}) for s in range(1, 10)]
  lines.insert(7, json.dumps({'step': 7, 'val/top1': 50.0}))
  lines.insert(7, json.dumps({'step': 7, 'test/top1': 40.0}))
  path.write_text('\n'.join(lines) + '\n{"step": 10, "train/lo')
  original = path.read_text()
  logger = MetricLogger(str(tmp_path), enabled=True, start=7, repeated=('val/', 'test/'))
  logger.write(8, {'loss': 0.5}, 'train/')
  logger.close()
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
  assert [r for r in rows if r['step'] == 7] == [{'step': 7, 'train/loss': 1 / 7}]
  assert rows[-1] == {'step': 8, 'train/loss': 0.5} and not any('val/top1' in r or 'test/top1' in r for r in rows)
  # An evaluation the resumed run does not repeat (its cadence changed) is kept.
  path.write_text(original)
  MetricLogger(str(tmp_path), enabled=True, start=7, repeated=('val/',)).close()
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [r for r in rows if r['step'] == 7] == [{'step': 7, 'train/loss': 1 / 7}, {'step': 7, 'test/top1': 40.0}]
  MetricLogger(str(tmp_path), enabled=True, start=0).close()
  assert path.read_text() == ''


@pytest.mark.slow
def test_a_test_evaluation_lost_to_a_crash_is_redone_on_resume(tmp_path, monkeypatch):
  """The process dies right after epoch 2's checkpoint, before its periodic test
  evaluation: the resumed run evaluates epoch 2 first, so every epoch's test record is
  there once and the test-selected best epoch is chosen among all of them."""
  from ltjax import pipeline

  def config():
    c = digits_lt.get_config('smoke,method=ce')
    c.train.epochs = 3
    c.run.eval_every_epochs = 1
    c.run.checkpoint_min_seconds = 0
    c.run.log_every_steps = 1
    return c

  steps_per_epoch = 7
  crash_and_resume(monkeypatch, 2 * steps_per_epoch, lambda: pipeline.run(config(), str(tmp_path / 'w')))
  with open(tmp_path / 'w' / 'ce' / 'metrics.jsonl') as f:
    rows = [json.loads(l) for l in f]
  assert [r['test/epoch'] for r in rows if 'test/top1' in r] == [1, 2]  # epoch 3, the last: the phase's own
  assert [r['step'] for r in rows if 'train/loss' in r] == list(range(1, 3 * steps_per_epoch + 1))



@pytest.mark.slow  # about 10 s: not in the quick tier
def test_a_batch_larger_than_the_training_set_is_warned_of(tmp_path, capsys):
  """417 digits in batches of 1000: an epoch is one step of 2.4 passes, images repeated
  within the batch; said before training, with the fix."""
  from ltjax import pipeline

  config = digits_lt.get_config('smoke,method=ce')
  config.train.batch_size, config.train.epochs, config.train.lr_boundaries = 1000, 1, ()
  config.run.num_devices = 1
  results = pipeline.run(config, str(tmp_path / 'w'))
  out = capsys.readouterr().out
  n = results['ce']['num_train']
  assert (f'ltjax: warning: [ce] a batch of 1000 is more than the {n} training images: each epoch (one step) '
          f'draws {1000 / n:.1f} passes over them') in out
  assert 'lr_boundaries' not in out
