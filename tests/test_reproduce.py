"""The CIFAR-LT reproduction: ``bench/reproduce.py`` (plan, runner, row JSONs) and
``python -m ltjax.report --reproduction`` (the table, the README markers). Fast tests
use fabricated workdirs and a fake training command; one slow test runs a smoke row
of the real CIFAR-10-LT end to end."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from ltjax import reproduction, report

SCRIPT = REPO / 'bench' / 'reproduce.py'

ORDER = [
    'cifar10_if100_ce_s0', 'cifar10_if100_bsce_s0', 'cifar10_if100_dive_s0', 'cifar10_if1_ce_s0',
    'cifar10_if100_ldam_drw_s0', 'cifar10_if100_crt_s0', 'cifar10_if100_ssd_s0',
    'cifar10_if50_ce_s0', 'cifar10_if50_bsce_s0', 'cifar10_if50_dive_s0',
    'cifar10_if50_ldam_drw_s0', 'cifar10_if50_crt_s0', 'cifar10_if50_ssd_s0',
    'cifar10_if10_ce_s0', 'cifar10_if10_bsce_s0', 'cifar10_if10_dive_s0',
    'cifar10_if10_ldam_drw_s0', 'cifar10_if10_crt_s0', 'cifar10_if10_ssd_s0',
    'cifar10_if100_ce_s1', 'cifar10_if100_bsce_s1', 'cifar10_if100_dive_s1',
    'cifar10_if100_ce_s2', 'cifar10_if100_bsce_s2', 'cifar10_if100_dive_s2',
    'cifar10_if100_lws_s0', 'cifar10_if100_tau_norm_s0',
]


def load_script():
  spec = importlib.util.spec_from_file_location('reproduce_under_test', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fake_workdir(workdir, method, phases, seed=0, imb=100.0, best=None, heads=False):
  """A finished run's files: ``phases`` is [(name, top1)]; the final phase gets
  ``best`` as its ``best_test_selected``; ``heads``: SSD's student has two heads."""
  last = None
  for i, (name, top1) in enumerate(phases):
    r = {'method': method, 'phase': name, 'dataset': 'cifar10', 'imbalance_factor': imb, 'seed': seed,
         'top1': top1, 'many': top1 + 10, 'medium': top1 - 10, 'few': None, 'top5': 99.0, 'ece': 3.0,
         'epochs': 200, 'num_train': 12406, 'devices': 1, 'platform': 'gpu',
         'timing': {'train_seconds': 100.0}}
    if heads and name == 'student':
      r.update(main_head='hard', heads={'soft': {'top1': top1 + 1, 'many': 1.0, 'medium': 2.0, 'few': None,
                                                 'top5': 99.5, 'ece': 4.0}})
    if best and i == len(phases) - 1:
      r['best_test_selected'] = best
    (workdir / name).mkdir(parents=True, exist_ok=True)
    (workdir / name / 'results.json').write_text(json.dumps(r))
    last = r
  (workdir / 'results.json').write_text(json.dumps({**last, 'phase_names': [n for n, _ in phases]}))
  (workdir / 'config.json').write_text(json.dumps({'method': method, 'seed': seed}))


def record(tmp_path, row, phases, attempts=({'seconds': 150.0, 'commit': 'abc123', 'dirty': False},), **kw):
  workdir = tmp_path / 'runs' / row.name
  fake_workdir(workdir, row.method, phases, seed=row.seed, imb=row.imb, **kw)
  device = {'platform': 'gpu', 'device_kind': 'NVIDIA H100 80GB HBM3'}
  rec = reproduction.row_record(row, str(workdir), ['python', '-m', 'ltjax.main'], attempts=list(attempts),
                                device=device, versions={'jax': '0.12', 'flax': '0.12'})
  out = tmp_path / 'results' / f'{row.name}.json'
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rec))
  return rec


def rows_by_name():
  return {r.name: r for r in reproduction.default_rows()}


