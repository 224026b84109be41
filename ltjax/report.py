"""One Markdown table and two figures from the results of several runs:

  python -m ltjax.report runs/ce_s0 runs/ce_s1 runs/dive_s0 runs/dive_s1 [--out report]

A row per phase (and per extra head) of each run: method / phase (marked where it started
from an earlier phase's best validation epoch, ``handoff``), dataset, imbalance factor,
seeds, top-1 overall / many / medium / few, top-5 and ECE (percent; '-' for a shot group
without classes). Runs that differ only in their seed are one row, shown as
mean ± sample standard deviation; runs of other configs (``config.json``: another lr,
width, number of epochs, ...) are rows apart, labelled with the fields that set them
apart. Runs that chose an epoch on a validation split (``run.val_every_epochs``:
``best_val_selected``) get a second table of those epochs' test results, beside the last
epoch's. Written to ``OUT/report.md`` with
``OUT/per_class.png`` (per-class top-1 against class size) and ``OUT/reliability.png`` (a
reliability diagram per row).

The CIFAR-LT reproduction (``bench/reproduce.py``) has tables of its own, one per dataset:

  python -m ltjax.report --reproduction results/cifar_lt [--out FILE] [--readme README.md]
  python -m ltjax.report --reproduction results/cifar100_lt --readme README.md

one row per reproduction row (seeds merged as mean ± std) in the script's order: last-epoch
top-1, many / medium / few, the published number, the difference, its source, the
device and the wall time. ``--out`` writes it to FILE; ``--readme`` puts it between the
``<!-- reproduction:start -->`` and ``<!-- reproduction:end -->`` markers of that file
(CIFAR-100-LT: ``<!-- reproduction-cifar100:start -->`` and ``...:end -->``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ltjax import evaluate, files

METRICS = ('top1', 'many', 'medium', 'few', 'top5', 'ece')
# Where a run took an earlier model from: each seed of an experiment its own folder. (The
# pretrained weights' location too, where model.pretrained_sha256 pins which weights.)
SOURCE_FIELDS = ('dive.teacher_dir', 'ssd.teacher_dir', 'stage2.backbone_dir')
BEST_VAL_METRICS = ('top1', 'many', 'medium', 'few')


def setup_of(workdir: str) -> dict:
  """What a run computes, from its ``config.json`` (flattened): every field but the seed,
  the ``run`` group (how it ran), other recipes' groups and ``SOURCE_FIELDS``, which
  differ between the seeds of one experiment. {} where the run has no config.json."""
  from flax import traverse_util

  from ltjax import config_lib

  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    flat = traverse_util.flatten_dict(json.load(f), sep='.')
  others = [g for g, method in config_lib.RECIPE_GROUPS.items() if method != flat.get('method')]
  moved = ('model.pretrained',) if flat.get('model.pretrained_sha256') else ()
  return {k: v for k, v in flat.items() if k != 'seed' and k not in SOURCE_FIELDS + moved
          and k.split('.')[0] not in (config_lib.RUN_GROUP, *others)}


def rows_of(workdir: str) -> list[dict]:
  """The table rows of one run: a row per phase and extra head, with the run's dataset,
  imbalance factor, seed, workdir and ``setup_of``."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no results.json: is it a finished ltjax run?')
  with open(path) as f:
    summary = json.load(f)
  results = {}
  for phase in summary.get('phase_names') or summary.get('phases', {summary.get('phase', '?'): summary}):
    path = os.path.join(workdir, phase, 'results.json')
    if not os.path.exists(path):
      parent = os.path.dirname(os.path.abspath(workdir))
      if os.path.basename(os.path.normpath(workdir)) == phase:
        raise FileNotFoundError(f'{workdir} is the folder of phase {phase!r} of a run: give the run\'s workdir '
                                f'({parent}), whose phases are all reported')
      raise FileNotFoundError(f'{workdir}: its results.json names phase {phase!r}, but {path} is missing')
    with open(path) as f:
      results[phase] = json.load(f)
  rows = []
  method = summary.get('method')
  setup = setup_of(workdir)
  for label, r in evaluate.table_rows(results):
    run = f'{method}/{label}' if method != label else label
    if r.get('handoff'):  # started from an earlier phase's best validation epoch: not a 'last' run's row
      run += ' [best-val handoff]'
    rows.append({**r, 'run': run,
                 'dataset': summary.get('dataset'), 'imbalance_factor': summary.get('imbalance_factor'),
                 'seed': summary.get('seed'), 'workdir': workdir, 'setup': setup})
  return rows


