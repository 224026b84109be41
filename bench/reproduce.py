"""One command that reproduces a CIFAR-LT table: runs its rows in turn, each as

  python -m ltjax.main --config configs/cifar_lt.py:ARGS --workdir WORKROOT/ROW [overrides]

in its own process, then writes RESULTS/ROW.json (the row, its command, commit, device,
versions, wall time, every phase's last-epoch accuracies and the published reference).

  python bench/reproduce.py --dry-run              # the plan: rows, commands, status, references
  python bench/reproduce.py --data-dir ../shared/tfds
  python bench/reproduce.py --smoke --data-dir ../shared/tfds --rows 'cifar10_if100_ce_s0'
  python bench/reproduce.py --parallel 4 --cache-dir .device_cache --timeout 540   # a GPU
  python bench/reproduce.py --table cifar100 --data-dir ~/tensorflow_datasets      # CIFAR-100-LT

Tables (--table): cifar10 (the default; results/cifar_lt) and cifar100, the DiVE and SSD
papers' CIFAR-100-LT table (results/cifar100_lt; needs TFDS's cifar100 prepared).

A row whose RESULTS/ROW.json exists is skipped. A row that was cut (killed, or stopped by
--timeout) resumes from its checkpoints the next time: the same command in the same
workdir. Rows are listed in ltjax/reproduction.py (``default_rows``); render the results
with ``python -m ltjax.report --reproduction RESULTS``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from ltjax import reproduction  # noqa: E402  (JAX is imported, never started: rows run in processes of their own)
from ltjax.evaluate import write_results as write_json  # noqa: E402  (atomic)
from ltjax.reproduction import Row  # noqa: E402

STATE = 'reproduce.json'  # in each row's workdir: its attempts (wall time, commit, device)
LOG = 'reproduce.log'  # in each row's workdir: the output of every attempt
TERMINATE_GRACE = 30.0  # seconds between SIGTERM and SIGKILL of a row cut by --timeout
# Per --table, the default folders: results/ROW.json (real, smoke) and runs/ROW workdirs
# (real, smoke); each table its own, so that carry.py and the report read one table at a time.
FOLDERS = {'cifar10': (('cifar_lt', 'smoke'), ('reproduce', 'reproduce_smoke')),
           'cifar100': (('cifar100_lt', 'smoke_cifar100'), ('reproduce_cifar100', 'reproduce_smoke_cifar100'))}

_PROBE = r'''
import json, importlib.metadata as md
out = {}
for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint'):
  try:
    out[pkg] = md.version(pkg)
  except md.PackageNotFoundError:
    out[pkg] = None
import jax
d = jax.devices()
print(json.dumps({'versions': out, 'device': {'platform': d[0].platform, 'device_kind': d[0].device_kind,
                                              'device_count': len(d)}}))
'''


# ---------------------------------------------------------------- the plan
def select(rows: list[Row], patterns: str | None) -> list[Row]:
  """The rows whose names match any of the shell patterns, separated by commas or spaces."""
  if not patterns:
    return rows
  pats = reproduction.row_patterns(patterns)
  unmatched = [p for p in pats if not reproduction.matching(rows, [p])]
  if unmatched:
    elsewhere = sorted({r.dataset for r in reproduction.matching(reproduction.all_rows(), unmatched)
                        if r not in rows})
    hint = ''.join(f' (--table {t} has rows that match)' for t in elsewhere)
    raise SystemExit(f'reproduce: error: --rows {", ".join(unmatched)} matches no row of this table{hint}; '
                     f'its rows are:\n  ' + '\n  '.join(r.name for r in rows))
  return reproduction.matching(rows, pats)


def _shown(path: str) -> str:
  """A path as the command shows it: relative to the repository when inside it."""
  rel = os.path.relpath(path, REPO)
  return path if rel.startswith('..') else rel


def row_command(row: Row, opts) -> list[str]:
  """The exact command of a row (run from the repository root)."""
  cmd = [_shown(sys.executable), '-m', 'ltjax.main',
         '--config', f'{reproduction.CONFIG}:{row.config_args(opts.smoke)}',
         '--workdir', _shown(workdir_of(row, opts)), *row.command_overrides(_shown(opts.workroot))]
  if opts.data_dir:
    cmd.append(f'--config.run.data_dir={_shown(opts.data_dir)}')
  if opts.cache_dir:
    cmd.append(f'--config.run.cache_dir={_shown(opts.cache_dir)}')
  return cmd + list(opts.extra)


def workdir_of(row: Row, opts) -> str:
  return os.path.join(opts.workroot, row.name)


def result_path(row: Row, opts) -> str:
  return os.path.join(opts.results, f'{row.name}.json')


def base_ready(row: Row, opts) -> bool:
  """Whether the row can start: it has no base row, or the base row's CE phase has finished
  and its checkpoint is here (``carry.py receive`` brings back results without checkpoints)."""
  if not row.base:
    return True
  phase = os.path.join(opts.workroot, row.base, reproduction.BASE_PHASE)
  ckpts = os.path.join(phase, 'checkpoints')
  return (os.path.exists(os.path.join(phase, 'results.json')) and os.path.isdir(ckpts)
          and any(d.isdigit() for d in os.listdir(ckpts)))


def config_error(row: Row, smoke: bool) -> str | None:
  """Why configs/cifar_lt.py refuses the row's arguments (e.g. no ``schedule`` yet), or None."""
  try:
    get_config = runpy.run_path(os.path.join(REPO, reproduction.CONFIG))['get_config']
    get_config(row.config_args(smoke))
  except Exception as e:  # noqa: BLE001 (any refusal is reported, nothing is run)
    return f'{type(e).__name__}: {e}'
  return None


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def status(row: Row, opts) -> str:
  """done (its result JSON exists) / partial (what its workdir holds) / pending."""
  path = result_path(row, opts)
  if os.path.exists(path):
    r = _read_json(path)
    return f'done: {r["result"]["top1"]:.2f} top-1 ({_wall(r.get("wall_seconds"))})'
  workdir = workdir_of(row, opts)
  state = load_state(workdir) if os.path.isdir(workdir) else {'attempts': []}
  if not state['attempts'] and not os.path.exists(os.path.join(workdir, 'config.json')):
    return 'pending' + (f' (on the {reproduction.BASE_PHASE} phase of {row.base}, '
                        f'{"finished" if base_ready(row, opts) else "not finished yet"})' if row.base else '')
  parts = []
  for name in sorted(os.listdir(workdir)):
    phase = os.path.join(workdir, name)
    if os.path.exists(os.path.join(phase, 'results.json')):
      parts.append(f'{name} finished')
    elif os.path.isdir(os.path.join(phase, 'checkpoints')):
      steps = [int(d) for d in os.listdir(os.path.join(phase, 'checkpoints')) if d.isdigit()]
      parts.append(f'{name} at step {max(steps)}' if steps else f'{name} started')
  wall = sum(a.get('seconds', 0.0) for a in state['attempts'])
  return f'partial ({", ".join(parts) or "no checkpoint yet"}; {_wall(wall)} so far)'