# ---------------------------------------------------------------- the plan
def test_dry_run_prints_the_plan_in_order_with_references(tmp_path):
  results, runs = tmp_path / 'results', tmp_path / 'runs'
  rows = rows_by_name()
  record(tmp_path, rows['cifar10_if100_bsce_s0'], [('bsce', 77.0)])
  partial = runs / 'cifar10_if100_dive_s0'
  fake_workdir(partial, 'dive', [('teacher', 75.0)])
  os.remove(partial / 'results.json')
  (partial / 'student' / 'checkpoints' / '120').mkdir(parents=True)
  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--results', str(results),
                      '--workroot', str(runs)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  plan = {}
  for i, line in enumerate(lines):
    m = re.match(r'\s*(\d+)\. (\S+)  \[schedule (\w+)\]  (.*)  \|  (paper .*)$', line)
    if m:
      plan[m.group(2)] = {'n': int(m.group(1)), 'schedule': m.group(3), 'status': m.group(4),
                          'paper': m.group(5), 'command': lines[i + 1].strip()}
  assert list(plan) == ORDER and [v['n'] for v in plan.values()] == list(range(1, len(ORDER) + 1))
  expected_papers = {
      'cifar10_if100_ce_s0': 'paper 70.36 (Cao et al. 2019)', 'cifar10_if10_ce_s0': 'paper 86.39 (Cao et al. 2019)',
      'cifar10_if100_ldam_drw_s0': 'paper 77.03 (Cao et al. 2019)',
      'cifar10_if10_ldam_drw_s0': 'paper 88.16 (Cao et al. 2019)',
      'cifar10_if1_ce_s0': 'paper 92.49 (He et al. 2016)', 'cifar10_if100_ce_s2': 'paper 70.36 (Cao et al. 2019)',
      'cifar10_if100_bsce_s0': 'paper 77.67 (Menon et al. 2021',
      'cifar10_if100_dive_s0': 'paper 78.88 (BagofTricks-LT', 'cifar10_if50_dive_s0': 'paper 82.44 (BagofTricks-LT',
      'cifar10_if100_crt_s0': 'paper 74.99 (BagofTricks-LT\'s cRT', 'cifar10_if50_crt_s0': 'paper 80.17 (',
      'cifar10_if100_lws_s0': 'paper 72.63 (BagofTricks-LT\'s LWS', 'cifar10_if10_crt_s0': 'paper -',
      'cifar10_if100_tau_norm_s0': 'paper 72.70 (BagofTricks-LT\'s tau-norm',
      'cifar10_if100_ssd_s0': 'paper -', 'cifar10_if50_ce_s0': 'paper -',
      'cifar10_if10_dive_s0': 'paper -', 'cifar10_if50_ldam_drw_s0': 'paper -',
  }
  for name, paper in expected_papers.items():
    assert plan[name]['paper'].startswith(paper), (name, plan[name]['paper'])
  schedules = {'ce': 'ldam', 'ldam_drw': 'ldam', 'bsce': 'bag', 'dive': 'bbn', 'crt': 'bag', 'lws': 'bag',
               'tau_norm': 'bag', 'ssd': 'bbn'}
  python = load_script()._shown(sys.executable)  # relative inside the repository, else absolute
  for name, v in plan.items():
    method = re.match(r'cifar10_if\d+_(\w+)_s\d', name).group(1)
    imb, seed = re.match(r'cifar10_if(\d+)_.*_s(\d)', name).groups()
    assert v['schedule'] == schedules[method]
    assert v['command'].startswith(f'{python} -m ltjax.main --config '
                                   f'configs/cifar_lt.py:dataset=cifar10,imb={imb},method={method},'
                                   f'schedule={schedules[method]},seed={seed} --workdir {runs / name}')
    assert v['command'].endswith('--config.dive.temperature=2') == (method == 'dive')
  assert plan['cifar10_if100_bsce_s0']['status'] == 'done: 77.00 top-1 (2.5 min)'
  assert plan['cifar10_if100_dive_s0']['status'].startswith('partial (student at step 120, teacher finished')
  assert plan['cifar10_if100_ce_s0']['status'] == 'pending'

  # --smoke appends smoke and uses its own folders; --rows selects by pattern.
  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--smoke', '--rows', '*_dive_s0, cifar10_if1_ce_s0',
                      '--data-dir', 'tfds', '--cache-dir', 'cache'], capture_output=True, text=True, cwd=tmp_path,
                     timeout=120)
  assert p.returncode == 0, p.stderr
  commands = [l.strip() for l in p.stdout.splitlines() if ' -m ltjax.main ' in l]
  assert [re.search(r'--workdir (\S+)', c).group(1) for c in commands] == [
      f'runs/reproduce_smoke/{n}' for n in ('cifar10_if100_dive_s0', 'cifar10_if1_ce_s0', 'cifar10_if50_dive_s0',
                                            'cifar10_if10_dive_s0')]
  assert all(re.search(r'seed=0,smoke ', c) for c in commands)
  assert all(c.endswith(f'--config.run.data_dir={tmp_path / "tfds"} --config.run.cache_dir={tmp_path / "cache"}')
             for c in commands)
  assert 'results in results/smoke/ROW.json' in p.stdout
  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--rows', 'cifar10_if100_nope_s0'],
                     capture_output=True, text=True, timeout=120)
  assert p.returncode != 0 and 'matches no row' in p.stderr and 'cifar10_if100_ce_s0' in p.stderr


def test_every_row_command_is_accepted_by_the_config():
  """Each row's config arguments and overrides parse against configs/cifar_lt.py, as
  ltjax.main's flags parse them (no training)."""
  from absl import flags
  from ml_collections import config_flags

  rows = reproduction.all_rows()
  assert {r.dataset for r in rows} == {'cifar10', 'cifar100'} and len(rows) == 27 + 21
  for row in rows:
    for smoke in (False, True):
      argv = ['prog', '--config', f'{REPO / reproduction.CONFIG}:{row.config_args(smoke)}',
              *row.command_overrides('runs/reproduce')]
      fv = flags.FlagValues()
      config_flags.DEFINE_config_file('config', None, 'c', flag_values=fv, lock_config=True, sys_argv=argv)
      fv(argv)
      c = fv.config
      assert (c.method, c.seed, c.data.name) == (row.method, row.seed, row.dataset)
      assert c.data.imbalance_factor == row.imb  # smoke never replaces a value given
      # BagofTricks-LT's tau 2 beside its CIFAR-10 numbers; the DiVE paper's tau 3 beside its CIFAR-100 ones.
      assert c.dive.temperature == (2.0 if (row.method, row.dataset) == ('dive', 'cifar10') else 3.0)
      assert (c.dive.power, c.dive.alpha) == (0.5, 0.5)
      # LWS and tau-norm refit on the cRT row's CE phase: no CE phase of their own.
      assert c.stage2.backbone_dir == (f'runs/reproduce/{row.base}' if row.base else '')
      assert c.run.phases == (row.method if row.base else '')
  assert {r.name: r.base for r in rows if r.base} == {'cifar10_if100_lws_s0': 'cifar10_if100_crt_s0',
                                                      'cifar10_if100_tau_norm_s0': 'cifar10_if100_crt_s0'}


