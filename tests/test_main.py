"""End to end through ``python -m ltjax.main``: a smoke run, resume after SIGKILL (and one
run per workdir while it runs), preemption by SIGINT and SIGTERM then a damaged
checkpoint, skipping a finished phase, and the errors a user sees."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from conftest import REPO, wait_for_checkpoint, wait_for_logged_step

pytestmark = pytest.mark.slow
EPOCHS = '--config.train.epochs=10'  # 70 steps: long enough to be killed mid-run
CKPT = '--config.run.checkpoint_min_seconds=0'  # a checkpoint every epoch
EVAL = '--config.run.eval_every_epochs=4'  # test-set evaluations at epochs 4 and 8 (and 10, the last)


def main_cmd(workdir, config='configs/digits_lt.py:smoke', *extra):
  return [sys.executable, '-m', 'ltjax.main', '--config', str(REPO / config),
          '--workdir', str(workdir), *extra]


def run(workdir, *extra, config='configs/digits_lt.py:smoke', timeout=600):
  return subprocess.run(main_cmd(workdir, config, *extra), capture_output=True, text=True,
                        timeout=timeout, cwd=REPO)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run') / 'digits'
  p = run(workdir, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0, p.stderr[-3000:]
  return workdir, p


def test_smoke_run_writes_results_and_prints_table(finished):
  workdir, p = finished
  r = json.load(open(workdir / 'results.json'))
  for key in ('top1', 'top5', 'many', 'medium', 'few', 'per_class', 'class_counts',
              'dataset', 'imbalance_factor'):
    assert key in r
  assert r['dataset'] == 'digits' and r['imbalance_factor'] == 20
  assert r['class_counts'] == [124, 88, 63, 45, 32, 23, 16, 12, 8, 6]
  assert len(r['per_class']) == 10 and r['top1'] > 30  # 10 classes: chance is 10
  # The default method, DiVE: a teacher phase, then the student, and the table of both.
  assert r['method'] == 'dive' and r['phase'] == 'student' and set(r['phases']) == {'teacher', 'student'}
  assert (workdir / 'teacher' / 'results.json').exists() and (workdir / 'student' / 'results.json').exists()
  assert '| run | overall | many | medium | few | top-5 | ECE |' in p.stdout
  assert 0 <= r['ece'] <= 100 and r['nll'] > 0 and len(r['reliability']['count']) == 15
  # The figures of the run, and their paths printed.
  for name in ('per_class.png', 'reliability.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG' and f'{workdir / name}' in p.stdout
  assert f'| student | {r["top1"]:.2f} |' in p.stdout
  assert f'| teacher | {r["phases"]["teacher"]["top1"]:.2f} |' in p.stdout
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'student'))
  lines = [json.loads(l) for l in open(workdir / 'student' / 'metrics.jsonl')]
  assert lines[-1]['step'] == 70 and 'train/loss' in lines[-1] and 'train/images_per_sec' in lines[-1]
  assert 'train/distill' in lines[-1] and 'train/teacher_accuracy' in lines[-1]
  # ltjax's number is the last epoch; the best test epoch is recorded beside it, labelled.
  tested = {l['test/epoch']: l['test/top1'] for l in lines if 'test/top1' in l}
  assert sorted(tested) == [4, 8]
  tested[10] = r['top1']
  best = r['best_test_selected']
  assert best['top1'] == max(tested.values()) and tested[best['epoch']] == best['top1']
  assert best['evaluated_epochs'] == 3 and 'test set' in best['selected_on']


def test_rerun_skips_finished_phases(finished):
  workdir, _ = finished
  before = [(workdir / ph / 'results.json').stat().st_mtime for ph in ('teacher', 'student')]
  p = run(workdir, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0
  assert '[teacher] finished earlier' in p.stdout and '[student] finished earlier' in p.stdout
  assert [(workdir / ph / 'results.json').stat().st_mtime for ph in ('teacher', 'student')] == before


def test_killed_run_resumes_to_the_same_result(finished, tmp_path):
  workdir, _ = finished
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(main_cmd(killed, 'configs/digits_lt.py:smoke', EPOCHS, CKPT, EVAL), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # One run per workdir: a second run on it, while the first trains, is refused at once.
  wait_for_checkpoint(proc, killed / 'teacher' / 'checkpoints', 7)
  second = run(killed, EPOCHS, CKPT, EVAL, timeout=120)
  assert second.returncode == 1 and 'Traceback' not in second.stderr
  assert f'is in use by another ltjax run (process {proc.pid} on ' in second.stderr
  assert 'choose another --workdir' in second.stderr
  # Killed in the second phase, the teacher done; the lock goes with the process, so the
  # same command resumes.
  wait_for_checkpoint(proc, killed / 'student' / 'checkpoints', 14)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / 'teacher' / 'results.json').exists()
  assert not (killed / 'student' / 'results.json').exists()
  p = run(killed, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0, p.stderr[-3000:]
  resumed = [l for l in p.stderr.splitlines() + p.stdout.splitlines() if 'resumed from checkpoint' in l]
  assert resumed, 'the second run did not resume'
  step = int(resumed[0].split('at step ')[1].split()[0])
  assert 14 <= step < 70
  assert '[teacher] finished earlier' in p.stdout
  a = json.load(open(workdir / 'student' / 'results.json'))
  b = json.load(open(killed / 'student' / 'results.json'))
  assert a['per_class'] == b['per_class'] and a['top1'] == b['top1']
  assert a['best_test_selected'] == b['best_test_selected']
  last = lambda d: json.loads(open(d / 'student' / 'metrics.jsonl').read().splitlines()[-1])['train/loss']
  assert last(workdir) == pytest.approx(last(killed), rel=1e-6)


def _checkpoint_steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _preempt(workdir, phase, min_step, sig, extra=()):
  """Starts the run, signals it once ``phase`` has logged ``min_step``; returns what it
  printed (stdout and stderr) and the step it says it saved."""
  proc = subprocess.Popen(main_cmd(workdir, 'configs/digits_lt.py:smoke', EPOCHS, CKPT, EVAL, LOG_EVERY, *extra),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_logged_step(proc, workdir / phase / 'metrics.jsonl', min_step)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  said = [l for l in err.splitlines() if 'stopped by' in l]
  assert len(said) == 1 and f'[{phase}] stopped by {sig.name}' in said[0] and 'Rerun the same command' in said[0]
  return out + err, int(said[0].split(' at step ')[1].split()[0])


LOG_EVERY = '--config.run.log_every_steps=1'


TEACHER = '--config.run.phases=teacher'  # one phase is enough; the teacher is the finished fixture's


def test_preempted_run_saves_where_signalled_then_a_damaged_checkpoint_is_set_aside(finished, tmp_path):
  """SIGINT, then SIGTERM in the resumed run, each at a random step: exit 75 with a
  checkpoint of the very step where the run stopped (no step trained beyond it, none
  lost), and the same command resumes from it. Then that newest checkpoint truncated (a
  crash of the storage, a full disk): the run warns, keeps it as <step>.damaged, resumes
  from the one before and ends with the uninterrupted results."""
  workdir, _ = finished
  rng = random.Random(17)
  stopped = tmp_path / 'preempted'
  first = rng.randint(5, 30)
  steps = []
  for min_step, sig in ((first, signal.SIGINT), (rng.randint(first + 8, 60), signal.SIGTERM)):
    printed, step = _preempt(stopped, 'teacher', min_step, sig, (TEACHER,))
    if steps:
      assert f'resumed from checkpoint at step {steps[-1]} of 70' in printed
    steps.append(step)
    assert min_step <= step < 70
    assert step in _checkpoint_steps(stopped / 'teacher' / 'checkpoints')
    logged = [json.loads(l)['step'] for l in open(stopped / 'teacher' / 'metrics.jsonl') if 'train/loss' in l]
    assert logged[-1] == step  # nothing trained after the saved step
  ckpts = stopped / 'teacher' / 'checkpoints'
  kept = _checkpoint_steps(ckpts)
  assert kept[-1] == step and len(kept) == 2
  files = [f for f in (ckpts / str(step)).rglob('*') if f.is_file()]
  biggest = max(files, key=lambda f: f.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
  p = run(stopped, EPOCHS, CKPT, EVAL, LOG_EVERY, TEACHER)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f'checkpoint {ckpts / str(step)} cannot be read' in p.stderr
  assert f'kept as {ckpts / str(step)}.damaged' in p.stderr and f'Resuming from step {kept[0]}' in p.stderr
  assert f'resumed from checkpoint at step {kept[0]} of 70' in p.stdout + p.stderr
  assert (ckpts / f'{step}.damaged').is_dir()
  a = json.load(open(workdir / 'teacher' / 'results.json'))
  b = json.load(open(stopped / 'teacher' / 'results.json'))
  assert a['per_class'] == b['per_class'] and a['top1'] == b['top1']
  last = lambda d: [json.loads(l) for l in open(d / 'teacher' / 'metrics.jsonl') if 'train/loss' in l][-1]
  assert last(stopped)['step'] == last(workdir)['step'] == 70
  assert last(stopped)['train/loss'] == pytest.approx(last(workdir)['train/loss'], rel=1e-6)


def test_workdir_with_other_config_is_refused(finished):
  workdir, _ = finished
  saved = (workdir / 'config.json').read_text()
  p = run(workdir, EPOCHS, CKPT, EVAL, '--config.seed=1')
  assert p.returncode == 1
  assert 'different config' in p.stderr and 'seed: 0 in the workdir, 1 now' in p.stderr
  assert 'new --workdir' in p.stderr
  assert (workdir / 'config.json').read_text() == saved


def test_unknown_config_field(tmp_path):
  p = run(tmp_path / 'w', '--config.train.lrr=0.1')
  assert p.returncode == 2 and 'Did you mean "lr"' in p.stderr and 'Traceback' not in p.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('config, extra, said', [
    ('configs/digit_lt.py', (), "--config {repo}/configs/digit_lt.py: [Errno 2] No such file or directory: "
                                "'{repo}/configs/digit_lt.py'. Fix: give a config file (a path, then :arguments if "
                                "any), e.g. configs/digits_lt.py; ltjax's own: configs/cifar_lt.py,"),
    ('configs/common.py', (), '--config {repo}/configs/common.py: the file has no get_config(): it is not a config file'),
    ('configs/digits_lt.py:smoke', ('--config.trian.lr=0.1',),
     '--config.trian.lr: the config has no field \'trian\'. Did you mean "train" instead of "trian"? The config '
     'is locked: only its own fields can be set (print them with: python -c "import runpy; '
     "print(runpy.run_path('{repo}/configs/digits_lt.py')['get_config']())\")"),
    ('configs/digits_lt.py:smoke', ('--config.train.lr=abc',),
     "--config.train.lr=abc: could not convert string to float: 'abc'. Fix: give the field a value of its type"),
])
def test_a_config_that_cannot_be_read_says_which_and_how(tmp_path, config, extra, said):
  """A misspelled config file, a file that is no config, a misspelled field and a value of
  the wrong type: exit 2 and one line that names what is wrong and how to go on."""
  p = run(tmp_path / 'w', *extra, config=config)
  assert p.returncode == 2 and 'Traceback' not in p.stderr, p.stderr[-3000:]
  assert p.stderr.startswith('ltjax: error: ' + said.replace('{repo}', str(REPO))), p.stderr[-3000:]
  assert not (tmp_path / 'w').exists()


def test_a_config_file_that_raises_is_named_not_taken_for_a_misspelled_field(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('import ml_collections\n\n\ndef get_config(arg=None):\n'
                 '  return ml_collections.ConfigDict({"a": 1})["missing"]\n')
  p = subprocess.run([sys.executable, '-m', 'ltjax.main', '--config', str(bad), '--workdir', str(tmp_path / 'w')],
                     capture_output=True, text=True, timeout=120, cwd=REPO)
  assert p.returncode == 2 and 'Traceback' not in p.stderr
  assert p.stderr.startswith(f"ltjax: error: --config {bad}: building the config raised KeyError: 'missing'. "
                             f"Fix: correct the config file or its :arguments"), p.stderr


def test_unknown_config_argument(tmp_path):
  p = run(tmp_path / 'w', config='configs/digits_lt.py:smoke,imbalance=50')
  assert p.returncode != 0 and "unknown config argument 'imbalance'" in p.stderr


def test_imbalance_factor_below_one(tmp_path):
  p = run(tmp_path / 'w', config='configs/digits_lt.py:imb=0.05')
  assert p.returncode == 1 and 'IF = 20' in p.stderr and 'Traceback' not in p.stderr
  assert not (tmp_path / 'w').exists()


def test_dataset_not_prepared(tmp_path):
  p = run(tmp_path / 'w', f'--config.run.data_dir={tmp_path}', config='configs/cifar_lt.py:smoke')
  assert p.returncode == 1 and 'is not prepared' in p.stderr and 'download=True' in p.stderr
  assert not (tmp_path / 'w').exists()


def _mount_tmpfs(path, options):
  """A tmpfs at ``path`` (root on Linux); False where this machine does not allow it."""
  path.mkdir(parents=True, exist_ok=True)
  try:
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def test_full_disk_stops_with_a_message_and_the_last_checkpoint_resumes(finished, tmp_path):
  """A 700 kB filesystem holds the config and at most one checkpoint (about 0.45 MB):
  the run stops with one clear message naming the checkpoint that is intact; the workdir
  copied to a disk with room resumes from it to the uninterrupted result."""
  workdir, _ = finished
  full = tmp_path / 'small_disk'
  if not _mount_tmpfs(full, 'size=700k'):
    pytest.skip('cannot mount a small tmpfs here (needs root)')
  try:
    p = run(full / 'w', EPOCHS, CKPT, EVAL, TEACHER)
    # One clear message and exit 1; no library's exit handler tries the full disk again
    # (tensorboardX's did). A background thread of tensorstore may still print its own
    # traceback while the failed write unwinds, before the message: a race ltjax does not own.
    said = [l for l in p.stderr.splitlines() if 'ltjax: error: could not write a checkpoint in' in l]
    assert p.returncode == 1 and len(said) == 1, p.stderr[-3000:]
    assert 'atexit' not in p.stderr, p.stderr[-3000:]
    assert '(No space left on device)' in said[0] and 'rerun the same command to resume' in said[0]
    intact = _checkpoint_steps(full / 'w/teacher/checkpoints')
    assert (f'the checkpoint of step {intact[-1]} is intact' if intact else 'no checkpoint of this phase') in said[0]
    subprocess.run(['cp', '-r', str(full / 'w'), str(tmp_path / 'w')], check=True)
  finally:
    subprocess.run(['umount', str(full)], capture_output=True)
  resumed = run(tmp_path / 'w', EPOCHS, CKPT, EVAL, TEACHER)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  if intact:
    assert f'resumed from checkpoint at step {intact[-1]}' in resumed.stdout + resumed.stderr
  assert json.load(open(tmp_path / 'w/teacher/results.json'))['per_class'] == \
      json.load(open(workdir / 'teacher/results.json'))['per_class']


def test_unwritable_workdir_is_refused_before_training(tmp_path):
  if os.geteuid() == 0:
    readonly = tmp_path / 'ro'
    if not _mount_tmpfs(readonly, 'ro,size=64k'):
      pytest.skip('cannot mount a read-only tmpfs here')
  else:
    readonly = tmp_path / 'ro'
    readonly.mkdir()
    readonly.chmod(0o500)
  try:
    p = run(readonly / 'w', config='configs/digits_lt.py:smoke,method=ce', timeout=120)
  finally:
    if os.geteuid() == 0:
      subprocess.run(['umount', str(readonly)], capture_output=True)
  assert p.returncode == 1 and 'Traceback' not in p.stderr
  assert f'cannot write the workdir {readonly / "w"}' in p.stderr and 'Fix: choose a --workdir' in p.stderr
  assert '[ce]' not in p.stderr + p.stdout  # no training began


@pytest.mark.parametrize('config,extra,code,said', [
    ('configs/digits_lt.py:smoke', '--config.train.lr=-0.1', 1, 'train.lr=-0.1: must be a number > 0'),
    ('configs/digits_lt.py:smoke', '--config.train.batch_size=60', 1, 'train.batch_size=60 is not divisible by the 8'),
    ('configs/digits_lt.py:smoke,method=xyz', '', 1, "method='xyz': must be one of bsce, cb, cb_focal"),
    ('configs/digits_lt.py:smoke', '--config.data.sampler=sometimes', 1, "data.sampler='sometimes': must be one of"),
    ('configs/cifar_lt.py:smoke,schedule=fast', '', 2, "schedule='fast': configs/cifar_lt.py has ldam, bbn, bag"),
    ('configs/digits_lt.py:smoke', '--config.data.name=mnist', 1, "data.name='mnist': must be one of digits"),
    ('configs/digits_lt.py:smoke', '--config.model.dtype=float16', 1, "model.dtype='float16'"),
    ('configs/digits_lt.py:smoke', '--config.model.conv_impl=cudnn', 1, "model.conv_impl='cudnn'"),
    ('configs/digits_lt.py:smoke', '--config.train.epochs=two', 2, "--config.train.epochs=two: invalid literal for int()"),
    ('configs/digits_lt.py:smoke', '--config.run.keep_checkpoints=0', 1, 'run.keep_checkpoints=0: must be an integer >= 1'),
    # The method's own numbers are chosen when the config is built: it belongs in the config string.
    ('configs/cifar_lt.py:smoke,method=crt', '--config.method=ssd', 2,
     'cifar_lt.py:smoke,method=ssd'),
])
def test_bad_values_get_one_line_and_leave_no_workdir(tmp_path, config, extra, code, said):
  p = run(tmp_path / 'w', *([extra] if extra else []), config=config, timeout=120)
  errors = [l for l in p.stderr.splitlines() if l.startswith('ltjax: error:') or 'Error' in l]
  assert p.returncode == code and 'Traceback' not in p.stderr, p.stderr[-2000:]
  assert said in p.stderr and len(errors) == 1, p.stderr[-2000:]
  assert not (tmp_path / 'w').exists()