def _wall(seconds):
  if seconds is None:
    return '-'
  return f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def print_plan(rows: list[Row], opts) -> None:
  count = f'{len(rows)} row{"s" if len(rows) != 1 else ""}'
  print(f'{reproduction.TABLES[opts.table]} reproduction{" (SMOKE)" if opts.smoke else ""}: {count}; workdirs in '
        f'{_shown(opts.workroot)}/ROW, results in {_shown(opts.results)}/ROW.json; commands run from {REPO}')
  for i, row in enumerate(rows, 1):
    ref = reproduction.reference(row)
    paper = f'paper {ref["top1"]:.2f} ({ref["source"]})' if ref else 'paper -'
    error = config_error(row, opts.smoke)
    state = f'config error: {error}' if error else status(row, opts)
    print(f'{i:2d}. {row.name}  [schedule {row.schedule or "default"}]  {state}  |  {paper}')
    print(f'    {shlex.join(row_command(row, opts))}')


# ---------------------------------------------------------------- running
def load_state(workdir: str) -> dict:
  path = os.path.join(workdir, STATE)
  if os.path.exists(path):
    return _read_json(path)
  return {'attempts': []}


def save_state(workdir: str, state: dict) -> None:
  write_json(os.path.join(workdir, STATE), state)


def git_commit() -> tuple[str | None, bool | None]:
  """HEAD of the repository and whether tracked files differ from it; where no ``.git``
  travelled (a lent machine gets the working tree only), ``LTJAX_COMMIT`` and
  ``LTJAX_DIRTY`` (true/false) as bench/gpu_prepare.sh wrote them here."""
  if os.environ.get('LTJAX_COMMIT'):
    return os.environ['LTJAX_COMMIT'], os.environ.get('LTJAX_DIRTY', '').lower() == 'true'
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip())
    return head, dirty
  except (OSError, subprocess.CalledProcessError):
    return None, None


