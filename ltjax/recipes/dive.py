"""DiVE, Distilling Virtual Examples (He, Wu, Wei; METHODS.md 2): two phases.

- ``teacher``: Balanced Softmax CE (``loss.bsce_tau``), the ``bsce`` recipe.
- ``student``: a new network from scratch, ``(1 - alpha) * BSCE + alpha * tau^2 *
  KL(t || softmax(z_s / tau))`` with the teacher's flattened predictions
  ``t = power_normalize(softmax(z_t / tau), p)`` (``losses.dive_student_loss``).
  The teacher runs frozen inside the student's step on the same augmented batch.

Every row of the paper's ablation (Table 6) is an override of ``config.dive``:
``temperature`` (tau), ``power`` (p; 1 = none), ``alpha``, ``use_bsce`` (BSCE or CE
as the student's hard term), ``target`` (``t_tau`` or the ``t_tilde`` mixture).
``dive.teacher_dir`` takes the teacher from another run instead of this workdir.
"""
from __future__ import annotations

import dataclasses

from ltjax import losses
from ltjax.errors import ConfigError
from ltjax.models import build_model
from ltjax.recipes import supervised
from ltjax.train import Phase, Teacher, sampling


def check_config(dc):
  if dc.target not in losses.DIVE_TARGETS:
    raise ConfigError(f'dive.target={dc.target!r}; choose t_tau (the paper\'s method) or t_tilde '
                      f'(the mixture of its ablation).')
  if not dc.temperature > 0:
    raise ConfigError(f'dive.temperature={dc.temperature}: the temperature must be > 0 (paper: 3).')
  if not dc.power >= 0:
    raise ConfigError(f'dive.power={dc.power}: the power must be >= 0 (paper: 0.5; 1 = no flattening).')
  if not 0 <= dc.alpha <= 1:
    raise ConfigError(f'dive.alpha={dc.alpha}: the weight of the distillation term is in [0, 1] (paper: 0.5).')


def student_loss(config, dataset):
  dc, counts = config.dive, dataset.class_counts

  def loss(outputs, labels, epoch):
    z, zt = outputs['logits'], outputs['teacher']['logits']
    value, parts = losses.dive_student_loss(z, zt, labels, counts, dc.temperature, dc.power, dc.alpha,
                                            dc.use_bsce, dc.target, config.loss.bsce_tau)
    return value, {'accuracy': losses.accuracy(z, labels), 'teacher_accuracy': losses.accuracy(zt, labels),
                   **parts}

  return loss


def dive(config, dataset):
  check_config(config.dive)
  teacher = dataclasses.replace(supervised.bsce(config, dataset)[0], name='teacher')
  student = Phase(
      name='student', model=build_model(config.model, dataset.num_classes),
      loss=student_loss(config, dataset), train=config.train, **sampling(config.data),
      teacher=Teacher(phase='teacher', model=teacher.model, path=config.dive.teacher_dir,
                      path_field='dive.teacher_dir'))
  return [teacher, student]
