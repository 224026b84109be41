"""The machinery of the config files under ``configs/``: their argument string
(``file.py:key=value,flag``) and the one group of fields that may change between the runs
of one workdir. The fields themselves and every number of a recipe live in ``configs/``
(``configs/common.py`` has the fields every run has), none in the library.
"""
from __future__ import annotations

import ml_collections

from ltjax.errors import ConfigError  # noqa: F401 (configs raise it too)


def parse_args(arg: str | None, defaults: dict) -> ml_collections.ConfigDict:
  """Parses ``'dataset=cifar100,imb=100,smoke'`` against ``defaults`` (name -> default
  value, whose type the given value is converted to). A bare name sets a bool to True."""
  out = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r} in {arg!r}; valid arguments: '
                       f'{", ".join(sorted(defaults))} (e.g. configs/cifar_lt.py:dataset=cifar100,imb=100).')
    default = defaults[key]
    if isinstance(default, bool):
      if not sep:
        out[key] = True
      elif value.lower() in ('1', 'true', 'yes'):
        out[key] = True
      elif value.lower() in ('0', 'false', 'no'):
        out[key] = False
      else:
        raise ConfigError(f'config argument {key} takes true or false, got {value!r}.')
    elif not sep:
      raise ConfigError(f'config argument {key!r} needs a value, e.g. {key}={default}.')
    else:
      try:
        out[key] = type(default)(value) if default is not None else value
      except ValueError:
        raise ConfigError(f'config argument {key}={value!r} is not a {type(default).__name__}.') from None
  return ml_collections.ConfigDict(out)



# The config group that says how this run executes on this machine (where it reads its
# data, how many devices and readers, how often it logs, evaluates and checkpoints, which
# phases it runs) and never what it computes: the one group that may differ between the
# runs of one workdir (``pipeline.check_workdir``).
RUN_GROUP = 'run'
# What later phases take from an earlier one (config.handoff): its last epoch, or its best
# validation epoch. With 'best_val' the run field that says which epochs are validated
# decides what later phases train on, and a workdir keeps it (``HANDOFF_KEEPS``).
HANDOFFS = ('last', 'best_val')
HANDOFF_KEEPS = 'run.val_every_epochs'
# Config groups that one recipe alone reads (ltjax/recipes): every config has them, and
# for another method they change nothing that the run computes, so a workdir of that
# method resumes whatever they hold (``pipeline.check_workdir``).
RECIPE_GROUPS = {'dive': 'dive', 'ssd': 'ssd'}
# The fields that only say which images an epoch is chosen on: like the run group, they may
# change when a workdir is resumed (validation switched on), except under handoff='best_val'.
VALIDATION_ONLY = ('data.val_dir', 'data.val_file_list', 'data.val_file_list_sha256')


def _stage2_step(saved: dict) -> bool:
  return saved.get('stage2.schedule', saved.get('train.schedule')) == 'step'


