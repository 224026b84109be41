"""The generic training loop of one phase. It knows no method names: a recipe hands
it a ``Phase`` (model, loss function, sampler, optimizer settings).

The step is pure, ``step(state, data, rng, teacher_variables) -> (state, metrics)``:
it takes its batch from the phase's feed (``ltjax/feeds.py``: sampled and gathered on the
device, or read by the host pipeline), augments it, applies the phase's ``StepHooks``
and frozen ``Teacher`` if it has them, and updates the parameters. It is jitted once per
phase with the state donated, ``data`` placed as the feed says and everything else
replicated. ``train_phase`` sets the phase up (schedule, feed, ``init_state``, restore)
and runs the loop (logging, NaN checks, periodic evaluation and checkpoints).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from tqdm.auto import tqdm

from ltjax import checkpoint, evaluate, feeds, parallel, preemption
from ltjax.data import augment
from ltjax.data.samplers import Sampler
from ltjax.errors import ConfigError, NonFiniteLossError, Preempted
from ltjax.logs import MetricLogger

LossFn = Callable[[dict, jax.Array, jax.Array], tuple[jax.Array, dict]]
# How a frozen network's BatchNorm runs: on the batch's statistics or its running ones
# (Teacher.batch_norm, ssd.teacher_bn, stage2.backbone_bn).
BATCH_NORM_MODES = ('train', 'eval')


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen network that runs inside a phase's jitted step (DiVE's and SSD's teacher).

  Its final variables come from an earlier phase of the recipe (``workdir/<phase>``)
  or, with ``path``, from a phase folder or checkpoint folder of another run. Its
  weights never change; ``batch_norm`` says which statistics its BatchNorm uses:
  ``eval``, the running statistics (BagofTricks-LT's DiVE teacher), or ``train``, those
  of the step's batch (SSD's official stage III, where ``model.train()`` also puts the
  frozen teacher in training mode); running statistics updated there are discarded.
  """
  phase: str
  model: Any
  path: str = ''
  # The config field that sets ``path``, named in error messages.
  path_field: str = ''
  batch_norm: str = 'eval'

  def __post_init__(self):
    if self.batch_norm not in BATCH_NORM_MODES:
      raise ConfigError(f'teacher BatchNorm {self.batch_norm!r}; choose eval (running statistics) '
                        f'or train (the batch\'s statistics).')

  def apply(self, variables, x):
    """The teacher's outputs on ``x``, without gradient."""
    if self.batch_norm == 'train':
      outputs, _ = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
    else:
      outputs = self.model.apply(variables, x, train=False)
    return jax.lax.stop_gradient(outputs)


@dataclasses.dataclass(frozen=True)
class StepHooks:
  """What a phase adds to the generic step beyond ``model(augmented batch)``.

  - ``init(variables) -> aux``: state the step carries in ``TrainState.aux`` and that is
    checkpointed with it (SSD's momentum encoder and queue of keys).
  - ``prepare(key, batch, x, aux) -> (inputs, extras, aux)``: the model's inputs (e.g.
    each image at four rotations) from the batch (uint8 ``images``, ``labels``, and from
    the host pipeline ``key_images`` where ``two_views``) and its augmented ``x``, and
    ``extras`` merged into the loss's ``outputs`` (e.g. rotation labels, momentum keys,
    the queue), computed without gradient.
  - ``update(aux, params, extras, labels) -> aux``: after the optimizer update (the
    momentum encoder's moving average, the queue's FIFO update).

  The step is jitted over global arrays, so ``extras`` hold the whole global batch
  whatever the number of devices.
  """
  init: Callable[[dict], Any] | None = None
  prepare: Callable[..., tuple] | None = None
  update: Callable[..., Any] | None = None
  # The host pipeline also delivers a second random resized crop, ``key_images``.
  two_views: bool = False