def probe_device(env: dict) -> dict:
  """The device the rows run on and the package versions, asked of JAX in a short
  process of its own (this one never holds the accelerator)."""
  try:
    p = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])
  except (OSError, subprocess.SubprocessError, ValueError, IndexError):
    return {'versions': {}, 'device': {'platform': None, 'device_kind': None}}


class Running:
  """One row's process: its output goes to WORKDIR/reproduce.log (and to the terminal
  when ``echo``); its wall time is saved to WORKDIR/reproduce.json as it runs."""

  def __init__(self, row: Row, opts, env: dict, info: dict, echo: bool):
    self.row, self.opts, self.echo = row, opts, echo
    self.workdir = workdir_of(row, opts)
    self.command = row_command(row, opts)
    os.makedirs(self.workdir, exist_ok=True)
    self.state = load_state(self.workdir)
    self.attempt = {'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                    'seconds': 0.0, 'commit': info['commit'], 'dirty': info['dirty'],
                    'device_kind': info['device'].get('device_kind'), 'returncode': None, 'cut': False}
    self.state['attempts'].append(self.attempt)
    self.t0 = time.monotonic()
    self.log = open(os.path.join(self.workdir, LOG), 'ab')
    self.log.write(f'\n=== {self.attempt["started"]}: {shlex.join(self.command)}\n'.encode())
    self.log.flush()
    self.proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    self.reader = threading.Thread(target=self._copy, daemon=True)
    self.reader.start()
    self.save()

  def _copy(self):
    while True:
      chunk = self.proc.stdout.read1(65536)
      if not chunk:
        break
      self.log.write(chunk)
      self.log.flush()
      if self.echo:
        out = getattr(sys.stdout, 'buffer', None)
        if out is not None:
          out.write(chunk)
        else:
          sys.stdout.write(chunk.decode(errors='replace'))
        sys.stdout.flush()

  def save(self):
    self.attempt['seconds'] = round(time.monotonic() - self.t0, 1)
    save_state(self.workdir, self.state)

  def poll(self):
    return self.proc.poll()

  def send(self, sig):
    try:
      os.killpg(self.proc.pid, sig)
    except ProcessLookupError:
      pass

  def finish(self) -> int:
    rc = self.proc.wait()
    self.reader.join(10)
    if not self.reader.is_alive():  # a grandchild may still hold the pipe open: then leave it
      self.proc.stdout.close()
      self.log.close()
    self.attempt['returncode'] = rc
    self.save()
    return rc

  def tail(self, n=25) -> str:
    with open(os.path.join(self.workdir, LOG), 'rb') as f:
      text = f.read()[-20000:].decode(errors='replace').replace('\r', '\n')
    return '\n'.join([l for l in text.splitlines() if l.strip()][-n:])


def stop_all(running: list[Running]) -> None:
  """Cuts the rows: SIGTERM to each row's process group, SIGKILL to those still alive
  after ``TERMINATE_GRACE`` seconds. They resume from their checkpoints next time."""
  for r in running:
    r.attempt['cut'] = True
    r.send(signal.SIGTERM)
  deadline = time.monotonic() + TERMINATE_GRACE
  while any(r.poll() is None for r in running) and time.monotonic() < deadline:
    time.sleep(0.1)
  for r in running:
    if r.poll() is None:
      r.send(signal.SIGKILL)


def record_row(row: Row, opts, command: list[str], info: dict, order: int | None) -> dict:
  workdir = workdir_of(row, opts)
  record = reproduction.row_record(row, workdir, command, smoke=opts.smoke,
                                   attempts=load_state(workdir)['attempts'], device=info['device'],
                                   versions=info['versions'], order=order)
  write_json(result_path(row, opts), record)
  return record


def check_existing(row: Row, opts) -> str | None:
  """Why an existing result JSON cannot stand for this row (another definition, or a
  smoke result among real ones), or None."""
  r = _read_json(result_path(row, opts))
  if bool(r.get('smoke')) != bool(opts.smoke):
    return (f'{result_path(row, opts)} holds a {"smoke" if r.get("smoke") else "real"} result, '
            f'this is a {"smoke" if opts.smoke else "real"} run: use another --results folder')
  if reproduction.row_from_fields(r) != row:
    return (f'{result_path(row, opts)} holds another definition of {row.name} '
            f'({reproduction.row_from_fields(r)}); move it away to rerun the row')
  return None