# Fields added after runs were recorded without them, with the value that gives what ltjax
# computed before the field existed: a workdir's config.json that lacks one reads as if
# it held this value (``pipeline.check_workdir`` when a run resumes, ``ltjax.predict``).
# A callable takes the saved config (flattened, dotted keys).
LEGACY_VALUES = {
    'ssd.teacher_bn': 'eval',  # the phase-III teacher on its running statistics
    # SSD's phase II refit its classifier as stage2.backbone_bn said
    'ssd.generator_bn': lambda saved: saved.get('stage2.backbone_bn', 'eval'),
    'stage2.backbone_bn': 'eval',  # the frozen backbone's BatchNorm on running statistics
    'stage2.backbone_dir': '',  # the CE phase of the same workdir
    'data.val_dir': '',  # no validation folder
    'data.val_file_list': '',  # no Places-LT validation list
    'data.val_file_list_sha256': '',
    'handoff': 'last',  # later phases took an earlier phase's last epoch
    'stage2.batch_size': 0,  # the main phase's batch
    'stage2.first_epoch': lambda saved: saved.get('train.first_epoch', 0),  # inherited from train
    'stage2.nesterov': lambda saved: saved.get('train.nesterov', False),  # inherited from train
    # inherited from train where the stage's schedule read them, else unread (today's default)
    'stage2.warmup': lambda saved: (saved.get('train.warmup', 'linear') if saved.get('stage2.warmup_epochs', 0) > 0
                                    else 'linear'),
    'stage2.lr_boundaries': lambda saved: (saved.get('train.lr_boundaries', []) if _stage2_step(saved) else []),
    'stage2.lr_decay': lambda saved: saved.get('train.lr_decay', 0.01) if _stage2_step(saved) else 0.1,
    'model.conv_init': 'fan_in',  # every backbone's convolutions
    'model.pretrained': '',  # random initial weights
    'train.backbone_lr_scale': 1.0,  # one lr for every parameter
    'model.pretrained_sha256': '',
    'loss.focal_form': 'softmax',  # focal, cb_focal (and cb): LDAM-DRW's FocalLoss
    # tau_norm kept the CE classifier's bias (no other method reads the field)
    'loss.tau_norm_bias': lambda saved: saved.get('method') == 'tau_norm',
    # LDAM-DRW's cosine classifier as a shifted parameter (only ldam_drw builds it)
    'model.normed_init': lambda saved: 'shifted' if saved.get('method') == 'ldam_drw' else 'unit',
    # the progressive sampler mixed in t/T (no other sampler reads the field; SSD's phases I
    # and III and tau_norm sample by instance, the one-phase methods have no stage 2)
    'data.progressive_form': lambda saved: ('paper' if saved.get('data.sampler') == 'progressive'
                                            and saved.get('method') != 'ssd' else 'kang'),
    'stage2.progressive_form': lambda saved: ('paper' if saved.get('stage2.sampler') == 'progressive'
                                              and saved.get('method') in ('crt', 'lws', 'ssd') else 'kang'),
}
# Fields that nothing read before they were added (no class-aware cycles then): absent
# from a saved config, they match whatever value they have now.
LEGACY_UNREAD = {'data.samples_per_class': 4, 'stage2.samples_per_class': 4}


def with_legacy_values(saved: dict, current: dict | None = None) -> dict:
  """``saved`` (a recorded config, flattened with dotted keys) with the fields it lacks
  that ``LEGACY_VALUES`` / ``LEGACY_UNREAD`` know (the latter as in ``current`` where given)."""
  out = dict(saved)
  for key, value in LEGACY_VALUES.items():
    if key not in out:
      out[key] = value(saved) if callable(value) else value
  for key, value in LEGACY_UNREAD.items():
    if key not in out:
      out[key] = (current or {}).get(key, value)
  return out


# ---------------------------------------------------------------- checking every field
# What each field of a config may hold beyond its type (ml_collections' locked config
# already refuses a value of another type): ``path -> (check, what is allowed)``. Every
# field of every config under configs/ has a rule (tests/test_configs.py checks it), so a
# new field comes with its rule. Choices are read from the library (recipes, datasets,
# samplers, models) when checked.
def _number(low=None, high=None, *, low_open=False, high_open=False, integer=False):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
      return False
    if v != v:  # NaN
      return False
    if low is not None and (v <= low if low_open else v < low):
      return False
    return high is None or (v < high if high_open else v <= high)

  bounds = []
  if low is not None:
    bounds.append(f'{">" if low_open else ">="} {low:g}')
  if high is not None:
    bounds.append(f'{"<" if high_open else "<="} {high:g}')
  return check, ('an integer' if integer else 'a number') + (' ' + ' and '.join(bounds) if bounds else '')


def _choice(get_choices):
  def check(v):
    return v in get_choices()
  return check, lambda: 'one of ' + ', '.join(map(str, get_choices()))


def _each(rule, length=None):
  inner, text = rule

  def check(v):
    return isinstance(v, (list, tuple)) and (length is None or len(v) == length) and all(inner(x) for x in v)
  return check, (f'{length} values' if length else 'a list') + f', each {text}'