@dataclasses.dataclass(frozen=True)
class Phase:
  """One named step of a recipe's pipeline.

  ``loss(outputs, labels, epoch) -> (loss, metrics)`` receives the model's outputs
  dict (``logits``, ``features``) in training mode and the current epoch (a traced
  int, for schedules such as DRW); ``train`` holds the optimizer and schedule fields
  of the config (``config.train``). With a ``teacher``, ``outputs['teacher']`` holds the
  frozen teacher's outputs (no gradient; BatchNorm as ``Teacher.batch_norm`` says) on the
  same augmented batch.
  """
  name: str
  model: Any
  loss: LossFn
  sampler: str
  train: Any
  # How many consecutive images of a class the class_aware sampler takes at its turn.
  samples_per_class: int = 1
  # How the progressive sampler's class-balanced share grows (samplers.PROGRESSIVE_FORMS).
  progressive_form: str = 'kang'
  # Which head's logits are evaluated.
  eval_output: str = 'logits'
  # The evaluated logits times this: the softmax the phase trained (LDAM's cosine classifier
  # is trained on s cos, so its ECE, NLL and predicted probabilities are softmax(s cos)).
  # Top-1 and every ranking are unchanged.
  eval_scale: float = 1.0
  # Hand-off: start from the final variables of an earlier phase of the recipe,
  # ``init(fresh_variables, earlier_variables) -> variables``.
  init_from: str | None = None
  init: Callable[[dict, dict], dict] | None = None
  # ``init_from`` of another run: that phase's folder, its run's workdir or an orbax
  # checkpoint folder ('' = this workdir's), and the config field that set it (errors name it).
  init_path: str = ''
  init_path_field: str = ''
  # ``trainable(path) -> bool`` on parameter paths (tuples of names); None: all.
  trainable: Callable[[tuple], bool] | None = None
  # ``decayed(path) -> bool``: the parameters weight decay acts on; None: all.
  decayed: Callable[[tuple], bool] | None = None
  # ``extra_eval(variables, init_variables, evaluate_fn) -> dict`` adds results (a sweep).
  extra_eval: Callable[[dict, dict, Callable], dict] | None = None
  teacher: Teacher | None = None
  hooks: StepHooks | None = None
  # More outputs to evaluate as classifiers (SSD's soft head): (result name, output key)
  # pairs, stored in results['heads']; ``main_head`` names the eval_output's row.
  extra_heads: tuple[tuple[str, str], ...] = ()
  main_head: str = ''
  # Fresh weights from this phase's own stream instead of the seed's (phase_keys): a new
  # network independent of the recipe's first phase (SSD's phase III).
  own_init: bool = False


def sampling(group) -> dict:
  """A ``Phase``'s sampler fields from a config group that has them (``config.data``,
  ``config.stage2``)."""
  return dict(sampler=group.sampler, samples_per_class=group.samples_per_class,
              progressive_form=group.progressive_form)


class TrainState(train_state.TrainState):
  """flax's ``TrainState`` (step, params, the optax optimizer and its state; ``tx`` and
  ``apply_fn`` are static, never checkpointed) with BatchNorm's running statistics and
  the state of the phase's ``StepHooks`` (as flax's ImageNet example adds batch_stats)."""
  batch_stats: Any = None
  aux: Any = struct.field(default_factory=dict)  # StepHooks.init's state


WARMUPS = ('linear', 'ldam', 'bbn')
# cosine: every step (optax); cosine_epoch: once an epoch (_epoch_cosine).
SCHEDULES = ('step', 'cosine', 'cosine_epoch', 'constant')


def _warmup_factor(shape: str, epoch, warmup_epochs: float):
  """The lr multiplier of a per-epoch warm-up at (0-based) ``epoch``, as the reference
  code computes it once at the start of each epoch:

  - ``ldam`` (LDAM-DRW's ``adjust_learning_rate``): ``(epoch + 1) / W`` while
    ``epoch + 1 <= W``: 0.2, 0.4, 0.6, 0.8, 1.0 for W = 5.
  - ``bbn`` (BBN's and BagofTricks-LT's ``WarmupMultiStepLR``, warm-up factor 1/3, stepped
    before each epoch with 1-based epochs, so epoch e trains with ``last_epoch = e + 1``):
    ``1/3 (1 - a) + a`` with ``a = (e + 1) / W`` while ``e + 1 < W``: 0.467, 0.6, 0.733,
    0.867, then 1.
  """
  e1 = epoch.astype(jnp.float32) + 1.0
  if shape == 'ldam':
    return jnp.where(e1 <= warmup_epochs, e1 / warmup_epochs, 1.0)
  a = e1 / warmup_epochs
  return jnp.where(e1 < warmup_epochs, (1.0 / 3.0) * (1.0 - a) + a, 1.0)


