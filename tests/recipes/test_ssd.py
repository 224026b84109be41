"""SSD: the two heads' gradients, the momentum encoder and queue inside the step and
across devices, and every phase end to end with the frozen parts left unchanged."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recipe_testing import digits, make_step, predict_matches_the_run, same  # noqa: F401 (digits: a fixture)
from configs import digits_lt
from ltjax import checkpoint, parallel, pipeline, recipes, train
from ltjax.errors import ConfigError, PredictInputError


def _config(**fields):
  config = digits_lt.get_config('smoke,method=ssd')
  config.train.epochs = 2
  config.stage2.epochs = 1
  config.ssd.update(fields)
  return config


def test_soft_head_never_sees_labels_and_hard_head_never_sees_the_teacher(digits):
  config = _config(student_selfsup=False)
  student = recipes.phases(config, digits)[2]
  assert student.name == 'student' and student.extra_heads == (('soft', 'soft_logits'),)
  # A new network: its own initial weights (train.phase_keys), not phase I's.
  assert [p.own_init for p in recipes.phases(config, digits)] == [False, False, True, False]
  x = jnp.asarray(digits.train_images[:16], jnp.float32) / 16
  variables = student.model.init(jax.random.key(0), x, train=False)
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, 10, 16))
  teacher = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)

  def grads(labels, teacher):
    def f(params):
      out = student.model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=False)
      return student.loss({**out, 'teacher': {'logits': teacher}}, labels, 0)[0]
    return jax.jit(jax.grad(f))(variables['params'])

  g = grads(labels, teacher)
  g_labels = grads((labels + 3) % 10, teacher)
  g_teacher = grads(labels, teacher[::-1])
  assert same(g['soft_head'], g_labels['soft_head'])  # other labels: the same soft-head gradient
  assert not same(g['head'], g_labels['head'])
  assert same(g['head'], g_teacher['head'])  # another teacher: the same hard-head gradient
  assert not same(g['soft_head'], g_teacher['soft_head'])
  assert float(jnp.abs(g['soft_head']['Dense_0']['kernel']).max()) > 0


@pytest.mark.parametrize('generator_bn', ['train', 'eval'])
def test_phase2_batchnorm_follows_generator_bn_and_phase4_stage2(digits, generator_bn):
  """Phase II's frozen phase-I backbone runs as ssd.generator_bn says, phase IV's (the
  student's, trained on upright images) as stage2.backbone_bn."""
  other = 'eval' if generator_bn == 'train' else 'train'
  config = _config(generator_bn=generator_bn)
  config.stage2.backbone_bn = other
  phases = recipes.phases(config, digits)
  assert [p.name for p in phases] == ['selfsup', 'teacher', 'student', 'student_lws']
  assert phases[1].model.backbone_train == (generator_bn == 'train')
  assert phases[3].model.backbone_train == (other == 'train')


@pytest.mark.parametrize('teacher_bn', ['train', 'eval'])
def test_phase3_teacher_batchnorm_uses_the_batch_or_its_running_statistics(digits, teacher_bn):
  """The official stage III puts the frozen teacher in training mode with the student
  (``model.train()``): its BatchNorm normalises with the batch's statistics, so its running
  statistics cannot change the step; with ``eval`` they are all that it uses."""
  config = _config(teacher_bn=teacher_bn)
  student = recipes.phases(config, digits)[2]
  assert student.teacher.batch_norm == teacher_bn and student.teacher.model.backbone_train
  step, tx, data = make_step(student, digits, config, batch_size=32)
  step = jax.jit(step)
  x = jnp.asarray(digits.train_images[:2], jnp.float32)
  state = train.new_state(student.model, student.model.init(jax.random.key(0), x, train=False), tx)
  teacher = student.teacher.model.init(jax.random.key(1), x, train=False)
  # Other running statistics: mean +3, variance x9 in every BatchNorm layer.
  shifted = {**teacher, 'batch_stats': jax.tree_util.tree_map_with_path(
      lambda path, v: v + 3.0 if path[-1].key == 'mean' else v * 9.0, teacher['batch_stats'])}
  a, metrics_a = step(state, data, jax.random.key(2), teacher)
  b, metrics_b = step(state, data, jax.random.key(2), shifted)
  if teacher_bn == 'train':
    assert same(a.params, b.params) and float(metrics_a['soft']) == float(metrics_b['soft'])
  else:
    assert not same(a.params['soft_head'], b.params['soft_head'])
    assert float(metrics_a['soft']) != float(metrics_b['soft'])
  # Only the soft head sees the teacher: the hard head's update is the same either way.
  assert same(a.params['head'], b.params['head'])


@pytest.mark.parametrize('field,value,match', [('selfsup', 'jigsaw', 'rotation'), ('generator', 'x', 'lws'),
                                               ('queue_size', 8, 'queue_size'), ('phase4_head', 'x', 'hard')])
def test_bad_ssd_settings_are_refused(digits, field, value, match):
  config = _config(**{field: value})
  if field == 'queue_size':
    config.ssd.selfsup = 'contrastive'
  with pytest.raises(ConfigError, match=match):
    recipes.phases(config, digits)


def _restore_state(directory):
  mgr = checkpoint.manager(directory)
  state = mgr.restore(mgr.latest_step(), args=ocp.args.StandardRestore())
  mgr.close()
  return state


def _contrastive_phase1(tmp_path, digits, num_devices, epochs=1):
  config = _config(selfsup='contrastive', queue_size=256, moco_momentum=0.9)
  config.train.epochs = epochs
  config.run.checkpoint_min_seconds = 0
  phase = recipes.phases(config, digits)[0]
  directory = tmp_path / f'dev{num_devices}'
  variables, _ = train.train_phase(phase, digits, config, str(directory), parallel.make_mesh(num_devices))
  return _restore_state(str(directory / 'checkpoints')), variables


@pytest.mark.slow  # over 7 s: not in the quick tier
def test_momentum_encoder_and_queue_in_the_step(tmp_path, digits):
  """One epoch = 7 steps of 64 keys into a queue of 256: it wraps around; every key is
  a unit vector of the step's batch, labelled with its image's class."""
  state, variables = _contrastive_phase1(tmp_path, digits, 8)
  queue = state['aux']['queue']
  assert int(queue['ptr']) == (7 * 64) % 256
  np.testing.assert_allclose(np.linalg.norm(queue['keys'], axis=-1), 1.0, rtol=1e-5)
  assert set(np.unique(queue['labels'])) <= set(range(10))  # every initial entry overwritten
  # The momentum encoder trails the encoder: close to it, never equal.
  ema, params = state['aux']['params'], variables['params']
  diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params))]
  assert max(diffs) > 0


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_queue_and_momentum_encoder_agree_on_one_and_eight_devices(tmp_path, digits):
  s1, _ = _contrastive_phase1(tmp_path, digits, 1)
  s8, _ = _contrastive_phase1(tmp_path, digits, 8)
  q1, q8 = s1['aux']['queue'], s8['aux']['queue']
  np.testing.assert_array_equal(q1['labels'], q8['labels'])  # the whole global batch entered
  assert int(q1['ptr']) == int(q8['ptr'])
  np.testing.assert_allclose(q1['keys'], q8['keys'], rtol=1e-3, atol=1e-4)
  # The momentum encoders: equal up to float summation order, which InfoNCE at T = 0.2
  # amplifies over 7 steps to about 6e-5 on parameters of size 5e-3.
  for a, b in zip(jax.tree.leaves(s1['aux']['params']), jax.tree.leaves(s8['aux']['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)


def test_one_step_updates_the_momentum_encoder_and_enqueues_the_batch(digits):
  config = _config(selfsup='contrastive', queue_size=96, moco_momentum=0.9)
  phase = recipes.phases(config, digits)[0]
  step, tx, data = make_step(phase, digits, config, batch_size=64, num_devices=8)
  step = jax.jit(step)
  x = jnp.asarray(digits.train_images[:2], jnp.float32)
  variables = phase.model.init(jax.random.key(0), x, train=False)
  aux = phase.hooks.init(variables)
  state = train.new_state(phase.model, variables, tx, aux)
  p0 = state.params
  new, _ = step(state, data, jax.random.key(1), {})
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, p0, new.params)
  for a, b in zip(jax.tree.leaves(new.aux['params']), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  q = new.aux['queue']
  assert int(q['ptr']) == 64
  labels = np.asarray(q['labels'])
  assert (labels[:64] >= 0).all() and (labels[64:] == -1).all()
  np.testing.assert_array_equal(np.asarray(q['keys'])[64:], np.asarray(aux['queue']['keys'])[64:])
  # The key encoder's BatchNorm statistics moved (it ran in training mode on the key view).
  assert not same(new.aux['batch_stats'], aux['batch_stats'])


@pytest.mark.slow  # over 9 s: not in the quick tier
@pytest.mark.parametrize('selfsup', ['rotation', 'contrastive'])
def test_all_phases_end_to_end(tmp_path, selfsup):
  workdir = str(tmp_path / selfsup)
  # Phase III: hard + soft only by default (the official stage III); MoCo's run keeps the
  # self-supervised loss in phase III too (student_selfsup), so both paths run end to end.
  student_selfsup = selfsup == 'contrastive'
  # Phase II's frozen backbone: on phase I's running statistics (rotation's default), or in
  # training mode (the official MoCo recipe's, as large.py sets it).
  generator_bn = 'train' if selfsup == 'contrastive' else 'eval'
  config = _config(selfsup=selfsup, queue_size=256, student_selfsup=student_selfsup, generator_bn=generator_bn)
  results = pipeline.run(config, workdir)
  assert list(results) == ['selfsup', 'teacher', 'student', 'student_lws']
  assert results['student']['main_head'] == 'hard'
  assert results['student']['heads']['soft']['top1'] is not None
  final = lambda phase: checkpoint.restore_variables(os.path.join(workdir, phase, 'checkpoints'))
  one, two, three, four = (final(p) for p in ('selfsup', 'teacher', 'student', 'student_lws'))
  # Phase II: LWS on the frozen phase-I backbone and classifier; only the scales moved.
  assert same(one['params']['backbone'], two['params']['backbone'])
  if generator_bn == 'train':  # statistics re-estimated on phase II's class-aware batches, as stage II
    assert not same(one['batch_stats'], two['batch_stats'])
  else:  # phase I's, kept
    assert same(one['batch_stats'], two['batch_stats'])
  assert same(one['params']['head'], two['params']['head']['linear'])
  assert not np.allclose(two['params']['head']['scales'], 1.0)
  assert 'selfsup_head' in one['params'] and 'soft_head' in three['params']
  assert ('selfsup_head' in three['params']) == student_selfsup
  # Phase IV: LWS on the phase-III backbone and hard classifier.
  assert same(three['params']['backbone'], four['params']['backbone'])
  assert same(three['params']['head'], four['params']['head']['linear'])
  summary = pipeline.evaluate.read_results(os.path.join(workdir, 'results.json'))
  assert list(summary['phases']) == ['selfsup', 'teacher', 'student (hard)', 'student (soft)', 'student_lws']
  if selfsup == 'rotation':  # ltjax.predict: the last phase by default, the two-head student's main head
    assert predict_matches_the_run(workdir, tmp_path) == 'student_lws'
    assert predict_matches_the_run(workdir, tmp_path, 'student') == 'student'
    assert predict_matches_the_run(workdir, tmp_path, 'student', head='soft') == 'student'  # --head soft
    assert predict_matches_the_run(workdir, tmp_path, 'student', head='hard') == 'student'
    with pytest.raises(PredictInputError, match="--head=logits: phase 'student' of 'ssd' has the heads hard, soft"):
      predict_matches_the_run(workdir, tmp_path, 'student', head='logits')
  # A rerun trains nothing: every phase's results file is left as it was.
  stamps = lambda: [os.stat(os.path.join(workdir, p, 'results.json')).st_mtime_ns for p in results]
  before = stamps()
  pipeline.run(config, workdir)
  assert stamps() == before


def test_contrastive_key_view_comes_from_the_host_when_it_sends_one(digits):
  phase = recipes.phases(_config(selfsup='contrastive', queue_size=96), digits)[0]
  assert phase.hooks.two_views and not recipes.phases(_config(), digits)[0].hooks.two_views
  images = digits.train_images[:8]
  x = jnp.asarray(images, jnp.float32) / 16.0
  variables = phase.model.init(jax.random.key(0), x, train=False)
  aux = phase.hooks.init(variables)
  batch = {'images': images, 'labels': digits.train_labels[:8]}
  keys = lambda b: np.asarray(phase.hooks.prepare(jax.random.key(3), b, x, aux)[1]['keys'])
  host_view = keys({**batch, 'key_images': images})
  other_host_view = keys({**batch, 'key_images': np.roll(images, 1, axis=2)})
  device_view = keys(batch)  # no key_images: the step crops its own key view
  assert not np.allclose(host_view, other_host_view) and not np.allclose(host_view, device_view)


def test_a_teacher_from_another_run_trains_no_phase_for_nothing(tmp_path):
  """With ssd.teacher_dir, phase III's teacher comes from another run: phase II would be
  unused, and phase I with it (only phase II starts from it). Refused before anything runs,
  with the phases to run instead."""
  config = _config(teacher_dir=str(tmp_path / 'other'))
  with pytest.raises(ConfigError, match=r"ssd\.teacher_dir=.* in phases 'selfsup', 'teacher', for nothing\. "
                                        r"Fix: add --config\.run\.phases=student,student_lws "):
    pipeline.run(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
  # Phase II alone, though phase III takes another run's; phase I, which only phase II reads.
  for phases, wasted in (('teacher', "phase 'teacher'"), ('selfsup,student,student_lws', "phase 'selfsup'")):
    config.run.phases = phases
    with pytest.raises(ConfigError, match=rf"{wasted}, for nothing\. Fix: add --config\.run\.phases=student,"):
      pipeline.run(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