def test_cifar100_table_plan(tmp_path):
  """--table cifar100: the DiVE and SSD papers' CIFAR-100-LT rows, each on its paper's
  protocol, beside METHODS.md's numbers; results in their own folder."""
  rows = reproduction.default_rows('cifar100')
  assert [r.name for r in rows] == [f'cifar100_if{imb}_{m}_s0' for imb in (100, 50, 10)
                                    for m in ('ce', 'bsce', 'dive', 'ldam_drw', 'ssd')] + [
      f'cifar100_if100_{m}_s{seed}' for seed in (1, 2) for m in ('ce', 'bsce', 'dive')]
  assert all(r.schedule == ('ldam' if r.method == 'ldam_drw' else 'bbn') and not r.overrides for r in rows)
  published = {  # METHODS.md 3: IF 100 / 50 / 10
      'ce': (38.35, 42.41, 56.51), 'bsce': (42.39, 47.60, 58.38), 'ldam_drw': (42.04, 46.62, 58.71),
      'dive': (45.35, 51.13, 62.00), 'ssd': (46.0, 50.5, 62.3)}
  for r in rows:
    assert reproduction.reference(r)['top1'] == published[r.method][(100, 50, 10).index(int(r.imb))]
  assert 'DiVE paper' in reproduction.reference(rows[2])['source'] and 'tau 3' in reproduction.reference(rows[2])['source']
  assert 'SSD paper' in reproduction.reference(rows[4])['source']
  with pytest.raises(ValueError, match='cifar10, cifar100'):
    reproduction.default_rows('cifar1000')

  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--table', 'cifar100', '--rows', '*_dive_s0'],
                     capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert p.returncode == 0, p.stderr
  assert p.stdout.startswith('CIFAR-100-LT reproduction: 3 rows; workdirs in ')
  assert 'results in results/cifar100_lt/ROW.json' in p.stdout and 'workdirs in runs/reproduce_cifar100/ROW' in p.stdout
  commands = [l.strip() for l in p.stdout.splitlines() if ' -m ltjax.main ' in l]
  assert [re.search(r'dataset=\w+,imb=\d+,method=\w+,schedule=\w+', c).group(0) for c in commands] == [
      f'dataset=cifar100,imb={imb},method=dive,schedule=bbn' for imb in (100, 50, 10)]
  assert not any('temperature' in c for c in commands)  # the paper's tau 3, the config's default
  assert 'paper 45.35 (He et al. 2021' in p.stdout
  # A pattern of the other table says where its rows are; smoke never writes to a real table's folder.
  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--rows', 'cifar100_if10_*'],
                     capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert p.returncode != 0 and '(--table cifar100 has rows that match)' in p.stderr
  p = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--smoke', '--table', 'cifar100',
                      '--results', str(REPO / 'results' / 'cifar100_lt')], capture_output=True, text=True,
                     timeout=120)
  assert p.returncode != 0 and 'never to results/cifar100_lt' in p.stderr


