"""DiVE end to end: the frozen teacher inside the student's step, the two-phase
pipeline (skip, run alone, teacher from a path) and the errors for a missing or
mismatched teacher."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe_testing import digits, make_step  # noqa: F401 (digits: a fixture)
from configs import digits_lt
from ltjax import checkpoint, losses, pipeline, recipes, train
from ltjax.data import augment
from ltjax.errors import ConfigError, MissingCheckpointError
from ltjax.models import build_model


class Linear(nn.Module):
  """No BatchNorm, no randomness: the same variables give the same output in training
  and in evaluation mode, so a student equal to its teacher shows which images each saw."""

  @nn.compact
  def __call__(self, x, train=True):
    return {'logits': nn.Dense(10)(x.reshape(x.shape[0], -1))}


def test_teacher_runs_frozen_on_the_students_augmented_batch(digits):
  config = digits_lt.get_config('smoke')
  model = Linear()

  def loss(outputs, labels, epoch):
    gap = jnp.max(jnp.abs(outputs['logits'] - outputs['teacher']['logits']))
    return losses.distillation_loss(outputs['logits'], outputs['teacher']['logits'] * 2.0, 2.0), {'gap': gap}

  phase = train.Phase(name='student', model=model, loss=loss, sampler='instance', train=config.train,
                      teacher=train.Teacher(phase='teacher', model=model))
  step, tx, data = make_step(phase, digits, config, batch_size=16)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  state = train.new_state(model, {'params': variables['params']}, tx, step=3)
  new_state, metrics = jax.jit(step)(state, data, jax.random.key(1), variables)
  # Student = teacher: identical logits, so the teacher saw the very crops of the student.
  assert float(metrics['gap']) == 0.0
  # The loss's gradient reaches the student's parameters, never the teacher's.
  g_teacher = jax.grad(lambda t: step(state, data, jax.random.key(1), t)[1]['loss'])(variables)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_teacher))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, state.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_student_loss_is_the_library_loss_with_the_config_values(digits):
  config = digits_lt.get_config('smoke,method=dive')
  config.dive.update(temperature=2.0, power=0.25, alpha=0.7, use_bsce=False, target='t_tilde')
  teacher, student = recipes.phases(config, digits)
  assert (teacher.name, student.name) == ('teacher', 'student') and student.teacher.phase == 'teacher'
  rng = np.random.default_rng(0)
  z, zt = (jnp.asarray(rng.normal(size=(8, 10)), jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, 10, 8))
  got, metrics = student.loss({'logits': z, 'teacher': {'logits': zt}}, y, 0)
  want = losses.dive_student_loss(z, zt, y, digits.class_counts, 2.0, 0.25, 0.7, False, 't_tilde')[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert {'accuracy', 'teacher_accuracy', 'hard', 'distill'} <= set(metrics)
  # The teacher is the BSCE recipe.
  np.testing.assert_allclose(teacher.loss({'logits': z}, y, 0)[0],
                             losses.balanced_softmax_cross_entropy(z, y, digits.class_counts), rtol=1e-6)


@pytest.mark.parametrize('field,value,match', [('target', 'mixture', 't_tilde'), ('alpha', 1.5, r'\[0, 1\]'),
                                               ('temperature', 0.0, '> 0'), ('power', -1.0, '>= 0')])
def test_bad_dive_settings_are_refused(digits, field, value, match):
  config = digits_lt.get_config('smoke,method=dive')
  config.dive[field] = value
  with pytest.raises(ConfigError, match=match):
    recipes.phases(config, digits)


def _config(**dive):
  config = digits_lt.get_config('smoke,method=dive')
  config.train.epochs = 2
  config.dive.update(dive)
  return config


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_pipeline_teacher_then_student_skip_alone_and_from_path(tmp_path, digits, monkeypatch):
  # Each phase trains on the data stream of its position in the recipe, whichever
  # phases this run trains (train_phase's stream: tests/test_train.py).
  streams = []
  real_train_phase = train.train_phase

  def spy(phase, *args, **kwargs):
    streams.append((phase.name, kwargs['stream']))
    return real_train_phase(phase, *args, **kwargs)

  monkeypatch.setattr(train, 'train_phase', spy)
  workdir = str(tmp_path / 'dive')
  # The teacher alone, then the whole recipe: the teacher is not trained again.
  config = _config()
  config.run.phases = 'teacher'
  assert list(pipeline.run(config, workdir)) == ['teacher']
  teacher_results = os.path.join(workdir, 'teacher', 'results.json')
  before = os.stat(teacher_results).st_mtime_ns
  results = pipeline.run(_config(), workdir)
  assert list(results) == ['teacher', 'student']
  assert streams == [('teacher', 0), ('student', 1)]
  assert os.stat(teacher_results).st_mtime_ns == before
  for name in ('teacher', 'student'):
    assert results[name]['top1'] is not None and os.path.exists(os.path.join(workdir, name, 'results.json'))
  t = checkpoint.restore_variables(os.path.join(workdir, 'teacher', 'checkpoints'))
  s = checkpoint.restore_variables(os.path.join(workdir, 'student', 'checkpoints'))
  assert not np.allclose(t['params']['head']['Dense_0']['kernel'], s['params']['head']['Dense_0']['kernel'])

  # The student alone in a new workdir: no teacher there, and the error says what to do.
  alone = _config()
  alone.run.phases = 'student'
  with pytest.raises(MissingCheckpointError, match=r"phase 'teacher'.*dive\.teacher_dir"):
    pipeline.run(alone, str(tmp_path / 'alone'))
  assert not os.path.exists(tmp_path / 'alone' / 'student' / 'results.json')
  # The teacher from elsewhere and this run's own teacher phase too: refused, nothing trained.
  with pytest.raises(ConfigError, match=r"dive\.teacher_dir=.* 'teacher', for nothing\. Fix: add "
                                        r"--config\.run\.phases=student \(finished phases are skipped\)\."):
    pipeline.run(_config(teacher_dir=workdir), str(tmp_path / 'both'))
  assert not os.path.exists(tmp_path / 'both')
  # ... and with the teacher of the first run, given as its phase folder or its workdir.
  for i, path in enumerate([os.path.join(workdir, 'teacher'), workdir]):
    config = _config(teacher_dir=path)
    config.run.phases = 'student'
    results = pipeline.run(config, str(tmp_path / f'from_path{i}'))
    assert list(results) == ['student'] and streams[-1] == ('student', 1)
    other = results['student']['from_other_runs']['teacher']
    assert other['checkpoints'] == os.path.join(workdir, 'teacher', 'checkpoints') and other['phase'] == 'teacher'
    assert other['top1'] == json.loads(open(teacher_results).read())['top1']
  # A path without a checkpoint.
  config = _config(teacher_dir=str(tmp_path / 'nothing'))
  config.run.phases = 'student'
  with pytest.raises(MissingCheckpointError, match='holds no checkpoint'):
    pipeline.run(config, str(tmp_path / 'bad_path'))

  # A teacher of another class count or architecture is refused by name.
  config = _config(teacher_dir=workdir)
  _, student = recipes.phases(config, digits)
  normalize = lambda x: augment.normalize(x, config.data.augment.mean, config.data.augment.std, digits.pixel_scale)
  seven = dataclasses.replace(student, teacher=dataclasses.replace(
      student.teacher, model=build_model(config.model, 7)))
  with pytest.raises(MissingCheckpointError, match='trained with 10 classes.*has 7'):
    pipeline._load_teacher(seven, workdir, dataclasses.replace(digits, num_classes=7), normalize)
  config.model.width = 4
  narrow = dataclasses.replace(student, teacher=dataclasses.replace(
      student.teacher, model=build_model(config.model, 10)))
  with pytest.raises(MissingCheckpointError, match='another architecture') as e:
    pipeline._load_teacher(narrow, workdir, digits, normalize, model_config=config.model)
  # The fix names the model fields of the teacher's run that differ, as flags.
  assert f'Fix: run with its run\'s model settings: --config.model.width={_config().model.width}, or' in str(e.value)