def _epoch_cosine(lr: float, epoch, epochs: int, first_epoch: int):
  """Cosine decay set at the start of each (0-based) ``epoch`` of ``epochs``:
  ``lr / 2 (1 + cos(pi (epoch + first_epoch) / epochs))``.

  - ``first_epoch`` 0: SSD-LT's ``adjust_learning_rate(optimizer, epoch)`` (``--cos``),
    epochs counted from 0: the first epoch at ``lr``, the last above 0.
  - ``first_epoch`` 1: Kang et al.'s ``CosineAnnealingLR(T_max=epochs, eta_min=0)``,
    stepped before each 1-based epoch: the first epoch already decayed, the last at 0.
  """
  e = jnp.asarray(epoch).astype(jnp.float32) + first_epoch
  return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * e / epochs))


@dataclasses.dataclass(frozen=True)
class SchedulePoints:
  """The warm-up and decay epochs of one run, resolved for its length (0-based epochs)."""
  warmup: str
  warmup_epochs: float
  boundaries: tuple


def _scale(tc) -> float:
  return tc.epochs / tc.schedule_epochs if tc.schedule_epochs else 1.0


def scaled_epoch(tc, epoch):
  """An epoch of the schedule (``loss.drw_epoch``) for this run's length: scaled by
  ``epochs / schedule_epochs`` and rounded to a whole epoch when the two differ."""
  scale = _scale(tc)
  return epoch if scale == 1.0 else int(round(epoch * scale))


def schedule_points(tc) -> SchedulePoints:
  """The schedule points of ``tc`` (``config.train``) for a run of ``tc.epochs``.

  The config gives them as its reference code does, for ``schedule_epochs`` (the
  reference's length; 0: this run's): a run of another length scales the warm-up (to
  1/1000 epoch) and the decay boundaries (to whole epochs, as the reference codes count
  them, never before epoch 1) by ``epochs / schedule_epochs``; a per-epoch warm-up scaled
  below 2 epochs rises every step instead (one epoch of it would be no warm-up). Then
  ``first_epoch`` turns the code's epoch numbers into 0-based ones (BBN: ``b - 1``)."""
  scale, first = _scale(tc), tc.first_epoch
  if scale == 1.0:
    return SchedulePoints(tc.warmup, float(tc.warmup_epochs), tuple(b - first for b in tc.lr_boundaries))
  warmup_epochs = round(tc.warmup_epochs * scale, 3)
  warmup = tc.warmup if warmup_epochs >= 2 else 'linear'
  return SchedulePoints(warmup, warmup_epochs, tuple(max(round(b * scale), 1) - first for b in tc.lr_boundaries))