# ---------------------------------------------------------------- row JSONs and the table
def test_row_json_and_the_reproduction_table(tmp_path):
  rows = rows_by_name()
  ssd = record(tmp_path, rows['cifar10_if100_ssd_s0'],
               [('selfsup', 60.0), ('teacher', 65.0), ('student', 70.0), ('student_lws', 72.5)], heads=True)
  # The recipe's final phase is the row's number; SSD's soft head is kept.
  assert ssd['final_phase'] == 'student_lws' and ssd['result']['top1'] == 72.5
  assert ssd['result']['phase'] == 'student_lws' and list(ssd['phases']) == ['selfsup', 'teacher', 'student',
                                                                              'student_lws']
  assert ssd['phases']['student']['main_head'] == 'hard'
  assert ssd['phases']['student']['heads']['soft']['top1'] == 71.0
  assert ssd['reference'] is None and ssd['best_test_selected'] is None
  assert ssd['schedule'] == 'bbn' and ssd['device']['device_kind'] == 'NVIDIA H100 80GB HBM3'
  assert ssd['device']['platform'] == 'gpu' and ssd['versions'] == {'jax': '0.12', 'flax': '0.12'}
  assert ssd['commit'] == 'abc123' and ssd['dirty'] is False and ssd['config'] == {'method': 'ssd', 'seed': 0}
  dive = record(tmp_path, rows['cifar10_if100_dive_s0'], [('teacher', 76.0), ('student', 79.5)],
                best={'epoch': 187, 'top1': 80.25},
                attempts=[{'seconds': 100.0, 'commit': 'abc123', 'dirty': True, 'cut': True},
                          {'seconds': 50.5, 'commit': 'def456', 'dirty': False}])
  assert dive['wall_seconds'] == 150.5 and dive['commit'] == 'def456' and len(dive['attempts']) == 2
  assert dive['best_test_selected']['epoch'] == 187 and dive['best_test_selected']['phase'] == 'student'
  assert 'test set' in dive['best_test_selected']['note']
  assert dive['reference'] == {'top1': 78.88, 'source': reproduction.REFERENCES[('cifar10', 'dive', 100.0)][1]}
  assert dive['overrides'] == ['--config.dive.temperature=2'] and dive['imb'] == 100.0
  for seed, top1 in ((2, 74.0), (0, 70.0), (1, 72.0)):  # written out of order
    record(tmp_path, rows[f'cifar10_if100_ce_s{seed}'], [('ce', top1)])
  record(tmp_path, rows['cifar10_if1_ce_s0'], [('ce', 92.0)])
  # tau-norm trains nothing: evaluated once, it chose no epoch, so its best column is '-'.
  record(tmp_path, rows['cifar10_if100_tau_norm_s0'], [('tau_norm', 67.5)],
         best={'epoch': 0, 'top1': 67.5, 'evaluated_epochs': 1})
  (tmp_path / 'results' / 'notes.json').write_text('[1, 2]')  # not a row: ignored

  out = tmp_path / 'table.md'
  report.main(['--reproduction', str(tmp_path / 'results'), '--out', str(out)])
  lines = out.read_text().splitlines()
  assert lines[0] == ('| row | schedule | seed | ltjax top-1 (last epoch) | many | medium | few | '
                      'best epoch top-1 (test-selected) | paper | ltjax - paper | source | device | wall time |')
  # The reproduction's order; three seeds as mean ± sample std; the difference to the paper.
  assert lines[2] == ('| cifar10_if100_ce | ldam | 0,1,2 | 72.00 ± 2.00 | 82.00 ± 2.00 | 62.00 ± 2.00 | - | - | '
                      '70.36 | +1.64 | Cao et al. 2019 | NVIDIA H100 80GB HBM3 | 2.5 min |')
  assert lines[3].startswith('| cifar10_if100_dive | bbn, dive.temperature=2 | 0 | 79.50 | 89.50 | 69.50 | - | '
                             '80.25 (epoch 187) | 78.88 | +0.62 | BagofTricks-LT')
  assert lines[4].startswith('| cifar10_if1_ce | ldam | 0 | 92.00 |') and '| 92.49 | -0.49 | He et al. 2016 |' in lines[4]
  assert lines[5].startswith('| cifar10_if100_ssd | bbn | 0 | 72.50 |') and '| - | - | - |' in lines[5]
  assert lines[6].startswith('| cifar10_if100_tau_norm | bag, on the CE phase of cifar10_if100_crt_s0 | 0 | 67.50 |')
  assert '| - | - | 72.70 | -5.20 |' in lines[6]  # few, then the best column
  assert len([l for l in lines if l.startswith('| cifar10')]) == 5
  text = out.read_text()
  assert 'All ltjax numbers are last-epoch top-1' in text and 'test-selected' in text
  assert 'No result yet (not run, or not finished): 20 of the 27 rows' in text and 'Smoke' not in text
  assert 'these splits have none' in text  # CIFAR-10-LT: no class under 20 images


def test_readme_markers_are_replaced(tmp_path, capsys):
  rows = rows_by_name()
  record(tmp_path, rows['cifar10_if100_ce_s0'], [('ce', 70.0)])
  readme = tmp_path / 'README.md'
  before, after = '# ltjax\n\nIntro.\n\n## Reproduction\n', '\n\n## Next\nMore text.\n'
  readme.write_text(f'{before}{reproduction.MARKER_START}\nold table\n{reproduction.MARKER_END}{after}')
  report.main(['--reproduction', str(tmp_path / 'results'), '--readme', str(readme)])
  text = readme.read_text()
  table = reproduction.table(reproduction.load_records(str(tmp_path / 'results')))
  assert text == f'{before}{reproduction.MARKER_START}\n{table}\n{reproduction.MARKER_END}{after}'
  report.main(['--reproduction', str(tmp_path / 'results'), '--readme', str(readme)])
  assert readme.read_text() == text  # idempotent
  assert '| cifar10_if100_ce | ldam | 0 | 70.00 |' in capsys.readouterr().out
  readme.write_text('no markers here\n')
  with pytest.raises(SystemExit, match='marker'):
    report.main(['--reproduction', str(tmp_path / 'results'), '--readme', str(readme)])
  assert readme.read_text() == 'no markers here\n'
  with pytest.raises(ValueError, match='before'):
    reproduction.replace_between_markers(f'{reproduction.MARKER_END} {reproduction.MARKER_START}', 'x')
  with pytest.raises(SystemExit, match='no row JSON'):
    report.main(['--reproduction', str(tmp_path / 'runs')])