def run_rows(rows: list[Row], opts) -> int:
  """Runs the rows not yet done, up to ``opts.parallel`` at a time; returns the exit
  status (0: every selected row done)."""
  order = {r.name: i for i, r in enumerate(reproduction.all_rows())}
  todo, problems = [], []
  for row in rows:
    if os.path.exists(result_path(row, opts)):
      why = check_existing(row, opts)
      if why:
        problems.append(f'{row.name}: {why}')
      else:
        print(f'[{row.name}] done earlier: {_shown(result_path(row, opts))}', flush=True)
      continue
    error = config_error(row, opts.smoke)
    if error:
      problems.append(f'{row.name}: configs/cifar_lt.py refuses {row.config_args(opts.smoke)!r}: {error}')
      continue
    todo.append(row)
  for row in list(todo):
    if base_ready(row, opts) or any(r.name == row.base for r in todo):
      continue
    todo.remove(row)
    where = os.path.join(_shown(opts.workroot), row.base, reproduction.BASE_PHASE)
    if any(r.name == row.base for r in rows):
      why = f'{row.base} was refused (above)'
    elif os.path.exists(os.path.join(opts.results, f'{row.base}.json')):
      why = ('its row is done, but its workdir (with its checkpoint) is not here (a lent machine\'s: '
             'bench/carry.py receive, then carry it back)')
    else:
      why = f'select {row.base} too (--rows)'
    problems.append(f'{row.name}: it refits on the {reproduction.BASE_PHASE} phase of {row.base}, and {where} '
                    f'holds no finished one with its checkpoint: {why}')
  for p in problems:
    print(f'reproduce: error: {p}', file=sys.stderr, flush=True)
  if not todo:
    return 1 if problems else 0

  env = dict(os.environ)
  if opts.parallel > 1:
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'  # several processes share one accelerator
  commit, dirty = git_commit()
  info = {'commit': commit, 'dirty': dirty,
          **probe_device({**env, 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'})}
  if opts.parallel > 1 and info['device'].get('platform') == 'cpu':
    # Each row already spreads its batch over every core (8 CPU devices); rows side by
    # side starve each other's device threads, and XLA's CPU all-reduce aborts the row
    # when a thread has waited 40 s (seen with 2 rows on 2 cores).
    print(f'reproduce: error: --parallel {opts.parallel} on a CPU: each row already uses every core, '
          f'and rows side by side can abort in XLA\'s CPU all-reduce; use --parallel 1 (the default) '
          f'here, --parallel N on one accelerator', file=sys.stderr, flush=True)
    return 1
  print(f'reproduce: {len(todo)} row(s) to run on {info["device"].get("device_kind")} '
        f'({info["device"].get("platform")}), commit {(commit or "?")[:10]}{" (dirty)" if dirty else ""}, '
        f'{opts.parallel} at a time', flush=True)
  deadline = time.monotonic() + opts.timeout if opts.timeout else None
  running: list[Running] = []

  def terminated(signum, frame):
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGTERM, terminated)
  failed, cut, finished = [], [], []
  last_save = time.monotonic()
  try:
    while todo or running:
      expired = deadline is not None and time.monotonic() >= deadline
      while todo and len(running) < opts.parallel and not expired:
        row = next((r for r in todo if base_ready(r, opts)), None)  # a row waits for its base's CE phase
        if row is None:
          break
        todo.remove(row)
        print(f'[{row.name}] start: {shlex.join(row_command(row, opts))}', flush=True)
        running.append(Running(row, opts, env, info, echo=opts.parallel == 1))
      if expired:
        for r in running:
          print(f'[{r.row.name}] --timeout {opts.timeout:g} s reached: stopping it (it resumes next time)',
                flush=True)
        stop_all(running)
        if todo:
          print(f'reproduce: --timeout reached, not started: {", ".join(r.name for r in todo)}', flush=True)
        todo = []
      for r in list(running):
        if r.poll() is None:
          continue
        running.remove(r)
        rc = r.finish()
        if r.attempt['cut']:
          cut.append(r.row.name)
        elif rc == 0 and os.path.exists(os.path.join(r.workdir, 'results.json')):
          try:
            record = record_row(r.row, opts, r.command, info, order.get(r.row.name))
          except (OSError, KeyError, ValueError) as e:
            failed.append(r.row.name)
            print(f'[{r.row.name}] FAILED: its run finished but its results could not be read: {e!r}',
                  file=sys.stderr, flush=True)
            continue
          finished.append(r.row.name)
          ref = record['reference']
          paper = f' (paper {ref["top1"]:.2f})' if ref else ''
          print(f'[{r.row.name}] finished: top-1 {record["result"]["top1"]:.2f}{paper}, '
                f'{_wall(record["wall_seconds"])} -> {_shown(result_path(r.row, opts))}', flush=True)
        else:
          failed.append(r.row.name)
          print(f'[{r.row.name}] FAILED (exit status {rc}); the end of {_shown(os.path.join(r.workdir, LOG))}:\n'
                f'{r.tail()}', file=sys.stderr, flush=True)
      if todo and not running and not any(base_ready(r, opts) for r in todo):
        for r in todo:  # their base rows ended without a finished CE phase
          failed.append(r.name)
          print(f'[{r.name}] FAILED: not started, the {reproduction.BASE_PHASE} phase of {r.base} did not finish',
                file=sys.stderr, flush=True)
        todo = []
      if time.monotonic() - last_save > 10:
        for r in running:
          r.save()
        last_save = time.monotonic()
      if running:
        time.sleep(0.2)
  except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (terminated): the rows run in sessions of their own
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
    stop_all(running)
    for r in running:
      r.finish()
    print('\nreproduce: interrupted; the cut rows resume next time', file=sys.stderr)
    return 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  print(f'reproduce: {len(finished)} finished, {len(cut)} cut by --timeout, {len(failed)} failed'
        + (f' ({", ".join(failed)})' if failed else ''), flush=True)
  return 1 if failed or problems else (2 if cut else 0)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--dry-run', action='store_true', help='print the plan (rows, commands, status, references)')
  ap.add_argument('--table', choices=tuple(reproduction.TABLES), default='cifar10',
                  help='cifar10: the CIFAR-10-LT table (default); cifar100: the DiVE and SSD papers\' '
                       'CIFAR-100-LT table (needs TFDS cifar100 prepared)')
  ap.add_argument('--rows', help='name patterns, separated by commas or spaces, e.g. cifar10_if100_bsce_s0 or "*_dive_*"')
  ap.add_argument('--smoke', action='store_true',
                  help='append smoke to every config (tiny model, one epoch); results go to --results '
                       '(default results/smoke), workdirs to --workroot (default runs/reproduce_smoke; '
                       '--table cifar100: results/smoke_cifar100, runs/reproduce_smoke_cifar100)')
  ap.add_argument('--results', help='folder of the row JSONs (default results/cifar_lt, with --table '
                  'cifar100 results/cifar100_lt)')
  ap.add_argument('--workroot', help='folder of the row workdirs (default runs/reproduce, with --table '
                  'cifar100 runs/reproduce_cifar100)')
  ap.add_argument('--data-dir', help='TFDS data_dir (--config.run.data_dir)')
  ap.add_argument('--cache-dir', help='decoded-subset cache (--config.run.cache_dir)')
  ap.add_argument('--parallel', type=int, default=1,
                  help='rows run side by side on one accelerator (separate processes, '
                       'XLA_PYTHON_CLIENT_PREALLOCATE=false); refused on a CPU')
  ap.add_argument('--timeout', type=float, default=0,
                  help='seconds: no row starts after this, and running rows are stopped then '
                       '(they resume from their checkpoints next time)')
  ap.add_argument('--extra', action='append', default=[], metavar='FLAG',
                  help='an extra flag for every row\'s command, e.g. --extra=--config.run.log_every_steps=200')
  opts = ap.parse_args(argv)
  if opts.parallel < 1:
    ap.error('--parallel must be >= 1')
  # Paths are the user's (relative to the current folder); commands run from the repository.
  real_results = {t: os.path.join(REPO, 'results', FOLDERS[t][0][0]) for t in reproduction.TABLES}
  (results_real, results_smoke), (workroot_real, workroot_smoke) = FOLDERS[opts.table]
  default_results = os.path.join(REPO, 'results', results_smoke if opts.smoke else results_real)
  default_workroot = os.path.join(REPO, 'runs', workroot_smoke if opts.smoke else workroot_real)
  opts.results = os.path.abspath(opts.results or default_results)
  opts.workroot = os.path.abspath(opts.workroot or default_workroot)
  if opts.smoke and opts.results in real_results.values():
    ap.error(f'--smoke writes to {_shown(default_results)} (or another --results), never to {_shown(opts.results)}')
  opts.data_dir = os.path.abspath(opts.data_dir) if opts.data_dir else None
  opts.cache_dir = os.path.abspath(opts.cache_dir) if opts.cache_dir else None
  rows = select(reproduction.default_rows(opts.table), opts.rows)
  if opts.dry_run:
    print_plan(rows, opts)
    return 0
  return run_rows(rows, opts)


if __name__ == '__main__':
  sys.exit(main())
