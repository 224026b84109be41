"""SSD, Self Supervision to Distillation (Li, Wang, Wu; METHODS.md 2): four phases.

- ``selfsup`` (I): ``alpha1 * CE + alpha2 * L_self`` with instance-balanced sampling;
  ``L_self`` is rotation prediction (each image also at 90, 180, 270 degrees, a 4-way
  head on the shared features) or MoCo v2 contrast (a momentum encoder kept as a moving
  average inside the step, a FIFO queue of keys in the train state, InfoNCE at
  ``moco_temperature``, same-label keys optionally removed from the negatives). The key
  view's augmentation is MoCo v2's (``ssd.key_view``: jitter with hue in random order,
  grayscale, blur).
- ``teacher`` (II): phase I's backbone frozen, class-balanced sampling, the classifier
  refit by LWS (default) or cRT (``config.stage2`` schedule): the soft-label generator.
- ``student`` (III): a new network from scratch (its own initial weights, not phase I's)
  with a hard head (``CE``) and a soft head
  (``T^2 KL(teacher || soft)`` at ``distill_temperature``) on one backbone, weights
  ``lambda1`` and ``lambda2`` (as the official code's stage III: no self-supervision;
  ``student_selfsup`` adds phase I's ``alpha2 * L_self``); the frozen phase-II teacher
  runs inside the step on the same augmented batch, its BatchNorm on that batch's
  statistics (``teacher_bn='train'``: the official stage III, whose ``model.train()``
  reaches the teacher too) or on its running statistics (``'eval'``). Both heads are
  evaluated (rows ``student (hard)`` and ``student (soft)``).
- ``student_lws`` (IV, ``config.ssd.phase4``): LWS on the phase-III backbone and the
  ``phase4_head`` classifier.

All fields are in ``config.ssd``; nothing of the method is in the trainer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import losses, selfsup
from ltjax.data import augment
from ltjax.errors import ConfigError
from ltjax.models import SELFSUP, build_model
from ltjax.recipes.decoupled import classifier_phase
from ltjax.train import Phase, StepHooks, Teacher


def check_config(config):
  sc = config.ssd
  if sc.selfsup not in SELFSUP:
    raise ConfigError(f'ssd.selfsup={sc.selfsup!r}; choose rotation (CIFAR) or contrastive (MoCo v2).')
  if sc.generator not in ('lws', 'crt'):
    raise ConfigError(f'ssd.generator={sc.generator!r}; choose lws (the paper) or crt.')
  if sc.phase4_head not in ('hard', 'soft'):
    raise ConfigError(f'ssd.phase4_head={sc.phase4_head!r}; choose hard or soft.')
  if sc.selfsup == 'contrastive':
    if sc.queue_size < config.train.batch_size:
      raise ConfigError(f'ssd.queue_size={sc.queue_size} is smaller than a batch '
                        f'({config.train.batch_size}); the queue must hold at least one batch of keys.')
    if not 0 <= sc.moco_momentum < 1:
      raise ConfigError(f'ssd.moco_momentum={sc.moco_momentum}: the moving average needs 0 <= m < 1 (MoCo: 0.999).')
    check_key_view(sc.key_view)
  if not sc.distill_temperature > 0:
    raise ConfigError(f'ssd.distill_temperature={sc.distill_temperature} must be > 0 (paper: 2).')


def check_key_view(kv):
  """Refuses a ``config.ssd.key_view`` that torchvision's transforms would refuse."""
  for name in ('jitter_p', 'grayscale_p', 'blur_p'):
    if not 0 <= kv[name] <= 1:
      raise ConfigError(f'ssd.key_view.{name}={kv[name]} is a probability: 0 <= p <= 1 (MoCo v2: 0.8, 0.2, 0.5).')
  if not kv.jitter >= 0:
    raise ConfigError(f'ssd.key_view.jitter={kv.jitter} must be >= 0 (MoCo v2: 0.4).')
  if not 0 <= kv.hue <= 0.5:
    raise ConfigError(f'ssd.key_view.hue={kv.hue}: torchvision takes 0 <= hue <= 0.5 (MoCo v2: 0.1).')
  sigma = tuple(kv.blur_sigma) if isinstance(kv.blur_sigma, (tuple, list)) else (kv.blur_sigma,)
  if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
    raise ConfigError(f'ssd.key_view.blur_sigma={tuple(kv.blur_sigma)} needs 0 < low <= high (MoCo v2: (0.1, 2.0)).')
  if kv.blur_kernel < 1 or kv.blur_kernel % 2 == 0:
    raise ConfigError(f'ssd.key_view.blur_kernel={kv.blur_kernel} must be odd and positive (224 images: 23).')


def key_view_args(kv) -> dict:
  """``config.ssd.key_view`` as the keyword arguments of ``augment.moco_colour``."""
  return dict(jitter=float(kv.jitter), hue=float(kv.hue), jitter_p=float(kv.jitter_p),
              grayscale_p=float(kv.grayscale_p), blur_p=float(kv.blur_p),
              blur_sigma=tuple(float(v) for v in kv.blur_sigma), blur_kernel=int(kv.blur_kernel),
              random_order=bool(kv.random_order))