def test_cifar100_table_and_its_readme_markers(tmp_path):
  """A CIFAR-100-LT results folder renders its own table, says what of its 21 rows is
  missing, and fills the README's CIFAR-100 markers, leaving CIFAR-10's as they were; a
  folder with rows of both tables cannot fill one README table."""
  rows = {r.name: r for r in reproduction.default_rows('cifar100')}
  record(tmp_path, rows['cifar100_if100_dive_s0'], [('teacher', 42.0), ('student', 44.85)])
  results = str(tmp_path / 'results')
  text = reproduction.table(reproduction.load_records(results))
  line = next(l for l in text.splitlines() if l.startswith('| cifar100_if100_dive |'))
  assert line.startswith('| cifar100_if100_dive | bbn | 0 | 44.85 |') and '| 45.35 | -0.50 | He et al. 2021' in line
  assert 'on the 10,000 test images of CIFAR-100 (of the' in text and 'CIFAR-10 ' not in text
  assert 'No result yet (not run, or not finished): 20 of the 21 rows of bench/reproduce.py --table cifar100 ' in text

  c10, c100 = reproduction.MARKERS['cifar10'], reproduction.MARKERS['cifar100']
  ours = (REPO / 'README.md').read_text()  # the README's own command fills both tables
  assert all(ours.count(m) == 1 for m in (*c10, *c100)) and ours.index(c10[1]) < ours.index(c100[0])
  readme = tmp_path / 'README.md'
  original = f'# x\n{c10[0]}\nCIFAR-10 table\n{c10[1]}\n\n{c100[0]}\nold\n{c100[1]}\nend\n'
  readme.write_text(original)
  report.main(['--reproduction', results, '--readme', str(readme)])
  assert readme.read_text() == f'# x\n{c10[0]}\nCIFAR-10 table\n{c10[1]}\n\n{c100[0]}\n{text}\n{c100[1]}\nend\n'

  record(tmp_path, rows_by_name()['cifar10_if100_ce_s0'], [('ce', 70.0)])
  both = reproduction.table(reproduction.load_records(results))
  assert 'test images of CIFAR-10 and CIFAR-100' in both
  assert both.index('| cifar10_if100_ce |') < both.index('| cifar100_if100_dive |')  # tables in order
  readme.write_text(original)
  with pytest.raises(SystemExit, match='a folder per table'):
    report.main(['--reproduction', results, '--readme', str(readme)])
  assert readme.read_text() == original


# ---------------------------------------------------------------- the runner (fake training)
FAKE_MAIN = r'''
import json, os, sys, time
args = sys.argv[1:]
workdir = args[args.index('--workdir') + 1]
kv = dict(a.split('=') for a in args[args.index('--config') + 1].split(':', 1)[1].split(',') if '=' in a)
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, 'fake_times.txt'), 'a') as f:
  f.write(f'start {time.time()} {os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}\n')
if os.environ.get('FAKE_FAIL') in ('1', kv['method']):
  print('fake training diverged'); sys.exit(3)
time.sleep(float(os.environ.get('FAKE_SLEEP', '0')))
phases = {'dive': ['teacher', 'student'], 'crt': ['ce', 'crt']}.get(kv['method'], [kv['method']])
for i, p in enumerate(phases):
  os.makedirs(os.path.join(workdir, p, 'checkpoints', '7'), exist_ok=True)
  r = {'method': kv['method'], 'phase': p, 'top1': 50.0 + int(kv['seed']) + i, 'many': 60.0, 'medium': 40.0,
       'few': None, 'top5': 90.0, 'ece': 5.0, 'epochs': 1, 'platform': 'gpu', 'devices': 1,
       'dataset': 'cifar10', 'imbalance_factor': float(kv['imb']), 'num_train': 12406}
  json.dump(r, open(os.path.join(workdir, p, 'results.json'), 'w'))
json.dump({**r, 'phase_names': phases}, open(os.path.join(workdir, 'results.json'), 'w'))
with open(os.path.join(workdir, 'fake_times.txt'), 'a') as f:
  f.write(f'end {time.time()}\n')
print('fake run done')
'''


@pytest.fixture
def fake_script(tmp_path, monkeypatch):
  fake = tmp_path / 'fake_main.py'
  fake.write_text(FAKE_MAIN)
  mod = load_script()
  monkeypatch.setattr(mod, 'row_command', lambda row, opts: [
      sys.executable, str(fake), '--config', f'c.py:{row.config_args(opts.smoke)}',
      '--workdir', mod.workdir_of(row, opts)])
  monkeypatch.setattr(mod, 'probe_device', lambda env: {
      'versions': {'jax': '9.9', 'flax': '9.9'}, 'device': {'platform': 'gpu', 'device_kind': 'FakeGPU'}})
  monkeypatch.setattr(mod, 'TERMINATE_GRACE', 5.0)
  for var in ('FAKE_SLEEP', 'FAKE_FAIL', 'XLA_PYTHON_CLIENT_PREALLOCATE'):
    monkeypatch.delenv(var, raising=False)
  return mod


