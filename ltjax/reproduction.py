"""The CIFAR-LT reproduction: its rows, their published references, the per-row JSON
and the Markdown table of them.

``bench/reproduce.py`` runs the rows (each one ``python -m ltjax.main`` in its own
workdir) and writes ``RESULTS/ROW.json`` with ``row_record``;
``python -m ltjax.report --reproduction RESULTS`` renders them with ``table``. This
module imports no JAX: planning and reporting run anywhere.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import json
import os
import re

import numpy as np

CONFIG = 'configs/cifar_lt.py'
METRICS = ('top1', 'many', 'medium', 'few', 'top5')
BEST_NOTE = ('chosen on the test set (the best of the epochs evaluated with eval_every_epochs): '
             'for like-for-like comparisons with references that select so, only')
# The tables of bench/reproduce.py (--table): the dataset of their rows -> its title.
TABLES = {'cifar10': 'CIFAR-10-LT', 'cifar100': 'CIFAR-100-LT'}
# Where ``python -m ltjax.report --reproduction RESULTS --readme README.md`` puts each table.
MARKERS = {'cifar10': ('<!-- reproduction:start -->', '<!-- reproduction:end -->'),
           'cifar100': ('<!-- reproduction-cifar100:start -->', '<!-- reproduction-cifar100:end -->')}
MARKER_START, MARKER_END = MARKERS['cifar10']
BASE_PHASE = 'ce'  # the phase of a base row that a row refits its classifier on (Row.base)


@dataclasses.dataclass(frozen=True)
class Row:
  """One run of the reproduction: ``configs/cifar_lt.py`` arguments and extra overrides."""
  method: str
  dataset: str = 'cifar10'
  imb: float = 100.0
  schedule: str = ''  # bbn | ldam | bag; '' = the method's default (no schedule= argument)
  seed: int = 0
  overrides: tuple[str, ...] = ()
  # The row whose CE phase this row's classifier stage refits on (crt, lws, tau_norm with
  # stage2.backbone_dir), instead of training a CE phase of its own: one baseline for
  # every classifier method, as BagofTricks-LT's stage-2 configs load one baseline model.
  base: str = ''

  def __post_init__(self):
    object.__setattr__(self, 'imb', float(self.imb))
    object.__setattr__(self, 'overrides', tuple(self.overrides))

  @property
  def name(self) -> str:
    return f'{self.dataset}_if{self.imb:g}_{self.method}_s{self.seed}'

  @property
  def group(self) -> str:
    """The name without the seed: the rows of one group are averaged in the table."""
    return f'{self.dataset}_if{self.imb:g}_{self.method}'

  def config_args(self, smoke: bool = False) -> str:
    args = [f'dataset={self.dataset}', f'imb={self.imb:g}', f'method={self.method}']
    if self.schedule:
      args.append(f'schedule={self.schedule}')
    args.append(f'seed={self.seed}')
    if smoke:
      args.append('smoke')
    return ','.join(args)

  def fields(self) -> dict:
    return {'method': self.method, 'dataset': self.dataset, 'imb': self.imb, 'schedule': self.schedule,
            'seed': self.seed, 'overrides': list(self.overrides), 'base': self.base}

  def command_overrides(self, workroot: str) -> list[str]:
    """The row's overrides, and where it has a base, the flags that take the base row's CE
    phase from ``workroot/BASE`` instead of training one."""
    extra = []
    if self.base:
      extra = [f'--config.run.phases={self.method}',
               f'--config.stage2.backbone_dir={os.path.join(workroot, self.base)}']
    return [*self.overrides, *extra]


# Each row names its schedule: that of the code whose number it sits beside where that
# code is a 200-epoch PyTorch ResNet-32 recipe: CE and LDAM-DRW Cao et al.'s (ldam);
# DiVE BagofTricks-LT's DiVE configs, teacher and student (bbn: milestones 120, 160, the
# DiVE paper's BBN recipe) at its temperature 2. BSCE runs BagofTricks-LT's Balanced
# Softmax config (bag) beside Menon et al.'s number, trained with their own TensorFlow
# recipe; balanced CE runs ldam beside He et al.'s 92.49 (their own 64k-iteration recipe);
# cRT, LWS and tau-norm run BagofTricks-LT's baseline and classifier-balancing configs
# (bag) beside its numbers; SSD runs bbn and has no published CIFAR-10-LT number.
_DIVE_TAU2 = ('--config.dive.temperature=2',)


def _block(imb: float) -> list[Row]:
  return [Row('ce', imb=imb, schedule='ldam'),
          Row('bsce', imb=imb, schedule='bag'),
          Row('dive', imb=imb, schedule='bbn', overrides=_DIVE_TAU2)]


def _rest(imb: float) -> list[Row]:
  return [Row('ldam_drw', imb=imb, schedule='ldam'),
          Row('crt', imb=imb, schedule='bag'),
          Row('ssd', imb=imb, schedule='bbn')]


def default_rows(table: str = 'cifar10') -> list[Row]:
  """A table's rows in running order (``table``: a key of ``TABLES``).

  cifar10: CE, BSCE, DiVE at IF 100, CE on the balanced CIFAR-10 (all 50,000 images),
  LDAM-DRW, cRT, SSD at IF 100; the same (less the balanced row) at IF 50 and IF 10;
  seeds 1, then 2, of CE, BSCE and DiVE at IF 100; LWS and tau-norm at IF 100, on the CE
  phase of the cRT row (``Row.base``).
  cifar100: ``cifar100_rows``."""
  if table == 'cifar100':
    return cifar100_rows()
  if table != 'cifar10':
    raise ValueError(f'unknown reproduction table {table!r}; the tables are {", ".join(TABLES)}')
  rows = _block(100) + [Row('ce', imb=1, schedule='ldam')] + _rest(100)
  for imb in (50, 10):
    rows += _block(imb) + _rest(imb)
  for seed in (1, 2):
    rows += [dataclasses.replace(r, seed=seed) for r in _block(100)]
  crt = next(r for r in rows if (r.method, r.imb, r.seed) == ('crt', 100.0, 0))
  rows += [Row('lws', imb=100, schedule='bag', base=crt.name), Row('tau_norm', imb=100, schedule='bag', base=crt.name)]
  return rows


# CIFAR-100-LT: the table of the DiVE and SSD papers (METHODS.md 3), each method on the
# protocol its number was trained with: the DiVE paper's BBN recipe (bbn, DiVE at the
# paper's tau 3, p 0.5, alpha 0.5: the config's defaults) for CE, BSCE and DiVE; Cao et
# al.'s code (ldam) for LDAM-DRW; SSD on bbn, as its CIFAR-10 row (SSD-LT's public code
# has no CIFAR recipe).
def _cifar100_block(imb: float) -> list[Row]:
  return [Row('ce', 'cifar100', imb, 'bbn'), Row('bsce', 'cifar100', imb, 'bbn'),
          Row('dive', 'cifar100', imb, 'bbn'), Row('ldam_drw', 'cifar100', imb, 'ldam'),
          Row('ssd', 'cifar100', imb, 'bbn')]


def cifar100_rows() -> list[Row]:
  """CIFAR-100-LT rows in running order: CE, BSCE, DiVE, LDAM-DRW, SSD at IF 100, then
  50, then 10; seeds 1, then 2, of CE, BSCE and DiVE at IF 100."""
  rows = [r for imb in (100, 50, 10) for r in _cifar100_block(imb)]
  for seed in (1, 2):
    rows += [dataclasses.replace(r, seed=seed) for r in _cifar100_block(100)[:3]]
  return rows


def all_rows() -> list[Row]:
  """Every table's rows, table after table (the order of ``TABLES``)."""
  return [r for t in TABLES for r in default_rows(t)]