def make_schedule(tc, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at each step: warm-up, then step decay (x ``lr_decay`` from each
  of the (possibly fractional) boundary epochs, cumulatively), cosine decay to zero at
  the last step (``cosine``) or set once an epoch as the SSD-LT and Kang et al. codes do
  (``cosine_epoch``, ``_epoch_cosine``), or constant; the points as ``schedule_points``
  resolves them.

  ``tc.warmup`` is the warm-up's shape over ``warmup_epochs``: ``linear`` rises every
  step from ``lr / warm_steps`` to ``lr`` and the decay follows it; ``ldam`` and ``bbn``
  are the per-epoch warm-ups of the LDAM-DRW and BBN / BagofTricks-LT code
  (``_warmup_factor``), multiplying the decay schedule, as those codes do.
  """
  total = tc.epochs * steps_per_epoch
  if tc.warmup not in WARMUPS:
    raise ConfigError(f'unknown train.warmup {tc.warmup!r}; choose one of {WARMUPS}.')
  points = schedule_points(tc)
  warmup = points.warmup
  per_epoch = warmup != 'linear'
  warm = 0 if per_epoch else int(round(points.warmup_epochs * steps_per_epoch))
  if tc.schedule == 'step':
    boundaries = {int(round(e * steps_per_epoch)) - warm: tc.lr_decay for e in points.boundaries
                  if 0 < int(round(e * steps_per_epoch)) - warm < total}
    main = optax.piecewise_constant_schedule(tc.lr, boundaries)
  elif tc.schedule == 'cosine':
    main = optax.cosine_decay_schedule(tc.lr, max(total - warm, 1))
  elif tc.schedule == 'cosine_epoch':
    # Set once an epoch, as the reference codes do: (step + shift) is the run's step
    # (join_schedules below hands ``main`` the steps after a linear warm-up).
    shift = 0 if per_epoch else warm
    main = lambda step: _epoch_cosine(tc.lr, (jnp.asarray(step) + shift) // steps_per_epoch, tc.epochs,
                                      tc.first_epoch)
  elif tc.schedule == 'constant':
    main = optax.constant_schedule(tc.lr)
  else:
    raise ConfigError(f'unknown train.schedule {tc.schedule!r}; choose one of {SCHEDULES}.')
  if per_epoch:
    if points.warmup_epochs <= 0:
      return main
    return lambda step: main(step) * _warmup_factor(warmup, jnp.asarray(step) // steps_per_epoch,
                                                    points.warmup_epochs)
  if warm <= 0:
    return main
  # Reaches lr at the end of warm-up, starting from lr / warm (never 0).
  warmup_fn = optax.linear_schedule(tc.lr / warm, tc.lr, warm - 1) if warm > 1 else optax.constant_schedule(tc.lr)
  return optax.join_schedules([warmup_fn, main], [warm])


def _by_path(fn, params):
  """``fn(path)`` at every leaf of ``params``, paths as tuples of names."""
  return jax.tree_util.tree_map_with_path(lambda path, _: fn(tuple(getattr(k, 'key', str(k)) for k in path)), params)


# A metric of the step that the loop checks (check_finite) and does not log.
PARAMS_FINITE = 'params_finite'


def _backbone_lr_scale(tc) -> float:
  return float(tc.get('backbone_lr_scale', 1.0)) if hasattr(tc, 'get') else 1.0


def make_optimizer(tc, schedule, trainable=None, params=None, decayed=None) -> optax.GradientTransformation:
  """SGD with momentum and coupled L2 weight decay, as PyTorch's ``SGD(weight_decay=)``.
  With ``trainable(path)``, the other parameters get zero updates (and no decay); with
  ``decayed(path)``, weight decay acts on those parameters alone. ``tc.backbone_lr_scale``
  (where the config has it) multiplies the backbone's lr, as a PyTorch parameter group
  of its own lr does (OLTR fine-tunes a pretrained backbone at 0.001 beside a classifier
  at 0.1): SGD's update is the lr times a buffer that does not depend on the lr."""
  sgd = optax.chain(
      optax.add_decayed_weights(tc.weight_decay, mask=None if decayed is None else _by_path(decayed, params)),
      optax.sgd(schedule, momentum=tc.momentum, nesterov=tc.nesterov))
  tx = sgd
  if trainable is not None:
    labels = _by_path(lambda path: 'train' if trainable(path) else 'frozen', params)
    tx = optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()}, labels)
  scale = _backbone_lr_scale(tc)
  if scale != 1.0:
    if params is None:
      raise ValueError('make_optimizer: train.backbone_lr_scale needs the params (to find the backbone).')
    tx = optax.chain(tx, optax.masked(optax.scale(scale), _by_path(lambda path: path[0] == 'backbone', params)))
  return tx