_ANY = (lambda v: True, 'anything')


def _choices():
  from ltjax import recipes, train
  from ltjax.data import registry, samplers
  from ltjax.models import BACKBONES, SELFSUP, heads, layers
  from ltjax.recipes import supervised

  return {'method': sorted(recipes.RECIPES), 'dataset': list(registry.DATASETS), 'sampler': samplers.KINDS,
          'warmup': train.WARMUPS, 'model': list(BACKBONES), 'head_init': heads.HEAD_INITS,
          'normed_init': heads.NORMED_INITS, 'conv_impl': layers.CONV_IMPLS, 'conv_init': tuple(layers.CONV_INITS),
          'selfsup': SELFSUP,
          'schedule': train.SCHEDULES,
          'dtype': ('float32', 'bfloat16'), 'generator': ('lws', 'crt'), 'phase4_head': ('hard', 'soft'),
          'target': ('t_tau', 't_tilde'), 'batch_norm': train.BATCH_NORM_MODES,
          'focal_form': supervised.FOCAL_FORMS, 'progressive_form': samplers.PROGRESSIVE_FORMS,
          'handoff': HANDOFFS}


def _pick(kind):
  return _choice(lambda: _choices()[kind])


_POS_INT = _number(1, integer=True)
_NONNEG_INT = _number(0, integer=True)
_POS = _number(0, low_open=True)
_NONNEG = _number(0)
_PROB = _number(0, 1)
_SHA256 = (lambda v: v == '' or (len(v) == 64 and all(c in '0123456789abcdef' for c in v.lower())),
           "'' or 64 hexadecimal digits")