def test_runner_parallel_timeout_resume_and_skip(tmp_path, fake_script, monkeypatch, capsys):
  mod = fake_script
  results, runs = tmp_path / 'results', tmp_path / 'runs'
  common = ['--results', str(results), '--workroot', str(runs)]
  # Two at a time, each in its own process with preallocation off.
  monkeypatch.setenv('FAKE_SLEEP', '1.5')
  assert mod.main(['--rows', 'cifar10_if100_ce_s*,cifar10_if100_crt_s0', '--parallel', '2', *common]) == 0
  names = ['cifar10_if100_ce_s0', 'cifar10_if100_crt_s0', 'cifar10_if100_ce_s1', 'cifar10_if100_ce_s2']
  assert sorted(os.listdir(results)) == sorted(f'{n}.json' for n in names)
  spans = []
  for n in names:
    lines = (runs / n / 'fake_times.txt').read_text().split('\n')
    start, env = lines[0].split()[1:]
    spans.append((float(start), float(lines[1].split()[1])))
    assert env == 'false'
  assert spans[1][0] < spans[0][1], 'the first two rows ran side by side'
  crt = json.loads((results / 'cifar10_if100_crt_s0.json').read_text())
  assert crt['final_phase'] == 'crt' and crt['result']['top1'] == 51.0 and list(crt['phases']) == ['ce', 'crt']
  assert crt['device'] == {'platform': 'gpu', 'device_kind': 'FakeGPU', 'devices_used': 1}
  assert crt['versions'] == {'jax': '9.9', 'flax': '9.9'} and crt['order'] == 5 and crt['smoke'] is False
  assert crt['wall_seconds'] >= 1.5 and crt['attempts'][0]['returncode'] == 0
  assert crt['commit'] and crt['command'][-2:] == ['--workdir', str(runs / 'cifar10_if100_crt_s0')]

  # --timeout: the running row is stopped and no further row starts; it resumes next time.
  monkeypatch.setenv('FAKE_SLEEP', '60')
  t = time.monotonic()
  assert mod.main(['--rows', 'cifar10_if100_dive_s0,cifar10_if100_bsce_s0', '--timeout', '1', *common]) == 2
  assert time.monotonic() - t < 30
  out = capsys.readouterr().out
  assert 'not started: cifar10_if100_dive_s0' in out and 'stopping it' in out
  assert not (results / 'cifar10_if100_bsce_s0.json').exists() and not (runs / 'cifar10_if100_dive_s0').exists()
  state = json.loads((runs / 'cifar10_if100_bsce_s0' / 'reproduce.json').read_text())
  assert len(state['attempts']) == 1 and state['attempts'][0]['cut'] and state['attempts'][0]['seconds'] >= 0.5
  monkeypatch.setenv('FAKE_SLEEP', '0')
  assert mod.main(['--rows', 'cifar10_if100_bsce_s0', *common]) == 0
  bsce = json.loads((results / 'cifar10_if100_bsce_s0.json').read_text())
  assert len(bsce['attempts']) == 2 and bsce['wall_seconds'] >= 0.5 and bsce['reference']['top1'] == 77.67
  assert 'fake run done' in capsys.readouterr().out  # one row at a time: its output is shown

  # A finished row is skipped; a smoke run refuses to mix with real results.
  mtime = (results / 'cifar10_if100_bsce_s0.json').stat().st_mtime
  assert mod.main(['--rows', 'cifar10_if100_bsce_s0', *common]) == 0
  assert 'done earlier' in capsys.readouterr().out
  assert (results / 'cifar10_if100_bsce_s0.json').stat().st_mtime == mtime
  assert len(json.loads((runs / 'cifar10_if100_bsce_s0' / 'reproduce.json').read_text())['attempts']) == 2
  assert mod.main(['--smoke', '--rows', 'cifar10_if100_bsce_s0', *common]) == 1
  assert 'holds a real result' in capsys.readouterr().err

  # SIGTERM to the script (an outer timeout) stops its rows too: they run in sessions of their own.
  monkeypatch.setenv('FAKE_SLEEP', '60')
  timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  try:
    assert mod.main(['--rows', 'cifar10_if10_bsce_s0', *common]) == 130
  finally:
    timer.cancel()
  state = json.loads((runs / 'cifar10_if10_bsce_s0' / 'reproduce.json').read_text())
  assert state['attempts'][0]['cut'] and state['attempts'][0]['returncode'] == -signal.SIGTERM
  assert 'interrupted' in capsys.readouterr().err

  # A failing row: reported with the end of its log, the others still run.
  monkeypatch.setenv('FAKE_FAIL', '1')
  assert mod.main(['--rows', 'cifar10_if10_ce_s0', *common]) == 1
  err = capsys.readouterr().err
  assert 'FAILED (exit status 3)' in err and 'fake training diverged' in err
  assert not (results / 'cifar10_if10_ce_s0.json').exists()