def _same_setup(a: dict, b: dict) -> bool:
  """Whether two runs' setups agree on every field both have (a field added to ltjax
  since one of them ran is not a difference)."""
  return all(a[k] == b[k] for k in set(a) & set(b))


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _merge_reliability(rels):
  rels = [r for r in rels if r]
  if not rels:
    return None
  count = np.sum([r['count'] for r in rels], axis=0)
  weighted = lambda key: np.sum([np.nan_to_num(np.asarray(r[key], dtype=float)) * np.asarray(r['count'])
                                 for r in rels], axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    conf, acc = weighted('confidence') / count, weighted('accuracy') / count
  tolist = lambda a: [None if c == 0 else float(v) for v, c in zip(a, count)]
  return {'confidence': tolist(conf), 'accuracy': tolist(acc), 'count': [int(c) for c in count]}


def _grouped(rows: list[dict]) -> list[tuple[str, list[dict]]]:
  """Rows of the same run label, dataset, imbalance factor and setup (``setup_of``: seeds
  apart), as (label, rows), in order of first appearance. Where runs of one label differ
  in their setup, each label names the fields that set its runs apart
  (``ce [train.epochs=4, model.width=8]``); a warning names runs of one setup and seed."""
  groups: list[tuple[tuple, dict, list[dict]]] = []
  unknown = []  # runs without config.json (of an older ltjax): they join the one setup of their label
  for r in rows:
    key = (r['run'], r.get('dataset'), r.get('imbalance_factor'))
    if not r.get('setup'):
      unknown.append((key, r))
      continue
    home = next((g for g in groups if g[0] == key and _same_setup(g[1], r['setup'])), None)
    if home is None:
      groups.append((key, dict(r['setup']), [r]))
    else:
      home[1].update(r['setup'])
      home[2].append(r)
  for key, r in unknown:
    homes = [g for g in groups if g[0] == key]
    if len(homes) == 1:
      homes[0][2].append(r)
    else:  # none, or several to choose from: a row of its own
      home = next((g for g in groups if g[0] == key and g[1] == {}), None)
      if home is None:
        groups.append((key, {}, [r]))
      else:
        home[2].append(r)
  def label_of(key, setup, most):
    label = key[0]
    rivals = [s for k, s, _ in groups if k == key and s is not setup and s]
    if rivals and not setup:
      return f'{label} [no config.json]'
    apart = sorted(k for k in setup if any(k in s and s[k] != setup[k] for s in rivals))
    if not apart:
      return label
    shown = ', '.join(f'{k}={setup[k] if setup[k] != "" else chr(39) * 2}' for k in apart[:most])
    return f'{label} [{shown}{", ..." if len(apart) > most else ""}]'

  # Up to 3 fields a label; all of them where two labels would read alike.
  short = [label_of(key, setup, 3) for key, setup, _ in groups]
  out = []
  for (key, setup, members), label in zip(groups, short):
    if short.count(label) > 1:
      label = label_of(key, setup, len(setup))
    seen: dict = {}
    for m in members:
      seen.setdefault(m.get('seed'), []).append(m.get('workdir'))
    for seed, workdirs in seen.items():
      if len(set(workdirs)) > 1:
        print(f'ltjax.report: warning: {", ".join(sorted(set(workdirs)))} are runs of one config with seed {seed}: '
              f'row {label!r} counts each as a sample (their spread is run-to-run noise, not seeds)',
              file=sys.stderr)
    out.append((label, members))
  return out


def group(rows: list[dict]) -> list[dict]:
  """Rows of the same run label, dataset, imbalance factor and setup (seeds apart,
  ``_grouped``) merged: each metric as mean and standard deviation, per-class accuracies
  averaged, and the reliability bins pooled. Order of first appearance."""
  out = []
  for run, members in _grouped(rows):
    dataset, imb = members[0].get('dataset'), members[0].get('imbalance_factor')
    g = {'run': run, 'dataset': dataset, 'imbalance_factor': imb,
         'seeds': sorted((m.get('seed') for m in members), key=str), 'n': len(members)}
    for k in METRICS:
      g[k], g[k + '_std'] = _mean_std([m.get(k) for m in members])
    per_class = [m['per_class'] for m in members if m.get('per_class')]
    if per_class and all(len(p) == len(per_class[0]) for p in per_class):
      g['per_class'] = [None if any(p[c] is None for p in per_class) else float(np.mean([p[c] for p in per_class]))
                        for c in range(len(per_class[0]))]
      g['class_counts'] = next(m['class_counts'] for m in members if m.get('per_class'))
      g['shot_groups'] = members[0].get('shot_groups', {'many_above': 100, 'few_below': 20})
    g['reliability'] = _merge_reliability([m.get('reliability') for m in members])
    chosen = [m['best_val_selected'] for m in members if m.get('best_val_selected')]
    if chosen:  # the epoch (tau-norm: the tau) each seed chose on its validation split
      g['best_val'] = {
          'n': len(chosen), 'partial': any(c.get('note') for c in chosen),
          'chosen': [f'epoch {c["epoch"]}' if 'epoch' in c else f'tau {c["tau"]:g}' for c in chosen],
          'val': _mean_std([(c.get('val') or {}).get('top1') for c in chosen]),
          **{k: _mean_std([c.get(k) for c in chosen]) for k in BEST_VAL_METRICS}}
    out.append(g)
  return out


def _cell(mean, std):
  if mean is None:
    return '-'
  return f'{mean:.2f}' if std is None else f'{mean:.2f} ± {std:.2f}'


def table(groups: list[dict]) -> str:
  lines = ['| method | dataset | IF | seed | overall | many | medium | few | top-5 | ECE |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for g in groups:
    imb = '-' if g['imbalance_factor'] is None else f'{g["imbalance_factor"]:g}'
    seeds = ','.join(str(s) for s in g['seeds'])
    cells = ' | '.join(_cell(g[k], g[k + '_std']) for k in METRICS)
    lines.append(f'| {g["run"]} | {g["dataset"]} | {imb} | {seeds} | {cells} |')
  return '\n'.join(lines)


def best_val_table(groups: list[dict]) -> str:
  """The rows that chose an epoch on a validation split: what each seed chose, the
  validation top-1, and the test results of those checkpoints (mean ± std over the seeds
  that chose; '*' where a choice covered fewer epochs than asked, its results.json says
  why). '' where no row chose."""
  chosen = [g for g in groups if g.get('best_val')]
  if not chosen:
    return ''
  lines = ['Chosen on the validation split (best_val_selected, Kang et al.\'s selection); the table above '
           'is the last epoch (tau-norm: the configured tau):', '',
           '| method | dataset | IF | seed | chosen | validation | overall | many | medium | few |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for g in chosen:
    b = g['best_val']
    imb = '-' if g['imbalance_factor'] is None else f'{g["imbalance_factor"]:g}'
    seeds = ','.join(str(s) for s in g['seeds']) + (f' ({b["n"]} chose)' if b['n'] < g['n'] else '')
    cells = ' | '.join(_cell(*b[k]) for k in ('val', *BEST_VAL_METRICS))
    lines.append(f'| {g["run"]} | {g["dataset"]} | {imb} | {seeds} | {", ".join(b["chosen"])}'
                 f'{" *" if b["partial"] else ""} | {cells} |')
  return '\n'.join(lines)


def reproduction_main(results_dir: str, out: str | None, readme: str | None) -> None:
  """The reproduction's table: printed, written to ``out``, and put between the markers
  of ``readme``."""
  from ltjax import reproduction

  if not os.path.isdir(results_dir):
    sys.exit(f'ltjax.report: error: {results_dir} is not a folder of reproduction results '
             f'(bench/reproduce.py writes them)')
  records = reproduction.load_records(results_dir)
  if not records:
    sys.exit(f'ltjax.report: error: {results_dir} holds no row JSON of bench/reproduce.py')
  text = reproduction.table(records)
  if readme:
    tables = sorted({r.get('dataset', 'cifar10') for r in records})
    if len(tables) > 1:
      sys.exit(f'ltjax.report: error: --readme: {results_dir} holds rows of {" and ".join(tables)}; the README '
               f'has a table for each: give a folder per table (bench/reproduce.py --table writes them apart)')
    try:
      with open(readme) as f:
        updated = reproduction.replace_between_markers(f.read(), text, tables[0])
    except (OSError, ValueError) as e:
      sys.exit(f'ltjax.report: error: --readme {readme}: {e}')
    files.write_atomic(readme, updated)
  if out:
    files.write_atomic(out, text + '\n')
  print(text)
  for label, path in (('report', out), ('updated', readme)):
    if path:
      print(f'\n{label}: {path}')


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('workdirs', nargs='*')
  ap.add_argument('--out', help='folder for report.md and the figures (default: ./report); with '
                  '--reproduction, the Markdown file to write the table to')
  ap.add_argument('--reproduction', metavar='RESULTS',
                  help='the folder of bench/reproduce.py\'s row JSONs (e.g. results/cifar_lt)')
  ap.add_argument('--readme', help='with --reproduction: replace the table between the markers of this '
                  'file: <!-- reproduction:start --> and <!-- reproduction:end --> for CIFAR-10-LT, '
                  '<!-- reproduction-cifar100:start --> and <!-- reproduction-cifar100:end --> for CIFAR-100-LT')
  args = ap.parse_args(argv)
  if args.reproduction:
    if args.workdirs:
      ap.error('give either workdirs or --reproduction, not both')
    return reproduction_main(args.reproduction, args.out, args.readme)
  if args.readme:
    ap.error('--readme goes with --reproduction')
  if not args.workdirs:
    ap.error('give the workdirs of runs, or --reproduction RESULTS')
  args.out = args.out or 'report'
  try:
    workdirs = list({os.path.realpath(w): w for w in args.workdirs[::-1]}.values())[::-1]  # each run once
    rows = [r for w in sorted(workdirs, key=args.workdirs.index) for r in rows_of(w)]
  except FileNotFoundError as e:
    sys.exit(f'ltjax.report: error: {e}')
  from ltjax import plots  # matplotlib only when figures are made

  groups = group(rows)
  text = table(groups)
  best = best_val_table(groups)
  if best:
    text += '\n\n' + best
  os.makedirs(args.out, exist_ok=True)
  figures = plots.write_figures([(g['run'] + (f' (n={g["n"]})' if g['n'] > 1 else ''), g) for g in groups], args.out)
  with open(os.path.join(args.out, 'report.md'), 'w') as f:
    f.write(text + '\n')
    for name, path in figures.items():
      f.write(f'\n![{name}]({os.path.basename(path)})\n')
  print(text)
  print(f'\nreport: {os.path.join(args.out, "report.md")}')
  for name, path in figures.items():
    print(f'figure: {path}')


if __name__ == '__main__':
  main()