def selfsup_hooks(config, dataset, model):
  """The step hooks of the self-supervised task: rotated copies as the model's input,
  or MoCo's key view, momentum encoder and queue."""
  sc, aug = config.ssd, config.data.augment
  if sc.selfsup == 'rotation':
    def prepare(key, batch, x, aux):
      inputs, rotations = selfsup.rotate_batch(x)
      return inputs, {'rotation_labels': rotations}, aux
    return StepHooks(prepare=prepare)

  def init(variables):
    key = jax.random.key(config.seed + 1)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # own buffers: the state is donated
    return {'params': copy(variables['params']), 'batch_stats': copy(variables.get('batch_stats', {})),
            'queue': selfsup.init_queue(key, sc.queue_size, sc.proj_dim)}

  colour = key_view_args(sc.key_view)  # jitter, grayscale, blur (blur_p 0: none)

  def prepare(key, batch, x, aux):
    if 'key_images' in batch:  # the host pipeline cropped the key view (random resized crop)
      view = augment.moco_colour(key, batch['key_images'], aug.mean, aug.std, dataset.pixel_scale, **colour)
    else:
      view = augment.moco_view(key, batch['images'], pad=aug.pad, flip=aug.flip, mean=aug.mean,
                               std=aug.std, scale=dataset.pixel_scale, **colour)
    out, updates = model.apply({'params': aux['params'], 'batch_stats': aux['batch_stats']}, view,
                               train=True, mutable=['batch_stats'])
    aux = {**aux, 'batch_stats': updates['batch_stats']}
    queue = aux['queue']
    return x, {'keys': out['selfsup'], 'queue': queue['keys'], 'queue_labels': queue['labels']}, aux

  def update(aux, params, extras, labels):
    return {**aux, 'params': selfsup.ema_update(aux['params'], params, sc.moco_momentum),
            'queue': selfsup.enqueue(aux['queue'], extras['keys'], labels)}

  # The host pipeline then crops the key view itself (random resized crop, scale 0.2-1).
  return StepHooks(init=init, prepare=prepare, update=update, two_views=True)


def selfsup_loss(config, outputs, labels):
  """The self-supervised term on the model's ``selfsup`` output."""
  sc = config.ssd
  if sc.selfsup == 'rotation':
    value = losses.rotation_loss(outputs['selfsup'], outputs['rotation_labels'])
    return value, {'rotation_accuracy': losses.accuracy(outputs['selfsup'], outputs['rotation_labels'])}
  mask = sc.mask_same_label
  value = losses.info_nce(outputs['selfsup'], outputs['keys'], outputs['queue'], sc.moco_temperature,
                          labels if mask else None, outputs['queue_labels'] if mask else None)
  return value, {}


def phase1_loss(config):
  sc = config.ssd

  def loss(outputs, labels, epoch):
    z = outputs['logits'][:labels.shape[0]]  # the unrotated images come first
    ce = losses.cross_entropy(z, labels)
    ss, metrics = selfsup_loss(config, outputs, labels)
    return sc.alpha1 * ce + sc.alpha2 * ss, {'accuracy': losses.accuracy(z, labels), 'ce': ce,
                                             'selfsup': ss, **metrics}

  return loss


def phase3_loss(config):
  sc = config.ssd

  def loss(outputs, labels, epoch):
    n = labels.shape[0]
    hard_z, soft_z = outputs['logits'][:n], outputs['soft_logits'][:n]
    teacher = outputs['teacher']['logits']
    hard = losses.cross_entropy(hard_z, labels)
    # The soft head sees only the teacher's predictions, never the labels.
    soft = losses.distillation_loss(soft_z, teacher, sc.distill_temperature)
    value = sc.lambda1 * hard + sc.lambda2 * soft
    metrics = {'accuracy': losses.accuracy(hard_z, labels), 'soft_accuracy': losses.accuracy(soft_z, labels),
               'teacher_accuracy': losses.accuracy(teacher, labels), 'hard': hard, 'soft': soft}
    if sc.student_selfsup:
      ss, ss_metrics = selfsup_loss(config, outputs, labels)
      value = value + sc.alpha2 * ss
      metrics.update(selfsup=ss, **ss_metrics)
    return value, metrics

  return loss


def ssd(config, dataset):
  check_config(config)
  sc = config.ssd
  first_model = build_model(config.model, dataset.num_classes, selfsup=sc.selfsup, proj_dim=sc.proj_dim)
  first = Phase(name='selfsup', model=first_model, loss=phase1_loss(config), sampler='instance',
                train=config.train, hooks=selfsup_hooks(config, dataset, first_model))
  teacher = classifier_phase(config, dataset, 'teacher', sc.generator, 'selfsup', backbone_bn=sc.generator_bn)
  student_model = build_model(config.model, dataset.num_classes, soft_head=True,
                              selfsup=sc.selfsup if sc.student_selfsup else None, proj_dim=sc.proj_dim)
  student = Phase(
      name='student', model=student_model, loss=phase3_loss(config), sampler='instance', train=config.train,
      # The teacher's BatchNorm as ssd.teacher_bn says, whatever stage2.backbone_bn was.
      teacher=Teacher(phase='teacher', model=teacher.model.clone(backbone_train=True), path=sc.teacher_dir,
                      path_field='ssd.teacher_dir', batch_norm=sc.teacher_bn),
      hooks=selfsup_hooks(config, dataset, student_model) if sc.student_selfsup else None,
      main_head='hard', extra_heads=(('soft', 'soft_logits'),),
      own_init=True)  # a new network: the official stage III builds it unseeded, not as phase I's
  phases = [first, teacher, student]
  if sc.phase4:
    phases.append(classifier_phase(config, dataset, 'student_lws', 'lws', 'student',
                                   'head' if sc.phase4_head == 'hard' else 'soft_head'))
  return phases
