"""Damaged checkpoints (a truncated or missing file): skipped for the newest readable one,
or a clear error naming them; a damaged teacher checkpoint named. The workdir lock."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import checkpoint, locks
from ltjax.errors import MissingCheckpointError, WorkdirInUseError


def _save_steps(directory, steps):
  mgr = checkpoint.manager(str(directory), keep=5)
  for s in steps:
    checkpoint.save(mgr, s, {'params': {'w': jnp.full((64, 64), float(s))}, 'batch_stats': {}})
  mgr.wait_until_finished()
  return mgr


def _damage(step_dir, how):
  files = sorted((f for f in step_dir.rglob('*') if f.is_file()), key=lambda f: f.stat().st_size)
  if how == 'truncate':
    files[-1].write_bytes(files[-1].read_bytes()[:files[-1].stat().st_size // 2])
  else:
    for f in files:
      if 'manifest' in f.name or 'ocdbt' in str(f):
        os.remove(f)


@pytest.mark.parametrize('how', ['truncate', 'missing'])
def test_newest_damaged_checkpoint_falls_back_to_the_previous(tmp_path, how, capsys):
  mgr = _save_steps(tmp_path, [1, 2, 3])
  _damage(tmp_path / '3', how)
  target = {'params': {'w': jnp.zeros((64, 64))}, 'batch_stats': {}}
  state = checkpoint.restore_latest(mgr, target)
  assert float(state['params']['w'][0, 0]) == 2.0
  err = capsys.readouterr().err
  assert f'checkpoint {tmp_path / "3"} cannot be read' in err and 'Resuming from step 2' in err
  assert (tmp_path / '3.damaged').is_dir() and mgr.latest_step() == 2
  # The run can save step 3 again.
  checkpoint.save(mgr, 3, target)
  mgr.wait_until_finished()
  assert mgr.all_steps() == [1, 2, 3]


def test_no_readable_checkpoint_says_what_to_delete(tmp_path):
  mgr = _save_steps(tmp_path, [1, 2])
  for s in (1, 2):
    _damage(tmp_path / str(s), 'truncate')
  with pytest.raises(MissingCheckpointError, match=f'Fix: delete {tmp_path}') as e:
    checkpoint.restore_latest(mgr, {'params': {'w': jnp.zeros((64, 64))}, 'batch_stats': {}})
  assert str(tmp_path / '1') in str(e.value) and str(tmp_path / '2') in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']  # nothing moved or deleted


def test_damaged_teacher_checkpoint_is_named(tmp_path):
  _save_steps(tmp_path, [5]).close()
  assert np.all(checkpoint.restore_variables(str(tmp_path))['params']['w'] == 5.0)
  _damage(tmp_path / '5', 'truncate')
  with pytest.raises(MissingCheckpointError, match=f'{tmp_path / "5"} cannot be read'):
    checkpoint.restore_variables(str(tmp_path))


def test_variables_saved_on_eight_devices_load_on_one(tmp_path):
  """A checkpoint written replicated over this test session's 8 CPU devices loads, as host
  arrays, in a process with one device (a workdir trained on 8 GPUs, predicting on a
  laptop); an empty folder is an error, and is not created."""
  import subprocess
  import sys

  import jax

  from ltjax import parallel

  mgr = checkpoint.manager(str(tmp_path / 'c'))
  state = jax.device_put({'params': {'w': jnp.arange(6.0)}, 'batch_stats': {'m': jnp.ones(2)},
                          'opt_state': {'mu': jnp.zeros(6)}}, parallel.replicated(parallel.make_mesh(0)))
  checkpoint.save(mgr, 3, state)
  checkpoint.finish(mgr)
  code = ('import jax; jax.config.update("jax_num_cpu_devices", 1); import numpy as np; '
          'from ltjax import checkpoint; v = checkpoint.restore_variables(%r); '
          'assert jax.device_count() == 1 and isinstance(v["params"]["w"], np.ndarray); '
          'assert v["params"]["w"].tolist() == [0, 1, 2, 3, 4, 5] and sorted(v) == ["batch_stats", "params"]'
          % str(tmp_path / 'c'))
  p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  with pytest.raises(MissingCheckpointError, match=f'{tmp_path / "none"} holds no checkpoint'):
    checkpoint.restore_variables(str(tmp_path / 'none'))
  assert not (tmp_path / 'none').exists()


def test_workdir_lock_names_its_holder_and_is_released(tmp_path):
  first = locks.WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(WorkdirInUseError, match=f'process {os.getpid()} on '):
    locks.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  locks.WorkdirLock(str(tmp_path)).acquire().release()


def test_a_failed_save_names_the_intact_checkpoint(tmp_path, monkeypatch):
  """A write failure at the orbax boundary (a full disk, injected): a WorkdirWriteError
  that names the failed and the intact step; the intact one still restores."""
  import errno

  import orbax.checkpoint as ocp

  from ltjax.errors import WorkdirWriteError

  mgr = _save_steps(tmp_path, [7])
  real = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  target = {'params': {'w': jnp.zeros((64, 64))}, 'batch_stats': {}}
  with pytest.raises(WorkdirWriteError, match='could not write a checkpoint in .*No space left on '
                     'device.*the checkpoint of step 7 is intact.*rerun the same command'):
    checkpoint.save(mgr, 14, target)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real)
  assert float(checkpoint.restore_latest(mgr, target)['params']['w'][0, 0]) == 7.0


def test_only_a_failed_write_is_reported_as_a_disk_problem(tmp_path):
  """A full disk (an OSError, or orbax's message of one) becomes the WorkdirWriteError that
  says to free space; any other error from orbax (a bug, a refused step) stays itself."""
  import errno

  from ltjax.errors import WorkdirWriteError

  mgr = checkpoint.manager(str(tmp_path / 'c'))
  disk = OSError(errno.ENOSPC, 'No space left on device')
  for error in (disk, RuntimeError('write failed: [Errno 28] No space left on device')):
    with pytest.raises(WorkdirWriteError, match='Fix: free space on that disk'):
      checkpoint._raise_write_error(mgr, error)
  wrapped = ValueError('an orbax wrapper')
  wrapped.__cause__ = disk
  with pytest.raises(WorkdirWriteError):
    checkpoint._raise_write_error(mgr, wrapped)
  bug = TypeError('cannot serialise <object>')
  with pytest.raises(TypeError, match='cannot serialise') as e:
    checkpoint._raise_write_error(mgr, bug)
  assert e.value is bug
  mgr.close()


def test_a_finished_phase_without_its_checkpoints_says_to_delete_its_results(tmp_path):
  phase = tmp_path / 'teacher'
  (phase / 'checkpoints').mkdir(parents=True)
  with pytest.raises(MissingCheckpointError, match='holds no checkpoint. Fix: finish training'):
    checkpoint.restore_variables(str(phase / 'checkpoints'))
  (phase / 'results.json').write_text('{}')
  with pytest.raises(MissingCheckpointError, match=r'its checkpoints were removed. Fix: delete .*results.json'):
    checkpoint.restore_variables(str(phase / 'checkpoints'))


def test_a_checkpoint_with_the_old_grain_item_restores(tmp_path):
  """Host-pipeline checkpoints of earlier ltjax hold the state (item 'state') beside each
  process's grain iterator state (item 'data'): the state restores, 'data' is not read."""
  import orbax.checkpoint as ocp

  state = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': np.int32(3)}
  old = ocp.CheckpointManager(str(tmp_path / 'c'), options=ocp.CheckpointManagerOptions(create=True))
  old.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave({'next_index': 3})))
  old.wait_until_finished()
  old.close()
  mgr = checkpoint.manager(str(tmp_path / 'c'))
  target = {'w': jnp.zeros((2, 3), jnp.float32), 'step': jnp.int32(0)}
  got = checkpoint.restore_latest(mgr, target)
  np.testing.assert_array_equal(got['w'], state['w'])
  assert int(got['step']) == 3
  checkpoint.save(mgr, 5, {**target, 'w': target['w'] + 1})  # later ones: the state alone
  checkpoint.finish(mgr)
  assert os.listdir(tmp_path / 'c' / '5') != [] and not os.path.exists(tmp_path / 'c' / '5' / 'data')
  np.testing.assert_array_equal(checkpoint.restore_latest(mgr, target)['w'], np.ones((2, 3)))
  mgr.close()


def test_writers_of_one_file_at_once_each_leave_it_whole(tmp_path):
  """Processes on several hosts, with the same pid in their containers, write a dataset's
  cache in a shared folder at once: each write has its own temporary file, so that none
  fails (a rename whose temporary file another writer took) and the file is one writer's
  whole."""
  import threading

  from ltjax import files

  path = str(tmp_path / 'cache.npz')
  payloads = [bytes([i]) * (4 << 20) for i in range(4)]
  start, errors = threading.Barrier(len(payloads)), []

  def write(data):
    start.wait()
    try:
      for _ in range(3):
        files.write_atomic(path, data)
    except Exception as e:  # noqa: BLE001 (reported below)
      errors.append(e)

  threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert open(path, 'rb').read() in payloads
  assert os.listdir(tmp_path) == ['cache.npz']  # no temporary file left