def make_train_step(phase: Phase, schedule, feed):
  """The step. ``feed`` (``ltjax/feeds.py``) turns the step's ``data`` argument into its
  batch (sampled and gathered on the device, or read by the host pipeline) and augments
  it; its ``sampler`` says how many steps an epoch has."""
  steps_per_epoch = feed.sampler.steps_per_epoch
  backbone_lr_scale = _backbone_lr_scale(phase.train)

  def step(state: TrainState, data: dict, rng: jax.Array, teacher_variables: Any):
    # The sampler's key is the same at every step of the run: the sampler itself folds
    # in the epoch (instance: one permutation per epoch, so every image is seen once an
    # epoch) or the step (the class-aware samplers). Only augmentation and the hooks
    # draw from a per-step key.
    k_sample, k_steps = jax.random.split(rng)
    key = jax.random.fold_in(k_steps, state.step)
    k_aug = jax.random.fold_in(key, 1)
    batch = feed.batch(data, k_sample, state.step)
    labels = batch['labels']
    x = feed.augment(k_aug, batch['images'])
    inputs, extras, aux = x, {}, state.aux
    hooks = phase.hooks
    if hooks is not None and hooks.prepare is not None:
      inputs, extras, aux = hooks.prepare(jax.random.fold_in(key, 2), batch, x, aux)
      extras = jax.lax.stop_gradient(extras)
    teacher_outputs = None
    if phase.teacher is not None:
      # The teacher runs here, on this step's augmented batch, rather than from a file of
      # soft labels: the crop and flip are drawn anew every step, and the soft label must
      # be the teacher's view of the very image the student sees. It costs one forward
      # pass (about a third of a training step) and no disk; its variables are
      # replicated like the student's parameters, so the batch sharding is all it needs.
      teacher_outputs = phase.teacher.apply(teacher_variables, x)

    def loss_fn(params):
      outputs, updates = phase.model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, inputs, train=True,
          mutable=['batch_stats'])
      outputs = {**outputs, **extras}
      if teacher_outputs is not None:
        outputs['teacher'] = teacher_outputs
      loss, metrics = phase.loss(outputs, labels, state.step // steps_per_epoch)
      return loss, (metrics, updates['batch_stats'])

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats, aux=aux)
    if hooks is not None and hooks.update is not None:
      new_state = new_state.replace(aux=hooks.update(aux, new_state.params, extras, labels))
    lr = schedule(state.step)
    # The loss is the update's input: an inf/NaN gradient with a finite loss shows here only.
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_state.params)]))
    metrics = {'loss': loss, 'lr': lr, **metrics, PARAMS_FINITE: finite.astype(jnp.float32)}
    if backbone_lr_scale != 1.0:  # the backbone's parameter group (make_optimizer); 'lr' is the head's
      metrics['lr_backbone'] = lr * backbone_lr_scale
    return new_state, metrics

  return step


def new_state(model, variables: dict, tx, aux=None, step: int = 0) -> TrainState:
  """A ``TrainState`` at ``step`` (an int32 scalar) of ``variables`` with ``tx``'s fresh state."""
  state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                            batch_stats=variables.get('batch_stats', {}), aux=aux if aux is not None else {})
  return state.replace(step=jnp.asarray(step, jnp.int32))


def init_state(phase: Phase, dataset, config, mesh, schedule, key, init_variables=None, pretrained: bool = False):
  """The phase's first ``TrainState`` (fresh variables from ``key``, or those an earlier
  phase hands over, merged by the recipe's ``phase.init``) and its optimizer; replicated.
  ``pretrained``: a fresh model's backbone comes from ``model.pretrained``."""
  aug = config.data.augment
  sample = augment.normalize(dataset.example_images(2), aug.mean, aug.std, dataset.pixel_scale)
  variables = phase.model.init(key, sample, train=False)
  if init_variables is not None:  # an earlier phase's variables, merged by the recipe
    variables = phase.init(variables, init_variables) if phase.init else init_variables
  elif pretrained and config.model.get('pretrained'):
    from ltjax.models import pretrained as pretrained_lib

    fresh = variables  # each host reads the file (or fetches the URL) itself: all stop if one cannot
    variables = parallel.agreed(lambda: pretrained_lib.into_classifier(
        fresh, config.model, cache_dir=config.run.cache_dir, dataset_name=config.data.name),
        'the pretrained weights could not be read')
    if parallel.is_main():
      print(f'[{phase.name}] backbone from model.pretrained={config.model.pretrained} (its fc left out)', flush=True)
  tx = make_optimizer(phase.train, schedule, phase.trainable, variables['params'], phase.decayed)
  aux = phase.hooks.init(variables) if phase.hooks is not None and phase.hooks.init else {}
  state = new_state(phase.model, variables, tx, aux)
  return jax.device_put(state, parallel.replicated(mesh))


def phase_keys(seed: int, stream: int = 0, own_init: bool = False) -> tuple[jax.Array, jax.Array]:
  """The keys of a phase: its initial weights' (from the seed alone, or with ``own_init``
  from its stream too) and its steps' (batch order and augmentation: its own for each
  ``stream`` > 0; stream 0 is the seed's)."""
  init_key, step_rng = jax.random.split(jax.random.key(seed))
  if own_init and stream:
    init_key = jax.random.fold_in(init_key, stream)
  return init_key, (jax.random.fold_in(step_rng, stream) if stream else step_rng)


def host_seed(seed: int, stream: int = 0) -> int:
  """The host pipeline's seed of a phase's stream (stream 0: the seed itself)."""
  return seed + (stream << 32)


