"""A run is a pipeline of named phases, each in ``workdir/<phase>/``.

``workdir/config.json`` and ``workdir/dataset.json`` (class names and counts, how an image
becomes an input: ``data/saved.py``) describe the run; with a phase's final checkpoint
they are all that ``ltjax.predict`` needs. For each phase in order: skip it if its
``results.json`` exists (finished), else train it (resuming from its last checkpoint)
and evaluate it. The last phase's results are also written to ``workdir/results.json``
with a summary of every phase.
"""
from __future__ import annotations

import json
import os
import shlex
import time
import zlib

import jax
import numpy as np
from flax import traverse_util

from ltjax import checkpoint, config_lib, evaluate, files, locks, parallel, recipes, train
from ltjax.errors import ConfigError, MissingCheckpointError, ProcessStopped, WorkdirConflictError
from ltjax.data import augment, registry, saved


def check_workdir(config, workdir: str) -> bool:
  """Refuses a workdir that holds a run of a different config, naming the fields
  that differ; the ``run`` group (how this run executes, never what it computes) may
  differ, and so may the groups of other recipes (``config_lib.RECIPE_GROUPS``: ``ssd.*``
  in a DiVE run) and ``model.pretrained``'s location where ``model.pretrained_sha256``
  pins the same file, and the validation images (``config_lib.VALIDATION_ONLY``) unless later
  phases start from the epoch they choose (``handoff='best_val'``, which also keeps
  ``run.val_every_epochs``). Returns whether the workdir already holds this config."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    a, b = (traverse_util.flatten_dict({k: v for k, v in d.items() if k != config_lib.RUN_GROUP}, sep='.')
            for d in (saved, current))
    if b.get('handoff') == 'best_val':  # which epochs are validated picks what later phases take
      group, key = config_lib.HANDOFF_KEEPS.split('.')
      for flat, d in ((a, saved), (b, current)):
        if key in d.get(group, {}):
          flat[config_lib.HANDOFF_KEEPS] = d[group][key]
    # A field added to ltjax since that run reads as the value that ltjax then had.
    legacy = config_lib.with_legacy_values(a, b)
    added = set(legacy) - set(a)
    a = legacy
    if b.get('handoff') != 'best_val':  # the validation images pick an epoch to report, not what is trained
      for flat in (a, b):
        for key in config_lib.VALIDATION_ONLY:
          flat.pop(key, None)
    for group, method in config_lib.RECIPE_GROUPS.items():
      if b.get('method') != method:  # e.g. SSD's defaults, changed since a CE run was started
        for flat in (a, b):
          for key in [k for k in flat if k.startswith(group + '.')]:
            del flat[key]
    if (a.get('model.pretrained') and b.get('model.pretrained') and a.get('model.pretrained_sha256')
        and a.get('model.pretrained_sha256') == b.get('model.pretrained_sha256')):
      for flat in (a, b):  # the same weights (pinned by their hash), moved or fetched from elsewhere
        flat.pop('model.pretrained', None)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff and not _holds_training(workdir):
      # Refused before any phase saved anything (a missing teacher, a batch that does not
      # fit): nothing of that config to keep, so the corrected command may run here.
      _say(f'{workdir}: no phase has saved a checkpoint or results yet; its config.json is replaced '
           f'by this run\'s ({", ".join(diff[:4])}{", ..." if len(diff) > 4 else ""} changed)')
      return False
    if diff:
      def was(k):
        return f'{a[k]!r} (before the field existed)' if k in added else repr(a.get(k, '<absent>'))

      lines = '\n'.join(f'  {k}: {was(k)} in the workdir, {b.get(k, "<absent>")!r} now' for k in diff)
      fixes = ['choose a new --workdir']
      unknown = [k for k in diff if k not in a or k not in b]
      if unknown:  # fields this ltjax and that run's do not share
        fixes.append(f'resume it with the ltjax version that started it ({", ".join(unknown)} '
                     f'{"is" if len(unknown) == 1 else "are"} not a field of both)')
      else:  # the workdir's values, as the flags that set them (the method: in the config string)
        flags = shlex.join(f'--config.{k}={_flag_value(a[k])}' for k in diff if k != 'method')
        said = [f'the config string\'s method={a["method"]}'] if 'method' in diff else []
        said += [f'the workdir\'s values: {flags}'] if flags else []
        fixes.append(f'resume it with {" and ".join(said)} (its config: {path})'
                     + (f'; of them, {", ".join(k for k in diff if k in added)} did not exist when that run '
                        f'started' if any(k in added for k in diff) else ''))
      raise WorkdirConflictError(
          f'{workdir} holds a run of a different config:\n{lines}\n'
          f'Fix: {", or ".join(fixes)}; nothing was changed in {workdir}.')
    return True
  return False


def _flag_value(value) -> str:
  """``value`` (from a config.json) as a ``--config.FIELD=`` override spells it."""
  if isinstance(value, list):
    return repr(tuple(value))
  return str(value)


def _holds_training(workdir: str) -> bool:
  """Whether a phase folder of ``workdir`` holds a result or a saved checkpoint."""
  for name in os.listdir(workdir):
    phase = os.path.join(workdir, name)
    if os.path.isdir(phase) and (os.path.exists(os.path.join(phase, 'results.json')) or any(
        checkpoint.saved_steps(os.path.join(phase, d)) for d in ('checkpoints', train.BEST_VAL))):
      return True
  return False


def _check_same_data(dataset) -> None:
  """Refuses a multi-process run whose processes loaded different data (an image folder
  that changed while they listed it, a host's own stale cache): they would draw other
  batches of other sizes, and their steps would fall out of step. Compared: the numbers
  of training and test images and of classes, and a checksum of their labels, of which
  records of the source they are and, for an image folder, of its files' paths."""
  if jax.process_count() == 1:
    return
  crc = 0
  for split in ('train', 'test', 'val'):
    for field in ('labels', 'records', 'index'):
      value = getattr(dataset, f'{split}_{field}', None)
      if value is not None:
        crc = zlib.crc32(np.ascontiguousarray(value, np.int64).tobytes(), crc)
    paths = getattr(getattr(dataset, f'{split}_source', None), 'files', None)  # data/folder.py FolderSource
    if paths is not None:
      crc = zlib.crc32('\n'.join(map(str, paths)).encode(), crc)
  own = [len(dataset.train_labels), len(dataset.test_labels), int(dataset.num_classes), crc & 0x7fffffff]
  reference, differ = parallel.differ_from_process_0(own)
  if differ:
    show = lambda v: f'{v[0]} training and {v[1]} test images of {v[2]} classes'
    here = f'; process {jax.process_index()}: {show(own)}' if own != reference else ''
    raise ProcessStopped(
        f'the processes loaded different data: {parallel.processes_named(differ)} loaded other data than '
        f'process 0 (process 0: {show(reference)}{here}'
        f'{", other labels" if own[:3] == reference[:3] and own != reference else ""}). Fix: let every host read '
        f'the same files (run.data_dir, an image folder, run.cache_dir: one shared folder, not a copy per host, '
        f'that does not change while a run starts); nothing was written in the workdir.')


def _finished_phase_checkpoints(workdir: str, name: str, needed_by: str, path_field: str = '',
                                handoff: str = 'last') -> str:
  """The checkpoint folder of phase ``name`` of this run, which must have finished: its
  last epoch's (``checkpoints/``), or with ``handoff='best_val'`` its best validation
  epoch's (``best_val/``)."""
  source = os.path.join(workdir, name)
  if not os.path.exists(os.path.join(source, 'results.json')):
    elsewhere = (f', or point --config.{path_field} at the phase folder of a finished run'
                 if path_field else '')
    raise MissingCheckpointError(
        f'phase {needed_by!r} needs the final checkpoint of phase {name!r}, but {source} holds '
        f'no finished run of it. Fix: run the whole recipe in this workdir (the same command '
        f'runs {name!r} first, also with --config.run.phases={name},{needed_by}){elsewhere}.')
  if handoff == 'best_val':
    best = os.path.join(source, train.BEST_VAL)
    if not checkpoint.saved_steps(best):
      raise MissingCheckpointError(
          f"phase {needed_by!r} takes phase {name!r} at its best validation epoch (handoff='best_val'), "
          f'but {best} holds no checkpoint: that phase kept none (it trained no epoch, or its kept '
          f'best was dropped). Fix: run the recipe in a new workdir.')
    return best
  return os.path.join(source, 'checkpoints')


def _checkpoints_at(path: str, name: str, field: str, handoff: str = 'last') -> str:
  """The checkpoint folder a user's ``path`` names: a phase folder (``.../<name>``) or a
  run's workdir, whose phase must have finished (its ``checkpoints/``, or with
  ``handoff='best_val'`` its ``best_val/``), or an orbax checkpoint folder itself (its
  newest checkpoint, as it is)."""
  sub = train.BEST_VAL if handoff == 'best_val' else 'checkpoints'
  for candidate in (os.path.join(path, sub), os.path.join(path, name, sub), path):
    if checkpoint.saved_steps(candidate):
      phase_dir = os.path.dirname(candidate)
      if candidate != path and not os.path.exists(os.path.join(phase_dir, 'results.json')):
        raise MissingCheckpointError(
            f'--config.{field}={path!r}: the {name!r} phase in {phase_dir} has not finished (no '
            f'results.json). Fix: finish it (rerun its command in its workdir), or point '
            f'--config.{field} at {candidate} to take its newest checkpoint as it is.')
      if candidate == path and handoff == 'best_val' and os.path.basename(os.path.normpath(path)) != train.BEST_VAL:
        _say(f"ltjax: warning: --config.{field}={path!r} is a checkpoint folder: its newest checkpoint is "
             f"taken as it is, not a best validation epoch (handoff='best_val'); give the phase folder to "
             f'take its {train.BEST_VAL}/')
      return candidate
  if handoff == 'best_val':
    for phase_dir in (path, os.path.join(path, name)):
      if checkpoint.saved_steps(os.path.join(phase_dir, 'checkpoints')):
        raise MissingCheckpointError(
            f"--config.{field}={path!r}: handoff='best_val' takes the {name!r} phase at its best "
            f'validation epoch, but {phase_dir} kept none (it ran without run.val_every_epochs). Fix: '
            f'point --config.{field} at {os.path.join(phase_dir, "checkpoints")} to take its last '
            f'epoch as it is, or train that phase with validation.')
  raise MissingCheckpointError(
      f'--config.{field}={path!r} holds no checkpoint: give the folder of a finished {name!r} '
      f'phase (with {sub}/ inside), the workdir of a run that has one ({path}/{name}/'
      f'{sub}), or an orbax checkpoint folder.')


def _model_fields_apart(directory: str, model_config) -> list[str]:
  """The ``model.*`` fields of the config of the run that wrote ``directory`` (a phase's
  ``checkpoints/`` or ``best_val/``: its workdir's config.json) that differ from
  ``model_config``, as overrides; [] where that config is not there."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(directory))), 'config.json')
  if model_config is None or not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      there = traverse_util.flatten_dict(json.load(f).get('model', {}), sep='.')
  except (OSError, ValueError):
    return []
  here = traverse_util.flatten_dict(json.loads(model_config.to_json()), sep='.')
  shapeless = ('dtype', 'conv_impl', 'pretrained', 'pretrained_sha256')  # no bearing on the variables' shapes
  return [f'--config.model.{k}={_flag_value(there[k])}' for k in sorted(set(there) & set(here))
          if there[k] != here[k] and k not in shapeless]


def _load_checked(directory: str, model, dataset, normalize, what: str, field: str, model_config=None) -> dict:
  """The variables of the newest checkpoint in ``directory``, checked against ``model``
  of this config: ``what`` (the teacher, the CE backbone) of another dataset (class
  count) or architecture is refused by name, with ``--config.field`` as the way out (and
  where that run's config.json is at hand, the ``model_config`` fields that differ)."""
  variables = checkpoint.restore_variables(directory)
  want = checkpoint.model_shapes(model, normalize(dataset.example_images(2)))
  got = checkpoint.shapes(variables)
  if want == got:
    return variables
  head = [k for k in want if k in got and want[k] != got[k] and "['head']" in k]
  if head and set(want) == set(got) and all(want[k][:-1] == got[k][:-1] for k in head):
    raise MissingCheckpointError(
        f'the {what} in {directory} was trained with {got[head[0]][-1]} classes, but this run\'s '
        f'{dataset.title} has {dataset.num_classes}. Fix: train the {what} on this dataset (run '
        f'the whole recipe in a new workdir) or point --config.{field} at one that was.')
  diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  lines = '\n'.join(f'  {k}: {got.get(k, "<absent>")} in the checkpoint, {want.get(k, "<absent>")} '
                    f'in this config' for k in diff[:6])
  apart = _model_fields_apart(directory, model_config)
  settings = (f'its run\'s model settings: {shlex.join(apart)}' if apart else
              f'the model settings the {what} was trained with (its run\'s config.json)')
  raise MissingCheckpointError(
      f'the {what} in {directory} has another architecture than this config\'s model '
      f'(config.model):\n{lines}\nFix: run with {settings}, or train a new {what}.')


def _other_run(directory: str, dataset, what: str, name: str, field: str) -> dict:
  """What the run that wrote ``directory`` (a phase's ``checkpoints/``, or any orbax
  checkpoint folder) says of itself: its phase's results and its dataset, for this run's
  results.json; a warning where that dataset or imbalance factor differs from this run's."""
  directory = os.path.abspath(directory)
  best = os.path.basename(directory) == train.BEST_VAL
  phase_dir = os.path.dirname(directory) if os.path.basename(directory) in ('checkpoints', train.BEST_VAL) else directory
  out = {'checkpoints': directory}
  results_path = os.path.join(phase_dir, 'results.json')
  if os.path.exists(results_path):
    r = evaluate.read_results(results_path)
    out.update({k: r.get(k) for k in ('method', 'phase', 'dataset', 'imbalance_factor', 'seed', 'top1', 'many',
                                      'medium', 'few')})
    if best and r.get('best_val_selected'):  # what was taken: that epoch, not the last
      out['best_val_selected'] = r['best_val_selected']
    if r.get('phase') not in (None, name):  # e.g. the cRT phase folder for a CE backbone
      _say(f'warning: the {what} in {directory} is phase {r["phase"]!r} of a {r.get("method")} run, not a '
           f'{name!r} phase: check --config.{field}')
    here = (dataset.name, dataset.imbalance_factor)
    there = (r.get('dataset'), r.get('imbalance_factor'))
    if there != here:
      show = lambda name, imb: f'{name} IF {imb:g}' if isinstance(imb, (int, float)) else f'{name}'
      _say(f'warning: the {what} in {directory} was trained on {show(*there)}; this run is {show(*here)}')
  return out


def _load_teacher(phase, workdir: str, dataset, normalize, handoff: str = 'last',
                  model_config=None) -> tuple[dict, dict | None]:
  """The frozen teacher's variables (of the epoch ``handoff`` names), checked against the
  teacher model of this config, and where it comes from another run, what that run says
  of it (``_other_run``)."""
  teacher = phase.teacher
  if not teacher.path:
    directory = parallel.agreed(lambda: _finished_phase_checkpoints(
        workdir, teacher.phase, phase.name, teacher.path_field, handoff), 'the teacher is missing')
    return _load_checked(directory, teacher.model, dataset, normalize, 'teacher', teacher.path_field,
                         model_config), None
  directory = parallel.agreed(lambda: _checkpoints_at(teacher.path, teacher.phase, teacher.path_field, handoff),
                              'the teacher is missing')
  variables = _load_checked(directory, teacher.model, dataset, normalize, 'teacher', teacher.path_field,
                            model_config)
  # What only process 0's results take, from its view of the folders.
  source = parallel.on_main(lambda: _other_run(directory, dataset, 'teacher', teacher.phase, teacher.path_field),
                            'reading what the teacher\'s run says of it')
  return variables, source


def _load_init(phase, phases, workdir: str, dataset, normalize, handoff: str = 'last',
               model_config=None) -> tuple[dict, dict | None]:
  """The variables of the phase that ``phase`` starts from (``init_from``), at the epoch
  ``handoff`` names: this run's, or another run's at ``init_path``, checked against that
  phase's model here (and then what that run says of it, ``_other_run``)."""
  missing = f'the {phase.init_from!r} phase that {phase.name!r} starts from is missing'
  if not phase.init_path:
    return checkpoint.restore_variables(parallel.agreed(lambda: _finished_phase_checkpoints(
        workdir, phase.init_from, phase.name, phase.init_path_field, handoff), missing)), None
  directory = parallel.agreed(
      lambda: _checkpoints_at(phase.init_path, phase.init_from, phase.init_path_field, handoff), missing)
  source = next(p for p in phases if p.name == phase.init_from)
  what = f'{phase.init_from!r} model'
  variables = _load_checked(directory, source.model, dataset, normalize, what, phase.init_path_field, model_config)
  source = parallel.on_main(lambda: _other_run(directory, dataset, what, phase.init_from, phase.init_path_field),
                            f'reading what the run of the {what} says of it')
  return variables, source


class _StandIn:
  """What a recipe reads of a dataset to build its phases (two classes of 2 and 1
  images): their names depend on the config alone, so a misspelled ``run.phases`` is
  refused before the real data is loaded."""
  num_classes, class_counts, pixel_scale = 2, np.array([2, 1]), 255.0


def _check_phase_names(config) -> None:
  selected = [p.strip() for p in config.run.phases.split(',') if p.strip()]
  names = [p.name for p in recipes.phases(config, _StandIn())]
  unknown = sorted(set(selected) - set(names))
  if unknown:
    raise ConfigError(f'--config.run.phases names {unknown}, not phases of {config.method!r}: {names}.')


def _check_sources(phases, to_run) -> None:
  """Refuses to train phases that nothing would use: every phase that starts from one
  (``init_from``) or runs it as its teacher takes it from another run (``init_path``,
  ``Teacher.path``) or is itself unused (SSD's phase I when phase III's teacher comes from
  elsewhere). That training would be thrown away."""
  def consumers(name):  # (phase, path it takes ``name`` from: '' = this run's, its field)
    out = []
    for p in phases:
      if p.init_from == name:
        out.append((p, p.init_path, p.init_path_field))
      if p.teacher is not None and p.teacher.phase == name:
        out.append((p, p.teacher.path, p.teacher.path_field))
    return out

  # Over the whole recipe: a phase is unused when every phase that reads it takes it from
  # elsewhere or is unused itself; the ones this run would train are refused.
  unused, changed = [], True
  while changed:
    changed = False
    for phase in phases:
      users = consumers(phase.name)
      if phase.name not in unused and users and all(path or p.name in unused for p, path, _ in users):
        unused.append(phase.name)
        changed = True
  wasted = [p.name for p in to_run if p.name in unused]
  if wasted:
    flags = sorted({f'--config.{field}={path!r}' for name in unused for _, path, field in consumers(name) if path})
    needed = ','.join(p.name for p in phases if p.name not in unused)
    raise ConfigError(
        f'{" and ".join(flags)} take{"s" if len(flags) == 1 else ""} from another run what this run '
        f'would train in phase{"s" if len(wasted) > 1 else ""} {", ".join(map(repr, wasted))}, for '
        f'nothing. Fix: add --config.run.phases={needed} (finished phases are skipped).')


def _best_val_selected(best: dict, phase, phase_dir: str, config, evaluate_fn, mesh) -> dict:
  """The test results of the phase's best validation epoch (``best``: its validation
  results, ``epoch``, ``step`` and ``since``, from ``checkpoint.BestKept``), from its
  checkpoint in ``phase_dir/best_val`` (also when it is the last epoch: one path, always
  exercised): Kang et al.'s reported model, beside ltjax's last epoch. A choice among fewer
  epochs than ``run.val_every_epochs`` asks for (validation switched on when a run resumed)
  says so, and warns."""
  variables = checkpoint.restore_variables(os.path.join(phase_dir, train.BEST_VAL))
  test = evaluate_fn(jax.device_put(variables, parallel.replicated(mesh)))
  out = {'epoch': int(best['epoch']), 'val': {k: best[k] for k in evaluate.SUMMARY if k in best},
         **evaluate.summary(test), 'ece': test['ece'], 'validated_from_epoch': int(best['since']),
         'selected_on': 'the validation split (Kang et al.\'s model selection); the result is top1, the last epoch'}
  every, epochs = config.run.val_every_epochs, phase.train.epochs
  first = min(every, epochs)
  if out['validated_from_epoch'] > first:
    out['note'] = (f'chosen among epochs {out["validated_from_epoch"]}-{epochs} only: the epochs '
                   f'before were not validated (run.val_every_epochs off before a resume, or a kept best dropped or '
                   f'set aside as damaged)')
  elif parallel.is_main():  # (process 0 writes metrics.jsonl) a gap: validation off for part of the run
    asked = {e for e in range(out['validated_from_epoch'], epochs + 1) if e % every == 0 or e == epochs}
    missing = sorted(asked - set(evaluate.logged_top1(os.path.join(phase_dir, 'metrics.jsonl'), 'val')))
    if missing:
      shown = ', '.join(map(str, missing[:8])) + (f' and {len(missing) - 8} more' if len(missing) > 8 else '')
      out['note'] = (f'chosen among fewer epochs than asked: epoch{"s" if len(missing) > 1 else ""} {shown} '
                     f'{"were" if len(missing) > 1 else "was"} not validated (run.val_every_epochs was off, or '
                     f'another value, for part of the run)')
  if 'note' in out:
    _say(f'ltjax: warning: [{phase.name}] best validation epoch {out["note"]}')
  return out


def _handoff(config, workdir: str, name: str, needed_by: str) -> dict | None:
  """Which epoch of this run's phase ``name`` phase ``needed_by`` takes, where
  ``config.handoff`` says its best validation epoch (said, and kept in results.json): that
  phase's ``best_val_selected``."""
  if config.handoff != 'best_val':
    return None
  r = evaluate.read_results(os.path.join(workdir, name, 'results.json'))
  best = r.get('best_val_selected') or {}
  out = {'phase': name, 'checkpoint': train.BEST_VAL, 'epoch': best.get('epoch'), 'epochs': r.get('epochs'),
         'val_top1': (best.get('val') or {}).get('top1')}
  val = f'{out["val_top1"]:.2f}' if out['val_top1'] is not None else '?'
  _say(f'[{needed_by}] takes phase {name!r} at its best validation epoch {out["epoch"]} of {out["epochs"]} '
       f'(validation top-1 {val}; handoff=best_val)')
  if best.get('note'):
    _say(f'ltjax: warning: [{needed_by}] phase {name!r}\'s best validation epoch was {best["note"]}')
  return out


def _say(*args):
  """Prints from process 0 only: one table, not one per host."""
  if parallel.is_main():
    print(*args, flush=True)


def run(config, workdir: str) -> dict:
  """Runs every phase of ``config.method`` in ``workdir``; returns results per phase.
  Every process of a multi-process run calls it; process 0 writes the files and holds
  the workdir's lock (``locks.WorkdirLock``: one run per workdir) while it runs."""
  config_lib.validate(config)  # every field, before anything is read or written
  _check_phase_names(config)  # before the data is loaded (minutes for the large datasets)
  held = []

  def lock():
    if not held and parallel.is_main() and os.path.isdir(workdir):
      held.append(locks.WorkdirLock(workdir).acquire())

  try:
    # An existing workdir: at once, before anything is read or loaded.
    parallel.on_main(lock, 'the workdir is in use')
    return _run(config, workdir, lock)
  finally:
    for workdir_lock in held:
      workdir_lock.release()


def _run(config, workdir: str, lock) -> dict:
  # Process 0's view of the workdir decides, and the processes agree on whatever each one
  # checks of its own: one host's refusal stops every host at once.
  known = bool(parallel.on_main(lambda: check_workdir(config, workdir), 'checking what the workdir holds'))
  mesh = parallel.make_mesh(config.run.num_devices)
  t = time.perf_counter()
  prepared = None
  if config.run.download and jax.process_count() > 1:
    # Process 0 alone downloads and prepares what is missing (several hosts preparing into
    # one data_dir at once would collide where TFDS renames its finished folder), then the others load.
    prepared = parallel.on_main(lambda: registry.load(config), 'the dataset could not be downloaded and prepared')
  dataset = parallel.agreed(lambda: prepared if prepared is not None else registry.load(config),
                            'the dataset could not be loaded')
  _check_same_data(dataset)
  data_seconds = time.perf_counter() - t
  phases = recipes.phases(config, dataset)
  selected = [p.strip() for p in config.run.phases.split(',') if p.strip()]
  unknown = sorted(set(selected) - {p.name for p in phases})
  if unknown:
    raise ConfigError(f'--config.run.phases names {unknown}, not phases of {config.method!r}: '
                      f'{[p.name for p in phases]}.')
  finished = {phases[i].name for i in parallel.of_process_0(
      [i for i, p in enumerate(phases) if os.path.exists(os.path.join(workdir, p.name, 'results.json'))])}
  _check_sources(phases, [p for p in phases if (not selected or p.name in selected) and p.name not in finished])
  for phase in phases:
    parallel.check_batch_size(phase.train.batch_size, mesh)
    n = len(dataset.train_labels)
    if phase.train.epochs and phase.train.batch_size > n and (not selected or phase.name in selected):
      _say(f'ltjax: warning: [{phase.name}] a batch of {phase.train.batch_size} is more than the {n} training '
           f'images: each epoch (one step) draws {phase.train.batch_size / n:.1f} passes over them, images repeated '
           f'within the batch. Fix, unless you mean it: a batch size of at most {n}.')
  parallel.check_batch_size(config.run.eval_batch_size, mesh, 'run.eval_batch_size')
  # Only a config that got this far (valid data, method, batch sizes) is recorded.

  def start():
    files.check_writable(workdir)  # refused now, before any training, rather than at a save
    lock()  # a new workdir: as soon as it exists
    if not known:
      evaluate.write_results(os.path.join(workdir, 'config.json'), json.loads(config.to_json()))
    saved.write(workdir, dataset)  # class names and preprocessing, for ltjax.predict

  parallel.on_main(start, 'its workdir cannot be used')  # every process waits for it
  counts = dataset.class_counts
  _say(f'{dataset.title} IF {dataset.imbalance_factor:g}: {len(dataset.train_labels)} training '
        f'images ({counts.max()} ... {counts.min()} per class), {len(dataset.test_labels)} test; '
        f'{mesh.devices.size} {jax.devices()[0].platform} device(s)')
  skipped = dataset.skipped_images
  if skipped:
    _say(f'{skipped} image(s) that cannot be decoded were skipped (data.skip_bad_images)')
  aug = config.data.augment
  normalize = lambda x: augment.normalize(x, aug.mean, aug.std, dataset.pixel_scale)
  eval_batch = config.run.eval_batch_size
  results = {}
  for stream, phase in enumerate(phases):
    phase_dir = os.path.join(workdir, phase.name)
    path = os.path.join(phase_dir, 'results.json')
    if phase.name in finished:
      _say(f'[{phase.name}] finished earlier: {path}')
      results[phase.name] = parallel.agreed(lambda: evaluate.read_results(path), f'reading {path}')
      continue
    if selected and phase.name not in selected:
      _say(f'[{phase.name}] not selected by --config.run.phases, skipped')
      continue

    forward = evaluate.make_forward(phase.model, normalize, phase.eval_output, mesh, phase.eval_scale)

    def evaluate_fn(variables, forward=forward, split='test'):
      batches = getattr(dataset, f'{split}_batches')(eval_batch, parallel.local_rows(mesh, eval_batch))
      labels = getattr(dataset, f'{split}_labels')
      logits = evaluate.predict(forward, variables, batches, mesh, len(labels))
      return evaluate.classification_results(logits, labels, counts, config.data.many_above,
                                             config.data.few_below)

    validate_fn = (lambda variables: evaluate_fn(variables, split='val')) if config.run.val_every_epochs else None

    init_variables = teacher_variables = None
    other_runs = {}  # what this phase took from other runs (their checkpoints, results, data)
    handoff = {}  # this run's earlier phases taken at their best validation epoch
    if phase.init_from:
      init_variables, other_runs['init_from'] = _load_init(phase, phases, workdir, dataset, normalize,
                                                           config.handoff, config.model)
      if not phase.init_path:
        handoff['init_from'] = parallel.on_main(lambda: _handoff(config, workdir, phase.init_from, phase.name),
                                                f'reading the results of phase {phase.init_from!r}')
    if phase.teacher is not None:
      teacher_variables, other_runs['teacher'] = _load_teacher(phase, workdir, dataset, normalize, config.handoff,
                                                               config.model)
      if not phase.teacher.path:
        handoff['teacher'] = parallel.on_main(lambda: _handoff(config, workdir, phase.teacher.phase, phase.name),
                                              f'reading the results of phase {phase.teacher.phase!r}')
    other_runs = {k: v for k, v in other_runs.items() if v is not None}
    handoff = {k: v for k, v in handoff.items() if v is not None}
    variables, timing = train.train_phase(phase, dataset, config, phase_dir, mesh, evaluate_fn,
                                          init_variables, teacher_variables, stream=stream,
                                          validate_fn=validate_fn)
    t = time.perf_counter()
    res = evaluate_fn(variables)
    best_val = timing.pop('best_val', None)
    if best_val is not None:
      res['best_val_selected'] = _best_val_selected(best_val, phase, phase_dir, config, evaluate_fn, mesh)
    for head, output in phase.extra_heads:
      head_forward = evaluate.make_forward(phase.model, normalize, output, mesh)
      res.setdefault('heads', {})[head] = evaluate_fn(variables, forward=head_forward)
    if phase.main_head:
      res['main_head'] = phase.main_head
    if other_runs:
      res['from_other_runs'] = other_runs
    if handoff:
      res['handoff'] = handoff
    if phase.extra_eval is not None:
      res.update(phase.extra_eval(variables, init_variables, evaluate_fn))
    timing['eval_seconds'] = time.perf_counter() - t
    timing['data_seconds'] = data_seconds
    res.update(method=config.method, phase=phase.name, dataset=dataset.name,
               imbalance_factor=dataset.imbalance_factor, seed=config.seed,
               num_train=int(len(dataset.train_labels)), epochs=phase.train.epochs,
               **({'skipped_images': skipped} if skipped else {}),
               devices=int(mesh.devices.size), platform=jax.devices()[0].platform,
               timing={k: (round(v, 3) if isinstance(v, float) else v) for k, v in timing.items()})

    def write(res=res, phase=phase, phase_dir=phase_dir, path=path):
      if config.run.eval_every_epochs:
        res['best_test_selected'] = evaluate.best_test_epoch(
            os.path.join(phase_dir, 'metrics.jsonl'), res['top1'], phase.train.epochs)
      evaluate.write_results(path, res)

    # Every process waits for it: the next phase may read that results.json.
    parallel.on_main(write, f'the results of phase {phase.name!r} could not be written')
    results[phase.name] = res

  if not results:
    _say('no phase finished: nothing to report')
    return results
  last = list(results)[-1]
  summary = dict(results[last])
  rows = evaluate.table_rows(results)
  summary['phase_names'] = list(results)
  summary['phases'] = {name: {k: r.get(k) for k in evaluate.SUMMARY}
                       for name, r in rows}
  parallel.on_main(lambda: _report(config, dataset, workdir, summary, rows, results),
                   'the run\'s results could not be written')
  return results


def _report(config, dataset, workdir: str, summary: dict, rows, results: dict) -> None:
  """Process 0's end of a run: ``workdir/results.json``, the table and the figures."""
  evaluate.write_results(os.path.join(workdir, 'results.json'), summary)
  counts_by_group = summary['num_classes_per_group']
  print(f'\n{config.method} on {dataset.title} IF {dataset.imbalance_factor:g} '
        f'(classes many/medium/few: {counts_by_group["many"]}/{counts_by_group["medium"]}/'
        f'{counts_by_group["few"]}), top-1 %:')
  print(evaluate.format_table(rows))
  for name, r in results.items():
    best = r.get('best_val_selected')
    if best:
      groups = ' / '.join(evaluate.fmt(best.get(k)) for k in ('many', 'medium', 'few'))
      chosen = (f'its best validation epoch {best["epoch"]} of {r["epochs"]}' if 'epoch' in best
                else f'tau {best["tau"]:g} chosen on the validation split')
      print(f'{name}, {chosen} (validation top-1 {best["val"]["top1"]:.2f}): test top-1 '
            f'{best["top1"]:.2f}, many / medium / few {groups}')
    if r.get('tau_note'):  # tau-norm's sweep over tau, in results.json
      print(f'{name}: {r["tau_note"]}')
    for role, other in (r.get('from_other_runs') or {}).items():  # a teacher or backbone of another run
      top1 = f'top-1 {other["top1"]:.2f}' if isinstance(other.get('top1'), (int, float)) else 'no results.json'
      print(f'{name}: its {"teacher" if role == "teacher" else "starting model"} is {other["checkpoints"]} ({top1})')
  print(f'results: {os.path.join(workdir, "results.json")}')
  from ltjax import plots  # matplotlib only once there is something to draw

  for name, path in plots.write_figures(rows, workdir).items():
    print(f'figure ({name.replace("_", "-")}): {path}')