def test_rows_on_a_base_row_wait_for_its_ce_phase(tmp_path, fake_script, monkeypatch, capsys):
  """LWS and tau-norm refit on the cRT row's CE phase: they start once it has finished,
  never before, even with free slots; they need the cRT row selected (or its workdir
  here); and when it fails they are not started."""
  mod = fake_script
  results, runs = tmp_path / 'results', tmp_path / 'runs'
  common = ['--results', str(results), '--workroot', str(runs)]
  rows = '*_if100_lws_s0,*_if100_tau_norm_s0'
  assert mod.main(['--rows', rows, *common]) == 1
  err = capsys.readouterr().err
  assert 'cifar10_if100_lws_s0: it refits on the ce phase of cifar10_if100_crt_s0' in err
  assert 'select cifar10_if100_crt_s0 too (--rows)' in err and not runs.exists()
  # The base row selected but refused: said so.
  results.mkdir()
  (results / 'cifar10_if100_crt_s0.json').write_text(json.dumps({'smoke': True, 'result': {}}))
  assert mod.main(['--rows', f'{rows},cifar10_if100_crt_s0', *common]) == 1
  err = capsys.readouterr().err
  assert 'holds a smoke result' in err and 'cifar10_if100_crt_s0 was refused (above)' in err
  (results / 'cifar10_if100_crt_s0.json').unlink()

  monkeypatch.setenv('FAKE_FAIL', 'crt')
  assert mod.main(['--rows', f'{rows},cifar10_if100_crt_s0', '--parallel', '3', *common]) == 1
  err = capsys.readouterr().err
  assert 'not started, the ce phase of cifar10_if100_crt_s0 did not finish' in err
  assert not (runs / 'cifar10_if100_lws_s0').exists() and not (runs / 'cifar10_if100_tau_norm_s0').exists()

  monkeypatch.setenv('FAKE_FAIL', '')
  monkeypatch.setenv('FAKE_SLEEP', '1')
  assert mod.main(['--rows', f'{rows},cifar10_if100_crt_s0', '--parallel', '3', *common]) == 0
  times = {n: [float(l.split()[1]) for l in (runs / n / 'fake_times.txt').read_text().split('\n') if l]
           for n in ('cifar10_if100_crt_s0', 'cifar10_if100_lws_s0', 'cifar10_if100_tau_norm_s0')}
  crt_end = times['cifar10_if100_crt_s0'][-1]
  assert times['cifar10_if100_lws_s0'][0] >= crt_end and times['cifar10_if100_tau_norm_s0'][0] >= crt_end
  assert times['cifar10_if100_lws_s0'][0] < times['cifar10_if100_tau_norm_s0'][1]  # side by side after it
  # Its results came back without its checkpoint (carry.py receive): not ready, and said so.
  shutil.rmtree(runs / 'cifar10_if100_crt_s0' / 'ce' / 'checkpoints')
  assert not mod.base_ready(reproduction.Row('lws', imb=100, schedule='bag', base='cifar10_if100_crt_s0'),
                            mod.argparse.Namespace(workroot=str(runs)))
  lws = json.loads((results / 'cifar10_if100_lws_s0.json').read_text())
  assert lws['base'] == 'cifar10_if100_crt_s0' and lws['reference']['top1'] == 72.63
  # The real command takes the base's CE phase and runs the classifier phase alone.
  row = {r.name: r for r in reproduction.default_rows()}['cifar10_if100_lws_s0']
  real = load_script()  # the fixture's row_command is the fake's
  assert real.row_command(row, real.argparse.Namespace(workroot=str(runs), smoke=False, data_dir=None,
                                                       cache_dir=None, extra=[]))[-2:] == [
      '--config.run.phases=lws', f'--config.stage2.backbone_dir={runs / "cifar10_if100_crt_s0"}']
  table = reproduction.table(reproduction.load_records(str(results)))
  assert '| cifar10_if100_lws | bag, on the CE phase of cifar10_if100_crt_s0 | 0 |' in table


