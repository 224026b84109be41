"""Test setup: 8 simulated CPU devices (before JAX starts), paths to real data."""
import os
import pathlib
import time

import jax

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def real_tfds_dir():
  """Prepared TFDS data (real CIFAR-10): $LTJAX_TFDS_DIR, else ../shared/tfds beside the repo."""
  path = os.environ.get('LTJAX_TFDS_DIR') or str(REPO.parent / 'shared' / 'tfds')
  return path if os.path.isdir(os.path.join(path, 'cifar10')) else None


@pytest.fixture(scope='session')
def cifar10_dir():
  path = real_tfds_dir()
  if path is None:
    pytest.skip('real CIFAR-10 not found (set LTJAX_TFDS_DIR or put it in ../shared/tfds)')
  return path


def wait_for_checkpoint(proc, directory, min_step: int, timeout: float = 400) -> None:
  """Waits until ``directory`` holds a checkpoint of step >= ``min_step`` while ``proc``
  runs (to kill it there); fails if the run ends first."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if directory.exists() and any(d.isdigit() and int(d) >= min_step for d in os.listdir(directory)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be killed'


def wait_for_logged_step(proc, metrics_path, min_step: int, timeout: float = 400) -> None:
  """Waits until ``metrics_path`` (a phase's metrics.jsonl) has logged a training step >=
  ``min_step`` while ``proc`` runs (to signal it there); fails if the run ends first."""
  import json

  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if metrics_path.exists():
      steps = [json.loads(l).get('step', 0) for l in metrics_path.read_text().splitlines() if l.strip()]
      if steps and max(steps) >= min_step:
        break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be signalled'


class Crash(Exception):
  """The process 'dies' (raised by ``crash_after_save``)."""


def crash_after_save(monkeypatch, at_step: int):
  """Makes ``checkpoint.save`` raise ``Crash`` right after the checkpoint of ``at_step`` is
  written (a process killed between a checkpoint and what follows it); returns the
  function that puts the real ``save`` back (``monkeypatch.undo`` would undo the test's
  other patches too)."""
  from ltjax import checkpoint

  real_save = checkpoint.save

  def save_then_crash(mgr, step, state):
    real_save(mgr, step, state)
    if step == at_step:
      mgr.wait_until_finished()
      raise Crash

  monkeypatch.setattr(checkpoint, 'save', save_then_crash)
  return lambda: monkeypatch.setattr(checkpoint, 'save', real_save)


def crash_and_resume(monkeypatch, at_step: int, run):
  """``run()`` (a training command) crashes right after its checkpoint of ``at_step``
  (``crash_after_save``), then runs again, resuming: returns what the second run returns."""
  import pytest

  restore = crash_after_save(monkeypatch, at_step)
  with pytest.raises(Crash):
    run()
  restore()
  return run()