_SCHEDULE = {
    'epochs': _POS_INT, 'batch_size': _POS_INT, 'lr': _POS, 'momentum': _number(0, 1, high_open=True),
    'nesterov': _ANY, 'weight_decay': _NONNEG, 'schedule': _pick('schedule'), 'warmup_epochs': _NONNEG,
    'warmup': _pick('warmup'), 'lr_boundaries': _each(_NONNEG), 'lr_decay': _number(0, 1, low_open=True),
    'first_epoch': _number(0, 1, integer=True), 'schedule_epochs': _NONNEG_INT, 'sampler': _pick('sampler'),
    'samples_per_class': _POS_INT, 'progressive_form': _pick('progressive_form'),
}
_SAMPLING = ('sampler', 'samples_per_class', 'progressive_form')  # data.* and stage2.*, not train.*
RULES = {
    'method': _pick('method'), 'seed': _NONNEG_INT, 'handoff': _pick('handoff'),
    'run.phases': _ANY, 'run.num_devices': _NONNEG_INT, 'run.data_dir': _ANY, 'run.cache_dir': _ANY,
    'run.download': _ANY, 'run.host_threads': _POS_INT, 'run.host_workers': _NONNEG_INT,
    'run.eval_batch_size': _POS_INT, 'run.log_every_steps': _POS_INT, 'run.eval_every_epochs': _NONNEG_INT,
    'run.val_every_epochs': _NONNEG_INT,
    'run.checkpoint_every_epochs': _POS_INT, 'run.checkpoint_min_seconds': _NONNEG,
    'run.keep_checkpoints': _POS_INT,
    'data.name': _pick('dataset'),
    # >= 1 for a long tail drawn by ltjax (0: the dataset's own split); the loader says
    # more about a factor below 1 ("did you mean IF = 1 / x").
    'data.imbalance_factor': (_NONNEG[0], 'a number >= 1 for the splits ltjax draws (CIFAR-LT, digits, a folder: '
                              '1 = balanced), or 0 where the dataset\'s own split fixes it (ImageNet-LT, '
                              'iNaturalist, Places-LT)'),
    'data.split_seed': _NONNEG_INT, 'data.test_per_class': _NONNEG_INT,
    **{f'data.{k}': _SCHEDULE[k] for k in _SAMPLING}, 'data.drop_last': _ANY, 'data.many_above': _NONNEG_INT,
    'data.few_below': _NONNEG_INT, 'data.augment.pad': _NONNEG_INT, 'data.augment.flip': _ANY,
    'data.augment.mean': _each(_number(0, 1)), 'data.augment.std': _each(_number(0, low_open=True)),
    'data.augment.jitter': _NONNEG, 'data.image_size': _POS_INT, 'data.resize_size': _POS_INT,
    'data.mock_examples': _NONNEG_INT, 'data.file_list': _ANY,
    'data.train_dir': _ANY, 'data.test_dir': _ANY, 'data.val_dir': _ANY,
    'data.holdout': _number(0, 1, low_open=True, high_open=True),
    'data.skip_bad_images': _ANY,
    'data.file_list_sha256': _SHA256, 'data.val_file_list': _ANY, 'data.val_file_list_sha256': _SHA256,
    'model.name': _pick('model'), 'model.depth': _POS_INT, 'model.width': _POS_INT, 'model.dtype': _pick('dtype'),
    'model.head_init': _pick('head_init'), 'model.normed_init': _pick('normed_init'),
    'model.conv_impl': _pick('conv_impl'), 'model.conv_init': _pick('conv_init'),
    'model.pretrained': _ANY, 'model.pretrained_sha256': _SHA256,
    'loss.bsce_tau': _NONNEG, 'loss.focal_gamma': _NONNEG, 'loss.focal_form': _pick('focal_form'),
    'loss.cb_beta': _number(0, 1, high_open=True),
    'loss.ldam_max_margin': _POS, 'loss.ldam_scale': _POS, 'loss.drw_epoch': _NONNEG_INT,
    'loss.tau_norm_tau': _NONNEG, 'loss.tau_norm_sweep': _each(_NONNEG), 'loss.tau_norm_bias': _ANY,
    'dive.temperature': _POS, 'dive.power': _POS, 'dive.alpha': _PROB, 'dive.use_bsce': _ANY,
    'dive.target': _pick('target'), 'dive.teacher_dir': _ANY,
    'ssd.selfsup': _pick('selfsup'), 'ssd.alpha1': _NONNEG, 'ssd.alpha2': _NONNEG, 'ssd.proj_dim': _POS_INT,
    'ssd.moco_momentum': _PROB, 'ssd.queue_size': _POS_INT, 'ssd.moco_temperature': _POS,
    'ssd.mask_same_label': _ANY, 'ssd.generator': _pick('generator'), 'ssd.distill_temperature': _POS,
    'ssd.lambda1': _NONNEG, 'ssd.lambda2': _NONNEG, 'ssd.student_selfsup': _ANY, 'ssd.phase4': _ANY,
    'ssd.phase4_head': _pick('phase4_head'), 'ssd.teacher_dir': _ANY, 'ssd.teacher_bn': _pick('batch_norm'),
    'ssd.generator_bn': _pick('batch_norm'),
    'ssd.key_view.jitter': _NONNEG, 'ssd.key_view.hue': _number(0, 0.5), 'ssd.key_view.jitter_p': _PROB,
    'ssd.key_view.grayscale_p': _PROB, 'ssd.key_view.blur_p': _PROB,
    'ssd.key_view.blur_sigma': _each(_POS, length=2), 'ssd.key_view.blur_kernel': _POS_INT,
    'ssd.key_view.random_order': _ANY,
    **{f'train.{k}': v for k, v in _SCHEDULE.items() if k not in _SAMPLING},
    'train.backbone_lr_scale': _POS,
    **{f'stage2.{k}': v for k, v in _SCHEDULE.items()}, 'stage2.batch_size': _NONNEG_INT,
    'stage2.backbone_bn': _pick('batch_norm'), 'stage2.backbone_dir': _ANY,
}