# ---------------------------------------------------------------- end to end, real data
@pytest.mark.slow
def test_smoke_row_end_to_end_on_cifar10_lt(tmp_path, cifar10_dir):
  results, runs = tmp_path / 'results', tmp_path / 'runs'
  cmd = [sys.executable, str(SCRIPT), '--smoke', '--rows', 'cifar10_if100_ce_s0', '--data-dir', cifar10_dir,
         '--results', str(results), '--workroot', str(runs)]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  r = json.loads((results / 'cifar10_if100_ce_s0.json').read_text())
  assert r['smoke'] is True and r['schedule'] == 'ldam' and r['final_phase'] == 'ce'
  assert r['config_args'] == 'dataset=cifar10,imb=100,method=ce,schedule=ldam,seed=0,smoke'
  assert r['run'] == {'dataset': 'cifar10', 'imbalance_factor': 100.0, 'num_train': 12406, 'method': 'ce'}
  assert 10 <= r['result']['top1'] <= 100 and r['result']['few'] is None  # CIFAR-10-LT: no class under 20
  assert r['device']['platform'] == 'cpu' and r['versions']['jax'] and r['versions']['flax']
  assert len(r['commit']) == 40 and isinstance(r['dirty'], bool) and r['wall_seconds'] > 5
  assert r['reference']['top1'] == 70.36 and r['config']['model']['depth'] == 8  # smoke's tiny ResNet
  # The run itself (python -m ltjax.main on real CIFAR-10-LT through TFDS): the exact subset,
  # the whole test split.
  run = json.loads((runs / 'cifar10_if100_ce_s0' / 'ce' / 'results.json').read_text())
  assert run['num_train'] == 12406 and run['num_test'] == 10000 and run['dataset'] == 'cifar10'
  assert run['class_counts'] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
  assert run['top1'] > 12  # one tiny epoch: above chance (10)
  assert '[cifar10_if100_ce_s0] finished: top-1' in p.stdout

  # Rerun: the finished row is skipped (no training, the JSON untouched).
  mtime = (results / 'cifar10_if100_ce_s0.json').stat().st_mtime
  t = time.monotonic()
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0 and '[cifar10_if100_ce_s0] done earlier' in p.stdout
  assert time.monotonic() - t < 30 and (results / 'cifar10_if100_ce_s0.json').stat().st_mtime == mtime
  p = subprocess.run([sys.executable, '-m', 'ltjax.report', '--reproduction', str(results)],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert p.returncode == 0 and '| cifar10_if100_ce (smoke) | ldam | 0 |' in p.stdout, p.stderr


@pytest.mark.slow
def test_smoke_row_end_to_end_on_cifar100_lt_from_the_cache(tmp_path):
  """A CIFAR-100-LT row through the real runner and ``python -m ltjax.main`` (100 classes,
  DiVE's two phases at the paper's tau 3). No real CIFAR-100 here: its LT subset is cut
  from a CIFAR-100-shaped TFDS mock into ltjax's decoded-subset cache, which the row then
  reads (as on a lent machine without TFDS)."""
  import tensorflow_datasets as tfds
  from ltjax.data import cifar, longtail, registry
  from tfds_mocks import mock_cifar100

  source_fn, _ = mock_cifar100()
  cache = tmp_path / 'cache'
  with tfds.testing.mock_data(as_data_source_fn=source_fn):
    cifar.load_cifar_lt(registry.get('cifar100'), 100, cache_dir=str(cache))
  assert (cache / 'cifar100_lt_if100_seed0.npz').exists()

  results, runs = tmp_path / 'results', tmp_path / 'runs'
  p = subprocess.run([sys.executable, str(SCRIPT), '--table', 'cifar100', '--smoke', '--rows', 'cifar100_if100_dive_s0',
                      '--cache-dir', str(cache), '--results', str(results), '--workroot', str(runs)],
                     capture_output=True, text=True, timeout=900, cwd=REPO)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  r = json.loads((results / 'cifar100_if100_dive_s0.json').read_text())
  assert r['smoke'] is True and r['dataset'] == 'cifar100' and r['schedule'] == 'bbn'
  assert r['config_args'] == 'dataset=cifar100,imb=100,method=dive,schedule=bbn,seed=0,smoke'
  assert r['run'] == {'dataset': 'cifar100', 'imbalance_factor': 100.0, 'num_train': 10847, 'method': 'dive'}
  assert list(r['phases']) == ['teacher', 'student'] and r['final_phase'] == 'student'
  assert r['reference']['top1'] == 45.35 and r['config']['dive']['temperature'] == 3.0
  student = json.loads((runs / 'cifar100_if100_dive_s0' / 'student' / 'results.json').read_text())
  assert student['class_counts'] == longtail.longtail_counts(500, 100, 100) and student['num_test'] == 200
  assert 0 <= r['result']['top1'] <= 100 and r['result']['few'] is not None  # 30 classes under 20 images
  p = subprocess.run([sys.executable, '-m', 'ltjax.report', '--reproduction', str(results)],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert p.returncode == 0 and '| cifar100_if100_dive (smoke) | bbn | 0 |' in p.stdout, p.stderr
  assert 'test images of CIFAR-100' in p.stdout


def test_commit_from_the_environment_where_no_git_travelled(monkeypatch):
  """A lent machine gets the working tree without .git: bench/gpu_reproduce.sh passes the
  commit that bench/gpu_prepare.sh wrote here."""
  script = load_script()
  monkeypatch.setenv('LTJAX_COMMIT', 'f' * 40)
  monkeypatch.setenv('LTJAX_DIRTY', 'false')
  assert script.git_commit() == ('f' * 40, False)
  monkeypatch.setenv('LTJAX_DIRTY', 'true')
  assert script.git_commit() == ('f' * 40, True)
  monkeypatch.delenv('LTJAX_COMMIT')
  head, _ = script.git_commit()
  assert head is None or len(head) == 40


def test_rows_side_by_side_are_refused_on_a_cpu(tmp_path, fake_script, monkeypatch, capsys):
  """Two rows of 8 CPU devices each on one CPU starve each other's device threads (XLA's
  CPU all-reduce aborts a row after 40 s): --parallel is for an accelerator."""
  mod = fake_script
  monkeypatch.setattr(mod, 'probe_device', lambda env: {'versions': {}, 'device': {'platform': 'cpu',
                                                                                     'device_kind': 'cpu'}})
  common = ['--results', str(tmp_path / 'results'), '--workroot', str(tmp_path / 'runs')]
  assert mod.main(['--rows', 'cifar10_if100_ce_s0,cifar10_if100_bsce_s0', '--parallel', '2', *common]) == 1
  assert '--parallel 2 on a CPU' in capsys.readouterr().err
  assert not (tmp_path / 'runs' / 'cifar10_if100_ce_s0').exists()