BEST_VAL = 'best_val'  # a phase's folder of its best validation epoch's checkpoint


def train_phase(phase: Phase, dataset, config, phase_dir: str, mesh, evaluate_fn=None,
                init_variables=None, teacher_variables=None, stream: int = 0, validate_fn=None):
  """Trains ``phase`` to its last step, resuming from ``phase_dir/checkpoints``.

  ``stream`` (the phase's position in its recipe) gives each phase its own batch order
  and augmentation: a later phase does not replay the first one's (the reference codes
  run a DiVE student, or SSD's phases, as separate runs whose data orders differ). The
  initial weights come from ``config.seed`` alone, the same in every phase, as in
  BagofTricks-LT, whose teacher and student runs both seed 42 before building the model;
  a phase with ``own_init`` (SSD's new network of phase III) draws them from its stream.

  ``evaluate_fn(variables) -> dict`` is called every ``eval_every_epochs`` and its
  scalars are logged. ``validate_fn`` (the validation split's evaluation) is called every
  ``run.val_every_epochs`` and at the last epoch: its scalars are logged (``val/``) and the
  best epoch's variables kept in ``phase_dir/best_val`` (``checkpoint.BestKept``).
  Returns the final variables (``params``, ``batch_stats``) and timings:
  ``train_seconds`` (the loop, compile included), ``first_step_seconds`` (compile + first
  step), ``steps_run`` (this process's steps, after any resume), and with ``validate_fn``
  ``best_val``: the kept epoch's validation results (``epoch``, ``step``, accuracies).
  ``teacher_variables`` are the frozen teacher's, for a phase with a ``teacher``.
  """
  tc = phase.train
  if (phase.teacher is None) != (teacher_variables is None):
    raise ValueError(f'phase {phase.name!r}: teacher_variables must be given exactly when the phase has a teacher.')
  parallel.check_batch_size(tc.batch_size, mesh)
  sampler = Sampler(kind=phase.sampler, num_examples=len(dataset.train_labels),
                    batch_size=tc.batch_size, class_counts=tuple(int(c) for c in dataset.class_counts),
                    total_epochs=tc.epochs, drop_last=config.data.drop_last, per_class=phase.samples_per_class,
                    progressive_form=phase.progressive_form)
  steps_per_epoch = sampler.steps_per_epoch
  total_steps = tc.epochs * steps_per_epoch
  schedule = make_schedule(tc, steps_per_epoch)
  feed = feeds.make_feed(dataset, sampler, config, mesh, total_steps,
                         two_views=phase.hooks is not None and phase.hooks.two_views,
                         seed=host_seed(config.seed, stream))
  init_key, step_rng = phase_keys(config.seed, stream, own_init=phase.own_init)
  # Every checkpoint_every_epochs epochs, but not more often than every
  # checkpoint_min_seconds (on a fast accelerator an epoch takes well under a second).
  rc = config.run
  mgr = checkpoint.manager(os.path.join(phase_dir, 'checkpoints'), keep=rc.keep_checkpoints,
                           every_steps=rc.checkpoint_every_epochs * steps_per_epoch,
                           min_seconds=rc.checkpoint_min_seconds)
  # Pretrained weights are read only where the phase starts afresh, not when it resumes.
  # (Process 0's view of the folder decides, so that every process takes the same path.)
  fresh_start = bool(parallel.of_process_0([int(mgr.latest_step() is None)])[0])
  state = init_state(phase, dataset, config, mesh, schedule, init_key, init_variables, pretrained=fresh_start)
  replicated = parallel.replicated(mesh)
  teacher_variables = jax.device_put(teacher_variables or {}, replicated)
  state = feed.restore(mgr, state)
  start = int(state.step)
  val_every = rc.val_every_epochs if validate_fn is not None else 0
  kept = checkpoint.BestKept(os.path.join(phase_dir, BEST_VAL)) if val_every and total_steps else None
  dropped = kept.drop_after(start) if kept is not None else []
  # The first epoch of this phase's unbroken run of validations: the choice is among the
  # epochs from there (a run without run.val_every_epochs before a resume validated none).
  since = kept.best()['since'] if kept is not None and kept.best() else None
  step_fn = jax.jit(make_train_step(phase, schedule, feed),
                    in_shardings=(replicated, feed.data_sharding, replicated, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  # A run that resumes at the end of an epoch evaluates it again where this run's cadence
  # evaluates that epoch (a crash may have come between its checkpoint and its evaluations);
  # metrics.jsonl drops those records of the step it resumes at, and keeps the others.
  at_epoch_end = bool(start) and start % steps_per_epoch == 0
  redo_val = kept is not None and at_epoch_end and (
      (start // steps_per_epoch) % val_every == 0 or start == total_steps)
  eval_every = config.run.eval_every_epochs if evaluate_fn is not None else 0
  redo_test = bool(eval_every) and at_epoch_end and start < total_steps and (start // steps_per_epoch) % eval_every == 0
  logger = MetricLogger(phase_dir, start=start,
                        repeated=tuple(p for p, redo in (('val/', redo_val), ('test/', redo_test)) if redo))
  is_main = parallel.is_main()
  bar = tqdm(total=total_steps, initial=start, desc=phase.name, unit='step', disable=not is_main,
             dynamic_ncols=True, mininterval=1.0)
  if start and is_main:
    bar.write(f'[{phase.name}] resumed from checkpoint at step {start} of {total_steps}')
  if dropped and is_main:
    bar.write(f'ltjax: warning: [{phase.name}] the best validation epoch kept at step {max(dropped)} is newer '
              f'than the step this run starts from ({start}); it was dropped, and the choice is made '
              f'again from the epochs this run trains.')
  log_every = max(1, min(config.run.log_every_steps, steps_per_epoch))
  pending, t_last, n_last = None, time.perf_counter(), start

  def check_finite(step_done, metrics):
    """Refuses a diverged step (a non-finite loss, or parameters that an inf/NaN gradient
    made non-finite); takes ``PARAMS_FINITE`` out of ``metrics`` (not a logged metric)."""
    params_finite = metrics.pop(PARAMS_FINITE, 1.0) == 1.0
    if not math.isfinite(metrics['loss']) or not params_finite:
      checkpoint.finish(mgr)
      raise NonFiniteLossError(
          f'[{phase.name}] ' + (f'loss is {metrics["loss"]}' if not math.isfinite(metrics['loss']) else
                                f'the parameters are not finite (a non-finite gradient; loss {metrics["loss"]:.4g})') +
          f' at step {step_done} (epoch '
          f'{step_done / steps_per_epoch:.2f}, lr {metrics["lr"]:.4g}). Fix: lower the lr '
          f'(--config.train.lr; a classifier stage: --config.stage2.lr) or lengthen the warm-up '
          f'(--config.train.warmup_epochs), with a new --workdir: this one keeps the config it was '
          f'started with, and rerunning it unchanged would diverge again. ' + (
              f'The last good checkpoint (step {mgr.latest_step()}) is kept in {phase_dir}/checkpoints.'
              if mgr.latest_step() is not None else 'No checkpoint of this phase was written yet.'))

  def flush(pending, now_step):
    nonlocal t_last, n_last
    step_done, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for that step only
    check_finite(step_done, metrics)
    now = time.perf_counter()
    ips = (now_step - n_last) * tc.batch_size / max(now - t_last, 1e-9)
    t_last, n_last = now, now_step
    metrics['images_per_sec'] = ips
    logger.write(step_done, metrics, prefix='train/')
    bar.set_postfix(epoch=f'{step_done / steps_per_epoch:.1f}', loss=f'{metrics["loss"]:.3f}',
                    img_s=f'{ips:.0f}', refresh=False)

  def validate(step_done, last_metrics=None):
    """The validation split at the end of epoch ``step_done / steps_per_epoch``: logged,
    and a new best kept, after the main checkpoint of that step is written."""
    nonlocal since
    epoch = step_done // steps_per_epoch
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    res = evaluate.summary(validate_fn(variables))
    logger.write(step_done, {'epoch': epoch, **res}, prefix='val/')
    since = epoch if since is None else since
    if kept.improves(step_done, res['top1']):
      if mgr.latest_step() != step_done:
        if last_metrics is not None:
          check_finite(step_done, {k: float(v) for k, v in jax.device_get(last_metrics).items()})
        checkpoint.save(mgr, step_done, state)
      checkpoint.finish(mgr)  # a crash from here on resumes at this step, which is validated again
      kept.offer(step_done, variables, {**res, 'epoch': epoch, 'since': since})
      if is_main:
        bar.write(f'[{phase.name}] epoch {epoch}: validation top-1 {res["top1"]:.2f}, the best so far')

  def test_epoch(step_done):
    """The periodic test evaluation (run.eval_every_epochs) at the end of an epoch: logged
    (the test-selected best epoch is read from these records), never a choice of the run."""
    epoch = step_done // steps_per_epoch
    res = evaluate_fn({'params': state.params, 'batch_stats': state.batch_stats})
    logger.write(step_done, {'epoch': epoch, **evaluate.summary(res)}, prefix='test/')
    if is_main:
      bar.write(f'[{phase.name}] epoch {epoch}: test top-1 {res["top1"]:.2f}')

  clean = False  # the loop finished, or stopped on purpose with its checkpoint written
  try:
    # A run that resumes at the end of a validation epoch validates it (again): a crash
    # between that epoch's checkpoint and its validation would otherwise skip it.
    if redo_val:
      validate(start)
    if redo_test:  # so is its periodic test evaluation
      test_epoch(start)
    t_loop = time.perf_counter()
    first_step_seconds = None
    for step in range(start, total_steps):
      state, metrics = step_fn(state, feed.next(), step_rng, teacher_variables)
      feed.prefetch()  # the host reads and copies the next batch while the device works
      if first_step_seconds is None:
        jax.block_until_ready(metrics)
        first_step_seconds = time.perf_counter() - t_loop
      # Read a step's metrics one step late, so the host never waits on the device.
      if pending is not None:
        flush(pending, step)
        pending = None
      if (step + 1) % log_every == 0 or step + 1 == total_steps:
        pending = (step + 1, metrics)
      bar.update(1)
      if (step + 1) % steps_per_epoch == 0:
        epoch = (step + 1) // steps_per_epoch
        last = step + 1 == total_steps
        if pending is not None:  # logged before the epoch's checkpoint (here or validate's)
          flush(pending, step + 1)
          pending = None
        if last or mgr.should_save(step + 1):  # orbax's policies (checkpoint.manager)
          # Never save a diverged state: NaN parameters would poison every resume.
          check_finite(step + 1, {k: float(v) for k, v in jax.device_get(metrics).items()})
          checkpoint.save(mgr, step + 1, state)
        if evaluate_fn is not None and config.run.eval_every_epochs and epoch % config.run.eval_every_epochs == 0 and not last:
          test_epoch(step + 1)
        if kept is not None and (epoch % val_every == 0 or last):
          validate(step + 1, metrics)
      if step + 1 < total_steps and preemption.reached(step + 1):
        # A SIGTERM / SIGINT: every process stops at this same step, saves and exits.
        if pending is not None:
          flush(pending, step + 1)
        check_finite(step + 1, {k: float(v) for k, v in jax.device_get(metrics).items()})
        if mgr.latest_step() != step + 1:
          checkpoint.save(mgr, step + 1, state)
        checkpoint.finish(mgr)
        clean = True
        raise Preempted(
            f'[{phase.name}] stopped by {preemption.received() or "a preemption notice"} at step {step + 1} '
            f'of {total_steps} (epoch {(step + 1) / steps_per_epoch:.2f}); a checkpoint of that step is in '
            f'{phase_dir}/checkpoints. Rerun the same command to resume from it.')
    if pending is not None:
      flush(pending, total_steps)
    jax.block_until_ready(state)
    stats = {'train_seconds': time.perf_counter() - t_loop, 'steps_run': total_steps - start,
             'first_step_seconds': first_step_seconds}
    if mgr.latest_step() != total_steps:  # only when nothing ran after a finished save
      checkpoint.save(mgr, total_steps, state)
    checkpoint.finish(mgr)
    if kept is not None:
      stats['best_val'] = kept.best()
    clean = True
  finally:
    # Also when the loop stops on an error (a diverged loss, a full disk, ...): the host
    # pipeline's reader threads, the progress bar and the log files are let go, best
    # effort, never hiding the error. The checkpoint manager is closed only after a clean
    # end: after a failed write, closing it would wait on that write again.
    closables = ((mgr, kept, feed, bar, logger) if clean else (feed, bar, logger))
    for closable in (c for c in closables if c is not None):
      try:
        closable.close()
      except Exception:  # noqa: BLE001
        if clean:
          raise
  return {'params': state.params, 'batch_stats': state.batch_stats}, stats
