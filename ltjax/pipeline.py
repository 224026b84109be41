"""A run is a pipeline of named phases, each in ``workdir/<phase>/``.

For each phase in order: skip it if its ``results.json`` exists (finished), else
train it (resuming from its last checkpoint) and evaluate it. The last phase's
results are also written to ``workdir/results.json`` with a summary of every phase.
"""
from __future__ import annotations

import json
import os
import time

import jax

from ltjax import checkpoint, evaluate, parallel, recipes, train
from ltjax.errors import ConfigError, MissingCheckpointError, WorkdirConflictError
from ltjax.data import augment, sources

# Fields that may change between the runs of one workdir: where data is read from,
# how often to log, evaluate and checkpoint, and how many devices share the batch.
RESUMABLE_FIELDS = ('phases', 'data.data_dir', 'data.cache_dir', 'data.download', 'num_devices', 'log_every_steps',
                    'eval_every_epochs', 'checkpoint_every_epochs', 'checkpoint_min_seconds', 'keep_checkpoints',
                    'train.eval_batch_size')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_workdir(config, workdir: str) -> bool:
  """Refuses a workdir that holds a run of a different config, naming the fields
  that differ. Returns whether the workdir already holds this config."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    a, b = _flatten(saved), _flatten(current)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_FIELDS)
    if diff:
      lines = '\n'.join(f'  {k}: {a.get(k, "<absent>")!r} in the workdir, {b.get(k, "<absent>")!r} now'
                        for k in diff)
      raise WorkdirConflictError(
          f'{workdir} holds a run of a different config:\n{lines}\n'
          f'Fix: choose a new --workdir, or rerun with the config saved in {path}; '
          f'nothing was changed in {workdir}.')
    return True
  return False


def run(config, workdir: str) -> dict:
  """Runs every phase of ``config.method`` in ``workdir``; returns results per phase."""
  known = check_workdir(config, workdir)
  mesh = parallel.make_mesh(config.num_devices)
  t = time.perf_counter()
  dataset = sources.load(config.data)
  data_seconds = time.perf_counter() - t
  phases = recipes.phases(config, dataset)
  selected = [p.strip() for p in config.phases.split(',') if p.strip()]
  unknown = sorted(set(selected) - {p.name for p in phases})
  if unknown:
    raise ConfigError(f'--config.phases names {unknown}, not phases of {config.method!r}: '
                      f'{[p.name for p in phases]}.')
  for phase in phases:
    parallel.check_batch_size(phase.train.batch_size, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh, 'train.eval_batch_size')
  # Only a config that got this far (valid data, method, batch sizes) is recorded.
  os.makedirs(workdir, exist_ok=True)
  if not known and jax.process_index() == 0:
    evaluate.write_results(os.path.join(workdir, 'config.json'), json.loads(config.to_json()))
  counts = dataset.class_counts
  print(f'{dataset.name}-LT IF {dataset.imbalance_factor:g}: {len(dataset.train_labels)} training '
        f'images ({counts.max()} ... {counts.min()} per class), {len(dataset.test_labels)} test; '
        f'{mesh.devices.size} {jax.devices()[0].platform} device(s)')
  aug = config.data.augment
  normalize = lambda x: augment.normalize(x, aug.mean, aug.std, dataset.pixel_scale)
  eval_batch = config.train.eval_batch_size
  results = {}
  for phase in phases:
    phase_dir = os.path.join(workdir, phase.name)
    path = os.path.join(phase_dir, 'results.json')
    if os.path.exists(path):
      print(f'[{phase.name}] finished earlier: {path}')
      results[phase.name] = evaluate.read_results(path)
      continue
    if selected and phase.name not in selected:
      print(f'[{phase.name}] not selected by --config.phases, skipped')
      continue

    forward = train.make_forward(phase.model, normalize, phase.eval_output)

    def evaluate_fn(variables, forward=forward):
      logits = train.predict(forward, variables, dataset.test_images, mesh, eval_batch)
      return evaluate.classification_results(logits, dataset.test_labels, counts,
                                             config.data.many_above, config.data.few_below)

    init_variables = None
    if phase.init_from:
      source = os.path.join(workdir, phase.init_from)
      if not os.path.exists(os.path.join(source, 'results.json')):
        raise MissingCheckpointError(
            f'phase {phase.name!r} starts from the final checkpoint of phase {phase.init_from!r}, '
            f'but {source} holds no finished run of it. Fix: run the whole recipe in this workdir '
            f'(the same command runs {phase.init_from!r} first, also with --config.phases='
            f'{phase.init_from},{phase.name}).')
      init_variables = checkpoint.restore_variables(os.path.join(source, 'checkpoints'))
    variables, timing = train.train_phase(phase, dataset, config, phase_dir, mesh, evaluate_fn,
                                          init_variables)
    t = time.perf_counter()
    res = evaluate_fn(variables)
    if phase.extra_eval is not None:
      res.update(phase.extra_eval(variables, init_variables, evaluate_fn))
    timing['eval_seconds'] = time.perf_counter() - t
    timing['data_seconds'] = data_seconds
    res.update(method=config.method, phase=phase.name, dataset=dataset.name,
               imbalance_factor=dataset.imbalance_factor, seed=config.seed,
               num_train=int(len(dataset.train_labels)), epochs=phase.train.epochs,
               devices=int(mesh.devices.size), platform=jax.devices()[0].platform,
               timing={k: (round(v, 3) if isinstance(v, float) else v) for k, v in timing.items()})
    if jax.process_index() == 0:
      evaluate.write_results(path, res)
    results[phase.name] = res

  if not results:
    print('no phase finished: nothing to report')
    return results
  last = list(results)[-1]
  summary = dict(results[last])
  summary['phases'] = {name: {k: r.get(k) for k in ('top1', 'top5', 'many', 'medium', 'few')}
                       for name, r in results.items()}
  if jax.process_index() == 0:
    evaluate.write_results(os.path.join(workdir, 'results.json'), summary)
    counts_by_group = summary['num_classes_per_group']
    print(f'\n{config.method} on {dataset.name}-LT IF {dataset.imbalance_factor:g} '
          f'(classes many/medium/few: {counts_by_group["many"]}/{counts_by_group["medium"]}/'
          f'{counts_by_group["few"]}), top-1 %:')
    print(evaluate.format_table(list(results.items())))
    print(f'results: {os.path.join(workdir, "results.json")}')
  return results