def row_patterns(text: str | None) -> list[str]:
  """The shell patterns of a ``--rows``/``ROWS`` string, separated by commas or spaces."""
  return [p for p in re.split(r'[,\s]+', text or '') if p]


def matching(rows: list[Row], patterns: list[str]) -> list[Row]:
  """The rows whose names match any of ``patterns`` (``row_patterns``), in their order."""
  return [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


# Published top-1 (%), CIFAR-10(-LT), ResNet-32 (../shared/docs/METHODS.md 3).
_CAO = 'Cao et al. 2019'
_BAG = 'BagofTricks-LT reimplementation, tau 2 (its configs report the best test epoch)'
_BAG_CB = ('BagofTricks-LT\'s {} on its CE baseline, the bag recipe\'s own code (its best test epoch; '
           'documents/trick_gallery.md: error {})')
REFERENCES = {
    ('cifar10', 'ce', 1.0): (92.49, 'He et al. 2016'),
    ('cifar10', 'ce', 100.0): (70.36, _CAO),
    ('cifar10', 'ce', 10.0): (86.39, _CAO),
    ('cifar10', 'ldam_drw', 100.0): (77.03, _CAO),
    ('cifar10', 'ldam_drw', 10.0): (88.16, _CAO),
    ('cifar10', 'bsce', 100.0): (77.67, 'Menon et al. 2021 (logit adjustment = BSCE, tau 1; trained with their own '
                                        'TensorFlow recipe). The bag recipe\'s own code reports 77.54, its best test '
                                        'epoch (BagofTricks-LT, documents/trick_gallery.md)'),
    ('cifar10', 'bsce', 50.0): (81.11, 'BagofTricks-LT\'s Balanced Softmax, the bag recipe\'s own code (its best test '
                                       'epoch; documents/trick_gallery.md: error 18.89)'),
    ('cifar10', 'dive', 100.0): (78.88, _BAG),
    ('cifar10', 'dive', 50.0): (82.44, _BAG),
    ('cifar10', 'crt', 100.0): (74.99, _BAG_CB.format('cRT', '25.01')),
    ('cifar10', 'crt', 50.0): (80.17, _BAG_CB.format('cRT', '19.83')),
    ('cifar10', 'lws', 100.0): (72.63, _BAG_CB.format('LWS', '27.37')),
    ('cifar10', 'lws', 50.0): (78.66, _BAG_CB.format('LWS', '21.34')),
    ('cifar10', 'tau_norm', 100.0): (72.70, _BAG_CB.format('tau-norm (tau 1)', '27.30') + '; it normalises the '
                                     'baseline\'s best test epoch, ltjax its last'),
    ('cifar10', 'tau_norm', 50.0): (79.78, _BAG_CB.format('tau-norm (tau 1)', '20.22') + '; it normalises the '
                                    'baseline\'s best test epoch, ltjax its last'),
}
# CIFAR-100-LT, ResNet-32: the DiVE and SSD papers' table (METHODS.md 3); last epoch.
_DIVE_PAPER = 'He et al. 2021, the DiVE paper\'s CIFAR-100-LT table'
_DIVE_PAPER_TAU3 = _DIVE_PAPER + ' (tau 3, p 0.5, alpha 0.5; the BBN recipe)'
_CIFAR100 = {  # method: (top-1 at IF 100, 50, 10; source)
    'ce': ((38.35, 42.41, 56.51), _DIVE_PAPER),
    'bsce': ((42.39, 47.60, 58.38), _DIVE_PAPER + ' (its BSCE baseline and teacher)'),
    'ldam_drw': ((42.04, 46.62, 58.71), _DIVE_PAPER),  # Cao et al. 2019 publish IF 100 and 10 too
    'dive': ((45.35, 51.13, 62.00), _DIVE_PAPER_TAU3),
    'ssd': ((46.0, 50.5, 62.3), 'Li et al. 2021, the SSD paper (its CIFAR recipe is not public: ltjax runs bbn)'),
}
REFERENCES.update({('cifar100', method, imb): (top1, source) for method, (numbers, source) in _CIFAR100.items()
                   for imb, top1 in zip((100.0, 50.0, 10.0), numbers)})


def reference(row: Row) -> dict | None:
  """``{'top1', 'source'}`` of the published number for the row, or None."""
  found = REFERENCES.get((row.dataset, row.method, float(row.imb)))
  return None if found is None else {'top1': found[0], 'source': found[1]}


def row_from_fields(fields: dict) -> Row:
  return Row(method=fields['method'], dataset=fields.get('dataset', 'cifar10'), imb=float(fields['imb']),
             schedule=fields.get('schedule', ''), seed=int(fields.get('seed', 0)),
             overrides=tuple(fields.get('overrides', ())), base=fields.get('base', ''))


# ---------------------------------------------------------------- one row's JSON
def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _metrics(r: dict) -> dict:
  return {k: r.get(k) for k in (*METRICS, 'ece')}


def phase_summary(r: dict) -> dict:
  """What the row JSON keeps of a phase's ``results.json``: the last epoch's accuracies,
  its extra heads, the test-selected best epoch where the run recorded one."""
  out = {**_metrics(r), 'epochs': r.get('epochs'), 'num_train': r.get('num_train'),
         'train_seconds': (r.get('timing') or {}).get('train_seconds')}
  if r.get('main_head'):
    out['main_head'] = r['main_head']
  if r.get('heads'):
    out['heads'] = {h: _metrics(hr) for h, hr in r['heads'].items()}
  if r.get('best_test_selected'):
    out['best_test_selected'] = {**r['best_test_selected'], 'note': BEST_NOTE}
  if r.get('from_other_runs'):  # a base row's CE phase (Row.base): its checkpoint and numbers
    out['from_other_runs'] = r['from_other_runs']
  return out


def row_record(row: Row, workdir: str, command: list[str], *, smoke: bool = False,
               attempts: list[dict] = (), device: dict | None = None, versions: dict | None = None,
               order: int | None = None) -> dict:
  """The JSON of a finished row from its workdir (``results.json`` and
  ``<phase>/results.json`` of every phase). ``attempts``: the runs of the command
  (seconds, commit, dirty, ...), summed into ``wall_seconds``."""
  summary = _read(os.path.join(workdir, 'results.json'))
  names = summary.get('phase_names') or [summary.get('phase')]
  phases = {n: phase_summary(_read(os.path.join(workdir, n, 'results.json'))) for n in names}
  final = names[-1]
  last = attempts[-1] if attempts else {}
  config_path = os.path.join(workdir, 'config.json')
  record = {
      'row': row.name, 'group': row.group, **row.fields(), 'smoke': smoke, 'order': order,
      'config_args': row.config_args(smoke), 'command': command,
      'workdir': workdir,
      'commit': last.get('commit'), 'dirty': last.get('dirty'),
      'device': {**(device or {}), 'platform': summary.get('platform') or (device or {}).get('platform'),
                 'devices_used': summary.get('devices')},
      'versions': versions or {},
      'wall_seconds': round(sum(a.get('seconds', 0.0) for a in attempts), 1),
      'attempts': list(attempts),
      'run': {'dataset': summary.get('dataset'), 'imbalance_factor': summary.get('imbalance_factor'),
              'num_train': summary.get('num_train'), 'method': summary.get('method')},
      'final_phase': final,
      'result': {'phase': final, **{k: phases[final].get(k) for k in METRICS},
                 'note': 'last epoch of the recipe\'s final phase: the row\'s number'},
      'phases': phases,
      'best_test_selected': ({'phase': final, **phases[final]['best_test_selected']}
                             if phases[final].get('best_test_selected') else None),
      'reference': reference(row),
      'config': _read(config_path) if os.path.exists(config_path) else None,
  }
  return record


# ---------------------------------------------------------------- the table
def load_records(results_dir: str) -> list[dict]:
  """The row JSONs of a results folder, in the reproduction's row order (rows not in
  the default list after them, by name)."""
  records = []
  for path in sorted(glob.glob(os.path.join(results_dir, '*.json'))):
    r = _read(path)
    if isinstance(r, dict) and 'row' in r and 'result' in r:
      records.append(r)
  order = {r.name: i for i, r in enumerate(all_rows())}
  return sorted(records, key=lambda r: (order.get(r['row'], len(order)), r['row']))


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _cell(mean, std=None):
  if mean is None:
    return '-'
  return f'{mean:.2f}' if std is None else f'{mean:.2f} ± {std:.2f}'


def _wall(seconds):
  if seconds is None:
    return '-'
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 7200:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.2f} h'


