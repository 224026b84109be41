"""Multi-process runs on this machine: two ``ltjax.main`` processes joined by
``jax.distributed`` on localhost (``launch/local.sh``, 2 CPU devices each) against one
process with 4 devices; a two-process run preempted (SIGTERM to one process, then to the
launcher), resumed, killed by SIGKILL and resumed again.

The DiVE default exercises what multi-host changes: a replicated dataset sampled with
the same global indices on every process, orbax saves and restores by all processes,
a teacher restored by both, results and logs from process 0 only.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_for_checkpoint, wait_for_logged_step

pytestmark = pytest.mark.slow
# 42 steps a phase, logged every step. At the digits config's lr 0.1 this tiny net is
# chaotic: the last-bit differences of a cross-process sum (gloo) against an in-process
# one grow to 1e-2 within 20 steps; at lr 0.02 the runs agree to 1e-7 to the end.
ARGS = ['--config', str(REPO / 'configs/digits_lt.py:smoke'), '--config.run.checkpoint_min_seconds=0',
        '--config.train.epochs=6', '--config.run.log_every_steps=1', '--config.train.lr=0.02']
STEPS = 42
EPOCH_STEPS = 7


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def two_scripts(tmp_path, source: str, *args, timeout: float) -> list[tuple[int, str, str]]:
  """Runs the Python ``source`` as processes 0 and 1 of a ``jax.distributed`` run on this
  machine (arguments: process id, coordinator port, then ``args``); returns each one's
  (exit status, stdout, stderr). Processes still running after ``timeout`` seconds (one
  waiting for the other) fail the test, with what they printed."""
  script = tmp_path / 'two_processes.py'
  script.write_text(source)
  port = free_port()
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    said = [p.communicate() for p in procs]
    pytest.fail(f'the processes did not finish in {timeout} s: one waits for the other.\n'
                f'{said[0][1][-1500:]}\n{said[1][1][-1500:]}')
  return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def one_process(workdir, devices=4):
  return subprocess.run([sys.executable, '-m', 'ltjax.main', *ARGS, '--workdir', str(workdir),
                         f'--cpu_devices={devices}'], capture_output=True, text=True, timeout=600, cwd=REPO)


def two_process_cmd(workdir):
  return ['bash', str(REPO / 'launch' / 'local.sh'), '2', *ARGS, '--workdir', str(workdir)]


def two_process_env():
  return {**os.environ, 'PYTHON': sys.executable, 'CPU_DEVICES': '2'}


def two_processes(workdir):
  return subprocess.run(two_process_cmd(workdir), capture_output=True, text=True, timeout=600,
                        cwd=REPO, env=two_process_env())


def metrics(workdir, phase):
  return [json.loads(line) for line in open(workdir / phase / 'metrics.jsonl')]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  single = one_process(root / 'single')
  assert single.returncode == 0, single.stderr[-3000:]
  multi = two_processes(root / 'multi')
  assert multi.returncode == 0, multi.stderr[-3000:]
  return root / 'single', root / 'multi', multi


def test_two_processes_match_one_process_with_as_many_devices(runs):
  single, multi, p = runs
  for phase in ('teacher', 'student'):
    a, b = metrics(single, phase), metrics(multi, phase)
    assert [m['step'] for m in a] == [m['step'] for m in b] and a[-1]['step'] == STEPS
    for x, y in zip(a, b):
      # Same global batches, same random stream: only the order of float sums differs.
      assert y['train/loss'] == pytest.approx(x['train/loss'], rel=1e-5)
      assert y['train/accuracy'] == x['train/accuracy']
    ra = json.load(open(single / phase / 'results.json'))
    rb = json.load(open(multi / phase / 'results.json'))
    assert rb['devices'] == ra['devices'] == 4
    assert rb['per_class'] == ra['per_class']
  # Process 0 alone prints the table and writes logs.
  assert p.stdout.count('| run | overall |') == 1 and '| student |' in p.stdout
  assert len(metrics(multi, 'student')) == len(metrics(single, 'student'))


def test_preempted_two_process_run_is_rerun_then_stops_and_resumes(runs, tmp_path):
  """The teacher phase of the two-process run: (1) a SIGTERM that reaches one process (a
  cluster's notice, not the launcher's): both agree on a step (JAX's preemption service),
  save, exit 75, and local.sh runs them again; (2) a SIGTERM to local.sh: it passes it to
  both, they save at one step and it exits 75; (3) the same command resumes from that
  step, and is killed by SIGKILL (every process at once) after its next checkpoint (or,
  where the second stop came in the last epoch, as soon as it has resumed); (4) the same
  command resumes from that checkpoint to the uninterrupted run's results."""
  _, multi, _ = runs
  workdir = tmp_path / 'stopped'
  cmd = two_process_cmd(workdir) + ['--config.run.phases=teacher']
  err_path = tmp_path / 'launcher.err'
  with open(err_path, 'w') as err_file:
    proc = subprocess.Popen(cmd, cwd=REPO, env=two_process_env(), stdout=subprocess.DEVNULL, stderr=err_file,
                            start_new_session=True)
    log = workdir / 'teacher' / 'metrics.jsonl'
    wait_for_logged_step(proc, log, random.Random(3).randint(3, 8))
    children = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(children[-1]), signal.SIGTERM)  # process 1 alone gets the notice
    # The launcher reruns both; once the rerun has trained 3 steps more, stop the launcher.
    deadline = time.time() + 300
    while 'restart 1 of 3' not in err_path.read_text():
      assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-3000:]
      time.sleep(0.05)
    first = int(next(l for l in err_path.read_text().splitlines() if 'stopped by' in l).split(' at step ')[1].split()[0])
    wait_for_logged_step(proc, log, first + 3)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
  err = err_path.read_text()
  assert proc.returncode == 75, err[-3000:]
  assert 'the run was preempted (exit 75); restart 1 of 3' in err
  said = [l for l in err.splitlines() if 'stopped by' in l]
  assert len(said) == 2, 'process 0 alone reports each stop'
  steps = [int(l.split(' at step ')[1].split()[0]) for l in said]
  ckpts = sorted(int(d) for d in os.listdir(workdir / 'teacher' / 'checkpoints') if d.isdigit())
  assert steps[0] < steps[1] == ckpts[-1] and metrics(workdir, 'teacher')[-1]['step'] == steps[1], (steps, ckpts)
  # The next epoch's checkpoint, unless the stop came in the last epoch: the final
  # checkpoint is followed by the results, which the kill must precede.
  periodic = (steps[1] // EPOCH_STEPS + 1) * EPOCH_STEPS < STEPS
  out_path = tmp_path / 'killed.out'
  with open(out_path, 'w') as out_file:
    proc = subprocess.Popen(cmd, cwd=REPO, env=two_process_env(), stdout=out_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if periodic:
      wait_for_checkpoint(proc, workdir / 'teacher' / 'checkpoints', steps[1] + 1)
    else:  # as soon as it has resumed: it has trained nothing yet
      deadline = time.time() + 300
      while 'resumed from checkpoint' not in out_path.read_text():
        assert proc.poll() is None and time.time() < deadline, out_path.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # both processes and the launcher, at once
    proc.wait()
  assert f'resumed from checkpoint at step {steps[1]} of {STEPS}' in out_path.read_text()
  saved = max(int(d) for d in os.listdir(workdir / 'teacher' / 'checkpoints') if d.isdigit())
  assert (steps[1] < saved < STEPS if periodic else saved == steps[1]), (steps, saved)
  assert not (workdir / 'teacher' / 'results.json').exists()
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=two_process_env())
  assert p.returncode == 0, p.stderr[-3000:]
  resumed = [l for l in (p.stdout + p.stderr).splitlines() if 'resumed from checkpoint' in l]
  assert len(resumed) == 1, 'process 0 alone reports the resume, once'
  assert f'resumed from checkpoint at step {saved} of {STEPS}' in resumed[0]
  assert json.load(open(workdir / 'teacher' / 'results.json'))['per_class'] == \
      json.load(open(multi / 'teacher' / 'results.json'))['per_class']
  assert metrics(workdir, 'teacher')[-1]['train/loss'] == pytest.approx(
      metrics(multi, 'teacher')[-1]['train/loss'], rel=1e-6)


def test_launcher_stops_every_process_when_one_fails(tmp_path):
  p = subprocess.run(['bash', str(REPO / 'launch' / 'local.sh'), '2', '--config',
                      str(REPO / 'configs/digits_lt.py:smoke'), '--workdir', str(tmp_path / 'w'),
                      '--config.train.lrr=1'], capture_output=True, text=True, timeout=120, cwd=REPO,
                     env=two_process_env())
  assert p.returncode == 2 and 'Did you mean "lr"' in p.stderr


def test_a_refusal_of_process_0_stops_every_process_at_once(tmp_path):
  """Only process 0 takes the workdir's lock: when it is held elsewhere, process 0 refuses
  and process 1 (started on its own, no launcher to stop it) stops too, pointing at
  process 0's message, instead of waiting at a barrier for JAX's heartbeat timeout."""
  import fcntl

  workdir = tmp_path / 'w'
  workdir.mkdir()
  holder = open(workdir / '.lock', 'w')
  fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
  port = free_port()
  procs = [subprocess.Popen([sys.executable, '-m', 'ltjax.main', *ARGS, '--workdir', str(workdir),
                             '--coordinator_address', f'localhost:{port}', '--num_processes', '2',
                             '--process_id', str(i), '--cpu_devices', '2'],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  start = time.time()
  outs = [p.communicate(timeout=90) for p in procs]
  assert time.time() - start < 60
  assert [p.returncode for p in procs] == [1, 1], [o[1][-2000:] for o in outs]
  assert 'is in use by another ltjax run' in outs[0][1]
  assert 'ltjax: error: process 0 stopped the run (the workdir is in use)' in outs[1][1]
  assert 'Traceback' not in outs[0][1] + outs[1][1]
  holder.close()


HOST_ARGS = ['--config', str(REPO / 'configs/imagenet_lt.py:method=ce,mock'), '--config.model.name=cifar_resnet',
             '--config.model.depth=8', '--config.model.width=4', '--config.model.dtype=float32',
             '--config.data.image_size=16', '--config.data.resize_size=20', '--config.train.epochs=2',
             '--config.train.lr=0.02']


def test_host_pipeline_two_processes_match_one(tmp_path):
  """The host pipeline: each process reads its own rows of each batch (mock ImageNet-LT),
  joined into global arrays; the same losses and evaluation as one process reading all."""
  single = subprocess.run([sys.executable, '-m', 'ltjax.main', *HOST_ARGS, '--workdir', str(tmp_path / 's'),
                           '--cpu_devices=4'], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = subprocess.run(['bash', str(REPO / 'launch' / 'local.sh'), '2', *HOST_ARGS, '--workdir', str(tmp_path / 'm')],
                         capture_output=True, text=True, timeout=600, cwd=REPO, env=two_process_env())
  assert multi.returncode == 0, multi.stderr[-3000:]
  logged = [metrics(tmp_path / d, 'ce') for d in ('s', 'm')]
  a, b = ([line for line in lines if 'train/loss' in line] for lines in logged)
  assert len(a) == len(b) == 8
  for x, y in zip(a, b):
    assert y['train/loss'] == pytest.approx(x['train/loss'], rel=1e-5)
  ra, rb = (json.load(open(tmp_path / d / 'ce' / 'results.json')) for d in ('s', 'm'))
  assert rb['num_test'] == ra['num_test'] == 64 and rb['nll'] == pytest.approx(ra['nll'], rel=1e-5)
  # The validation split after each epoch (configs/imagenet_lt.py), read in rows by each process:
  # the same accuracies, the same kept epoch, its checkpoint written by both and tested alike.
  va, vb = ([line['val/top1'] for line in lines if 'val/top1' in line] for lines in logged)
  assert len(va) == 2 and va == vb
  best_a, best_b = ra['best_val_selected'], rb['best_val_selected']
  assert best_b.pop('ece') == pytest.approx(best_a.pop('ece'), rel=1e-4, abs=1e-4) and best_b == best_a
  # A checkpoint is the train state alone (the batches follow from the step): the two-process
  # run's epoch-1 checkpoint resumes on one process, to the one-process run's results.
  import shutil

  assert not (tmp_path / 'm' / 'ce' / 'checkpoints' / '8' / 'data').exists()
  shutil.rmtree(tmp_path / 'm' / 'ce' / 'checkpoints' / '8')
  for f in (tmp_path / 'm' / 'ce' / 'results.json', tmp_path / 'm' / 'results.json'):
    f.unlink()
  resumed = subprocess.run([sys.executable, '-m', 'ltjax.main', *HOST_ARGS, '--workdir', str(tmp_path / 'm'),
                            '--cpu_devices=4'], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint at step 4 of 8' in resumed.stdout + resumed.stderr
  rc = json.load(open(tmp_path / 'm' / 'ce' / 'results.json'))
  assert rc['nll'] == pytest.approx(ra['nll'], rel=1e-5) and rc['top1'] == ra['top1']


_NOTICE_SCRIPT = '''
import os, signal, sys, time
import jax
from ltjax import checkpoint, parallel, preemption
pid, port, first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
parallel.initialize(f'localhost:{port}', 2, pid, False)
with preemption.watch():
  mgr = checkpoint.manager(sys.argv[4] + f'/p{pid}')
  for step in range(1, 30):  # an earlier phase that ended: steps 1 ... 29, orbax asked too
    mgr.should_save(step)
    assert not preemption.reached(step)
    parallel.barrier(f'a{step}')
  if pid == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # the notice, while the next phase is set up
  time.sleep(3)
  stopped = None
  for step in range(first, first + 40):  # the next phase (or a resumed run) from its own step
    mgr.should_save(step)  # orbax's manager, called with the phase's steps as the trainer does
    hit = preemption.reached(step)
    parallel.barrier(f'b{step}')
    if hit:
      stopped = step
      break
print(f'process {pid}: stopped at {stopped}', flush=True)
'''


@pytest.mark.parametrize('first', [1, 41])
def test_a_notice_between_phases_stops_both_processes_at_the_next_step(tmp_path, first):
  """A SIGTERM to one process while no training step runs (between two phases, while a
  resumed run loads): both processes stop at the first step of the next loop, whatever
  step that loop starts from; JAX's sync points are numbered by ltjax, not by a phase's
  steps (which start again every phase), and orbax's manager does not move them."""
  outs = two_scripts(tmp_path, _NOTICE_SCRIPT, first, tmp_path, timeout=300)
  for i, (_, out, err) in enumerate(outs):
    assert f'process {i}: stopped at {first}' in out, (out + err)[-3000:]


_UNREADABLE_SCRIPT = '''
import os, sys
import jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from ltjax import checkpoint, parallel
from ltjax.errors import MissingCheckpointError
pid, port, root, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update('jax_num_cpu_devices', 2)
parallel.initialize(f'localhost:{port}', 2, pid, False)
rep = parallel.replicated(parallel.make_mesh())
state = lambda v: {'w': jax.device_put(jnp.full((8, 8), float(v)), rep), 'step': jax.device_put(jnp.int32(v), rep)}
mgr = checkpoint.manager(root, keep=5)
for s in (1, 2, 3):
  checkpoint.save(mgr, s, state(s))
checkpoint.finish(mgr)
read = ocp.StandardCheckpointHandler.restore
def flaky(self, directory, *args, **kwargs):  # process 1 alone cannot read (a transient error of its own)
  if pid == 1 and (mode != 'newest' or directory.parent.name == '3'):
    raise OSError(f'input/output error reading {directory.parent.name}')
  return read(self, directory, *args, **kwargs)
ocp.StandardCheckpointHandler.restore = flaky
try:
  if mode == 'teacher':
    checkpoint.restore_variables(root)
  out = checkpoint.restore_latest(mgr, state(0))
except MissingCheckpointError as e:
  print(f'process {pid}: none readable: {e}', flush=True)
  sys.exit(0)
got = float(out['w'].addressable_data(0)[0, 0]), int(out['step'].addressable_data(0))
print(f'process {pid}: restored {got}', flush=True)
checkpoint.save(mgr, 3, state(3))  # the step set aside is saved again
checkpoint.finish(mgr)
print(f'process {pid}: steps {mgr.all_steps()}', flush=True)
'''


@pytest.mark.parametrize('mode', ['newest', 'all', 'teacher'])
def test_a_checkpoint_one_process_cannot_read_is_set_aside_by_all(tmp_path, mode):
  """Process 1 alone fails to read the newest checkpoint (or every one, or a teacher's):
  both processes learn it, set it aside and restore the same earlier step (or both say
  none is readable), instead of process 0 resuming from step 3 and process 1 from step 2,
  or process 0 waiting at orbax's barrier until JAX's heartbeat timeout kills both."""
  root = tmp_path / 'ckpt'
  outs = two_scripts(tmp_path, _UNREADABLE_SCRIPT, root, mode, timeout=120)
  out, err = ''.join(o for _, o, _ in outs), ''.join(e for _, _, e in outs)
  assert [rc for rc, _, _ in outs] == [0, 0], err[-3000:]
  if mode != 'newest':
    assert out.count('none readable') == 2, out
    assert sorted(os.listdir(root)) == ['1', '2', '3']  # nothing moved
    p0, p1 = outs[0][1], outs[1][1]
    if mode == 'teacher':
      assert f'the checkpoint {root / "3"} cannot be read: process 1 cannot read it (its own message' in p0
      assert 'though process 0 can. Fix: check that every process reaches' in p0
      assert 'cannot be read (OSError: input/output error reading 3): it is damaged' in p1
    else:
      assert f'{root / "1"}: process 1 cannot read it (its own message says why) though process 0 can' in p0
      assert 'Fix: check that every process reaches' in p0
      assert f'{root / "1"}: OSError: input/output error reading 1' in p1 and 'Fix: delete' in p1
    return
  assert out.count('restored (2.0, 2)') == 2, out + err[-3000:]
  assert out.count('steps [1, 2, 3]') == 2, out
  assert (root / '3.damaged').is_dir()
  assert f'checkpoint {root / "3"} cannot be read (process 1 cannot read it (its own message says why) though process 0 can)' in err
  assert 'process 1 cannot read checkpoint' in err and 'input/output error reading 3' in err
  assert err.count('Resuming from step 2') == 1, 'process 0 alone renames and says so'


_FAULT_SCRIPT = '''
import errno, shutil, sys
pid, port, fault, workdir, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
from ltjax import evaluate, pipeline
from ltjax.data import registry
from ltjax.errors import DatasetNotPreparedError

load, finished, write = registry.load, pipeline._finished_phase_checkpoints, evaluate.write_results

def load_here(config):
  print(f'process {pid} loads the data', flush=True)
  if fault == 'download' and pid == 0:
    raise DatasetNotPreparedError('could not download digits_lt (no internet). Fix: prepare it elsewhere')
  if fault == 'data' and pid == 1:
    raise DatasetNotPreparedError('digits_lt is not prepared on this host. Fix: prepare it here')
  dataset = load(config)
  if fault == 'other_data' and pid == 1:  # one label other than process 0 reads (a folder that changed)
    dataset.train_labels = dataset.train_labels.copy()
    dataset.train_labels[0] = (dataset.train_labels[0] + 1) % dataset.num_classes
  return dataset

def finished_here(workdir, *a, **k):  # process 1 does not see the teacher that process 0 sees
  return finished(workdir + '.elsewhere' if fault == 'teacher' and pid == 1 else workdir, *a, **k)

def write_here(path, *a, **k):  # process 0 cannot write the teacher's results (a full disk)
  if fault == 'results' and pid == 0 and path.endswith('teacher/results.json'):
    raise OSError(errno.ENOSPC, 'No space left on device', path)
  return write(path, *a, **k)

registry.load, pipeline._finished_phase_checkpoints, evaluate.write_results = load_here, finished_here, write_here
sys.argv = ['ltjax.main', *args, '--workdir', workdir, '--coordinator_address', f'localhost:{port}',
            '--num_processes', '2', '--process_id', str(pid), '--cpu_devices', '2']
from absl import app
from ltjax import main
app.run(main.main, flags_parser=main._parse_flags)
'''


@pytest.mark.parametrize('fault', ['data', 'other_data', 'download', 'teacher', 'results'])
def test_a_refusal_of_one_process_stops_every_process(request, tmp_path, fault):
  """What one process alone cannot do stops every process at once, each with a message,
  instead of the others waiting at the next collective for JAX's heartbeat timeout:
  process 1 cannot load the dataset, or loads other data than process 0; process 0 alone
  downloads a dataset (run.download) before the others load it, and cannot; process 1 does
  not see the finished teacher that the student phase needs; process 0 cannot write the
  teacher's results (a full disk)."""
  import shutil

  workdir = tmp_path / 'w'
  args = [*ARGS, '--config.train.epochs=1']
  if fault in ('download', 'other_data'):  # (other_data: after process 0 has prepared it)
    args.append('--config.run.download=True')
  if fault == 'teacher':  # the two-process run's finished teacher, then its student
    workdir.mkdir()
    shutil.copytree(request.getfixturevalue('runs')[1] / 'teacher', workdir / 'teacher')
    args = [*ARGS, '--config.run.phases=student']
  start = time.time()
  outs = two_scripts(tmp_path, _FAULT_SCRIPT, fault, workdir, *args, timeout=90)
  assert time.time() - start < 60, 'both stop at once, not at a heartbeat timeout'
  (rc0, out0, err0), (rc1, out1, err1) = outs
  assert [rc0, rc1] == [1, 1], (err0[-2000:], err1[-2000:])
  assert 'Traceback' not in err0 + err1
  if fault == 'data':
    assert 'ltjax: error: digits_lt is not prepared on this host' in err1
    assert 'ltjax: error: process 1 stopped the run (the dataset could not be loaded); the message in its own' in err0
  elif fault == 'other_data':
    for err in (err0, err1):
      assert 'ltjax: error: the processes loaded different data: process 1 loaded other data than process 0' in err
    assert ', other labels). Fix: let every host read the same files' in err1
    assert not (workdir / 'config.json').exists()
    assert out0.count('process 0 loads the data') == 1 and out1.count('process 1 loads the data') == 1
  elif fault == 'download':
    assert 'ltjax: error: could not download digits_lt (no internet)' in err0
    assert 'ltjax: error: process 0 stopped the run (the dataset could not be downloaded and prepared)' in err1
    assert 'process 0 loads the data' in out0 and 'loads the data' not in out1
  elif fault == 'teacher':
    assert "phase 'student' needs the final checkpoint of phase 'teacher'" in err1
    assert 'ltjax: error: process 1 stopped the run (the teacher is missing)' in err0
  else:
    assert 'cannot write' in err0 and 'No space left on device' in err0
    assert "ltjax: error: process 0 stopped the run (the results of phase 'teacher' could not be written)" in err1
    assert not (workdir / 'teacher' / 'results.json').exists()


_BEST_METRICS_SCRIPT = '''
import os, sys
import jax, jax.numpy as jnp
from ltjax import checkpoint, parallel
pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update('jax_num_cpu_devices', 2)
parallel.initialize(f'localhost:{port}', 2, pid, False)
variables = {'w': jax.device_put(jnp.ones((4, 4)), parallel.replicated(parallel.make_mesh()))}
kept = checkpoint.BestKept(root)
kept.offer(3, variables, {'top1': 50.0, 'epoch': 3})
kept.close()
real = open
def flaky(path, *args, **kwargs):  # process 1 alone cannot read step 3's metrics
  if pid == 1 and str(path).endswith(os.path.join('3', 'metrics', 'metrics')):
    raise OSError('input/output error')
  return real(path, *args, **kwargs)
checkpoint.open = flaky
kept = checkpoint.BestKept(root)
print(f'process {pid}: best {kept.best()}, steps {kept.mgr.all_steps()}', flush=True)
kept.close()
'''


def test_best_validation_metrics_one_process_cannot_read_are_set_aside_by_all(tmp_path):
  """A kept best validation epoch whose metrics process 1 alone cannot read is set aside
  by all (process 0 renames it), so that every process chooses again from the same
  epochs, rather than process 0 keeping it and process 1's orbax reading it its own way."""
  root = tmp_path / 'best_val'
  outs = two_scripts(tmp_path, _BEST_METRICS_SCRIPT, root, timeout=120)
  assert [rc for rc, _, _ in outs] == [0, 0], [e[-2000:] for _, _, e in outs]
  for i, (_, out, _) in enumerate(outs):
    assert f'process {i}: best None, steps []' in out, out
  assert sorted(os.listdir(root)) == ['3.damaged']
  err0, err1 = outs[0][2], outs[1][2]
  assert (f'the best validation checkpoint {root / "3"} cannot be read (process 1 cannot read it (its own '
          f'message says why) though process 0 can); kept as {root / "3.damaged"}') in err0
  assert f'process 1 cannot read the best validation metrics of {root / "3"} (OSError: input/output error)' in err1