def _late_boundaries(flat: dict) -> list[str]:
  """A step schedule's lr boundaries that fall at or after the last epoch of their phase
  (``train``, or the classifier phase's ``stage2`` over it), where the lr never decays:
  one line each of what and how to fix it."""
  import types

  from ltjax import train

  out = []
  groups = ['train'] + (['stage2'] if flat.get('method') in ('crt', 'lws', 'ssd') else [])
  for group in groups:
    tc = {k.split('.', 1)[1]: v for k, v in flat.items() if k.startswith('train.')}
    if group == 'stage2':  # decoupled.stage2_train_config: the stage's own fields over train's
      tc.update({k.split('.', 1)[1]: v for k, v in flat.items()
                 if k.startswith('stage2.') and k.split('.', 1)[1] in tc and k != 'stage2.batch_size'})
    if tc.get('schedule') != 'step' or not tc.get('epochs') or not tc.get('lr_boundaries'):
      continue
    try:
      points = train.schedule_points(types.SimpleNamespace(**tc))
    except (AttributeError, TypeError):  # a config without the schedule's fields
      continue
    late = [b for b, p in zip(tc['lr_boundaries'], points.boundaries) if p >= tc['epochs']]
    if late:
      scaled = f' (scaled by {group}.epochs / {group}.schedule_epochs)' if tc.get('schedule_epochs') else ''
      out.append(f'{group}.lr_boundaries={tuple(tc["lr_boundaries"])} with {group}.epochs={tc["epochs"]}: the lr '
                 f'never decays at {", ".join(f"{b:g}" for b in late)}{scaled}, which the run does not reach. Fix, '
                 f'unless you mean it: boundaries below {tc["epochs"]}, or {group}.schedule_epochs=N where they are '
                 f'written for a run of N epochs (they are then scaled to this one).')
  return out


def _is_main_process() -> bool:
  from ltjax import parallel  # jax: only where a warning is due (pipeline.run validates after jax.distributed)

  return parallel.is_main()