def _schedule_cell(r: dict) -> str:
  parts = [r.get('schedule') or 'default']
  parts += [o.removeprefix('--config.') for o in r.get('overrides', ())]
  if r.get('base'):
    parts.append(f'on the CE phase of {r["base"]}')
  return ', '.join(parts)


def group_records(records: list[dict]) -> list[dict]:
  """Records that differ only in their seed as one entry (first appearance order)."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    key = (r['group'], r.get('schedule'), tuple(r.get('overrides', ())), bool(r.get('smoke')))
    groups.setdefault(key, []).append(r)
  out = []
  for members in groups.values():
    g = {'group': members[0]['group'], 'schedule': _schedule_cell(members[0]), 'n': len(members),
         'seeds': sorted(m['seed'] for m in members), 'smoke': bool(members[0].get('smoke')),
         'reference': members[0].get('reference')}
    for k in METRICS:
      g[k], g[k + '_std'] = _mean_std([m['result'].get(k) for m in members])
    # A phase evaluated once (tau-norm trains nothing) chose nothing: its 'best' is its last.
    best = [m['best_test_selected'] for m in members
            if m.get('best_test_selected') and m['best_test_selected'].get('evaluated_epochs', 2) > 1]
    g['best'] = _mean_std([b['top1'] for b in best]) if best else None
    g['best_epochs'] = [b.get('epoch') for b in best]
    g['devices'] = sorted({(m.get('device') or {}).get('device_kind') or (m.get('device') or {}).get('platform')
                           or '?' for m in members})
    g['wall'] = _mean_std([m.get('wall_seconds') for m in members])[0]
    g['commits'] = sorted({(m.get('commit') or '?')[:10] + (' (dirty)' if m.get('dirty') else '')
                           for m in members})
    out.append(g)
  return out


def _datasets(records: list[dict]) -> list[str]:
  """The datasets of the records, in the order of ``TABLES`` (others after them)."""
  found = {r.get('dataset', 'cifar10') for r in records}
  return [t for t in TABLES if t in found] + sorted(found - set(TABLES))


def table(records: list[dict]) -> str:
  """The Markdown table of the rows and the lines that say how to read it."""
  groups = group_records(records)
  with_best = any(g['best'] for g in groups)
  head = ['row', 'schedule', 'seed', 'ltjax top-1 (last epoch)', 'many', 'medium', 'few']
  if with_best:
    head.append('best epoch top-1 (test-selected)')
  head += ['paper', 'ltjax - paper', 'source', 'device', 'wall time']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for g in groups:
    ref = g['reference']
    cells = [g['group'] + (' (smoke)' if g['smoke'] else ''), g['schedule'],
             ','.join(str(s) for s in g['seeds'])]
    cells += [_cell(g[k], g[k + '_std']) for k in ('top1', 'many', 'medium', 'few')]
    if with_best:
      cells.append('-' if not g['best'] else
                   _cell(*g['best']) + ' (epoch ' + ','.join(str(e) for e in g['best_epochs']) + ')')
    if ref:
      cells += [f'{ref["top1"]:.2f}', f'{g["top1"] - ref["top1"]:+.2f}' if g['top1'] is not None else '-',
                ref['source']]
    else:
      cells += ['-', '-', '-']
    cells += [', '.join(g['devices']), _wall(g['wall'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  notes = [
      '',
      'All ltjax numbers are last-epoch top-1 (%) on the 10,000 test images of '
      + ' and '.join(t.replace('-LT', '') for t in (TABLES.get(d, d) for d in _datasets(records)))
      + ' (of the '
      'recipe\'s final phase); no epoch is chosen on the test set. Best-epoch numbers'
      + (' (column "best epoch")' if with_best else ' (none here)') + ' are test-selected: '
      'for like-for-like comparisons with references that select so, only.',
      'Several seeds: mean ± sample standard deviation. paper: published top-1 (ResNet-32); '
      '"-" where none is published for the row. Wall time: per run (mean over seeds), every '
      'phase and data loading included, summed over resumed attempts.',
  ]
  if groups and all(g['few'] is None for g in groups) and set(_datasets(records)) == {'cifar10'}:
    notes.append('few: the classes of fewer than 20 training images; these splits have none (CIFAR-10-LT\'s '
                 'smallest class has 50 images at IF 100), hence "-".')
  commits = sorted({c for g in groups for c in g['commits']})
  if commits:
    notes.append(f'ltjax commit{"s" if len(commits) > 1 else ""}: {", ".join(commits)}.')
  done = {rec['row'] for rec in records}
  for name in _datasets(records):
    planned = [r.name for r in default_rows(name)] if name in TABLES else []
    missing = [n for n in planned if n not in done]
    if missing and len(missing) < len(planned):
      where = '' if name == 'cifar10' else f' --table {name}'
      notes.append(f'No result yet (not run, or not finished): {len(missing)} of the {len(planned)} rows of '
                   f'bench/reproduce.py{where} (python bench/reproduce.py{where} --dry-run lists them).')
  if any(g['smoke'] for g in groups):
    notes.append('**Smoke runs** (tiny ResNet, one epoch a phase): a check of the machinery, '
                 'not comparable with the papers.')
  return '\n'.join(lines + notes)


def replace_between_markers(text: str, content: str, table: str = 'cifar10') -> str:
  """``text`` with what lies between the markers of ``table`` (``MARKERS``) replaced by
  ``content``."""
  if table not in MARKERS:
    raise ValueError(f'no README markers for table {table!r}; the tables are {", ".join(MARKERS)}')
  marker_start, marker_end = MARKERS[table]
  start, end = text.find(marker_start), text.find(marker_end)
  if start < 0 or end < 0:
    missing = [m for m, i in ((marker_start, start), (marker_end, end)) if i < 0]
    raise ValueError(f'marker {" and ".join(missing)} not found')
  if text.count(marker_start) > 1 or text.count(marker_end) > 1:
    raise ValueError(f'{marker_start} or {marker_end} appears more than once')
  if end < start:
    raise ValueError(f'{marker_end} comes before {marker_start}')
  return text[:start + len(marker_start)] + '\n' + content.strip('\n') + '\n' + text[end:]