def validate(config) -> None:
  """Checks every field of ``config`` against ``RULES`` and the few rules between fields;
  a ``ConfigError`` lists every bad value with what it may be, before anything runs."""
  import json

  from flax import traverse_util

  flat = traverse_util.flatten_dict(json.loads(config.to_json()), sep='.')
  bad = []
  for path, value in flat.items():
    if path not in RULES:
      bad.append(f'{path}: no such field (or a field without a rule in ltjax/config_lib.py RULES)')
      continue
    check, allowed = RULES[path]
    if not check(value):
      bad.append(f'{path}={value!r}: must be {allowed() if callable(allowed) else allowed}')
  if flat.get('data.many_above', 1) < flat.get('data.few_below', 0):
    bad.append(f'data.many_above={flat["data.many_above"]} is below data.few_below={flat["data.few_below"]}: '
               f'the shot groups would overlap')
  if flat.get('model.pretrained') and flat.get('model.name') == 'cifar_resnet':
    bad.append(f'model.pretrained={flat["model.pretrained"]!r}: pretrained weights are torchvision ImageNet '
               f'ResNets; set model.name to the network they are of (resnet18/50/101/152, resnext50_32x4d)')
  if flat.get('model.pretrained_sha256') and not flat.get('model.pretrained'):
    bad.append('model.pretrained_sha256 is set without model.pretrained: it pins the weights file that '
               'model.pretrained names; give that file (a path or URL) or leave the hash out')
  if flat.get('model.pretrained'):
    from ltjax.models import pretrained

    why = pretrained.check_readable(flat['model.pretrained'])
    if why:
      bad.append(f'model.pretrained={flat["model.pretrained"]!r}: {why}')
  if flat.get('data.resize_size', 1) < flat.get('data.image_size', 0):
    bad.append(f'data.resize_size={flat["data.resize_size"]} is below data.image_size={flat["data.image_size"]}: '
               f'the centre crop must fit in the resized image')
  for group in ('train', 'stage2'):
    # Kang et al.'s CosineAnnealingLR, stepped before each epoch (first_epoch 1), trains its
    # last epoch at lr 0: a run of no more epochs than first_epoch would train at lr 0 only.
    epochs, first = flat.get(f'{group}.epochs'), flat.get(f'{group}.first_epoch', 0)
    if flat.get(f'{group}.schedule') == 'cosine_epoch' and isinstance(epochs, int) and 0 < epochs <= first:
      bad.append(f'{group}.epochs={epochs} with {group}.schedule=cosine_epoch and {group}.first_epoch={first}: '
                 f'every epoch would train at lr 0 (lr/2 (1 + cos(pi (e + {first}) / {epochs})); '
                 f'set {group}.first_epoch=0 or train more epochs')
  if flat.get('run.val_every_epochs'):
    from ltjax.data import registry

    spec = registry.DATASETS.get(flat.get('data.name'))
    if spec is not None and not spec.val_split and not (spec.val_from and flat.get(spec.val_from)):
      having = [s.name for s in registry.DATASETS.values() if s.val_split]
      having += [f'{s.name} with {s.val_from}' for s in registry.DATASETS.values() if s.val_from]
      bad.append(f'run.val_every_epochs={flat["run.val_every_epochs"]} with data.name={spec.name!r}: '
                 f'{spec.title} has no validation split to choose an epoch on (those with one: '
                 f'{", ".join(having)}); set run.val_every_epochs=0')
  if flat.get('handoff') == 'best_val' and not flat.get('run.val_every_epochs'):
    bad.append("handoff='best_val' with run.val_every_epochs=0: later phases would take an earlier phase's "
               'best validation epoch, but no epoch is validated; set run.val_every_epochs (1: every '
               "epoch, as Kang et al.) where the dataset has a validation split, or handoff='last'")
  if flat.get('stage2.backbone_dir'):
    from ltjax.recipes import decoupled

    if flat.get('method') not in decoupled.METHODS:
      bad.append(f'stage2.backbone_dir={flat["stage2.backbone_dir"]!r} with method={flat.get("method")!r}: only '
                 f'{", ".join(decoupled.METHODS)} refit a classifier on a CE backbone (DiVE and SSD take '
                 f'another run\'s teacher with dive.teacher_dir / ssd.teacher_dir)')
  blur = flat.get('ssd.key_view.blur_sigma')
  if isinstance(blur, list) and len(blur) == 2 and blur[0] > blur[1]:
    bad.append(f'ssd.key_view.blur_sigma={tuple(blur)}: (low, high) with low <= high')
  rotation_bn = [f'ssd.{k}=train' for k in ('generator_bn', 'teacher_bn') if flat.get(f'ssd.{k}') == 'train']
  if flat.get('ssd.student_selfsup') and flat.get('stage2.backbone_bn') == 'train':
    rotation_bn.append('stage2.backbone_bn=train (phase IV, with ssd.student_selfsup)')
  if flat.get('method') == 'ssd' and flat.get('ssd.selfsup') == 'rotation' and rotation_bn and not bad \
      and _is_main_process():
    fixes = ' '.join(f'--config.{b.split("=")[0]}=eval' for b in rotation_bn)
    print(f'ltjax: warning: {" and ".join(rotation_bn)} with ssd.selfsup=rotation: that network was trained '
          f'on features normalised over batches of all four rotations, and in training mode it would '
          f'renormalise them over upright images alone (on CIFAR-10-LT IF 100 phase I\'s own model loses about '
          f'6 points so). Fix, unless you mean it (or resume a workdir that ran so): {fixes}.', flush=True)
  if not bad and _is_main_process():
    for line in _late_boundaries(flat):
      print(f'ltjax: warning: {line}', flush=True)
  if bad:
    fix = 'set them with --config.FIELD=VALUE (or in the config file)'
    if any(b.startswith('method=') for b in bad):  # the config file chooses its numbers by method
      fix = 'name the method in the config string (configs/FILE.py:method=NAME)' + (
          f', and {fix}' if len(bad) > 1 else '')
    raise ConfigError('bad config value' + ('s' if len(bad) > 1 else '') + ': ' + '; '.join(bad) + f'. Fix: {fix}.')
