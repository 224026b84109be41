"""Preemption: a SIGTERM (a cluster's preemption notice: spot and preemptible TPU VMs,
SLURM's ``--signal`` before a time limit) or a SIGINT (Ctrl-C) stops a run without losing
a step. Every process finishes the step it is on, all processes agree on one step, save
a checkpoint there and exit with ``errors.EXIT_PREEMPTED`` (75); the same command resumes
from that checkpoint and ends with the same results as a run never stopped.

- One process: a Python signal handler notes the signal; the loop asks ``reached(step)``
  after each step and stops at the next one.
- Several processes (``jax.distributed``): JAX's preemption service (its own SIGTERM
  handler and the coordination service) tells every process of a notice any one of them
  got, and ``multihost_utils.reached_preemption_sync_point(i)`` is true on all of them at
  the same call (the largest ``i`` any process had passed, plus one, and only for exactly
  that ``i``). ltjax numbers its calls itself, 1, 2, 3 ... over the life of the process
  (never a phase's step: that starts again at every phase and resume, and a notice before
  the loop of a resumed run, or between two phases, would set a point the loop's steps
  have already passed); orbax's CheckpointManager, which would call it with a phase's
  steps too, is kept from it (``checkpoint.manager``). A SIGINT is turned into a SIGTERM
  to this process, so Ctrl-C takes the same path.

A signal outside the training loop (loading data, evaluating, between phases) takes
effect at the next training step; a second Ctrl-C in a single process stops at once,
without the save.

``watch()`` installs the handlers for the duration of a run (``ltjax.main``); without it
(a library caller) ``reached`` is always false and signals keep their usual effect.
"""
from __future__ import annotations

import contextlib
import os
import signal

_state = {'active': False, 'signal': None}
_sync_calls = [0]  # reached()'s calls in this process (the ids of JAX's sync points): never reset


def _multiprocess() -> bool:
  import jax

  return jax.process_count() > 1


@contextlib.contextmanager
def watch():
  """Within it, SIGTERM and SIGINT ask the training loop to save and stop."""
  multi = _multiprocess()

  def note(signum, frame):
    if signum == signal.SIGINT and _state['signal'] == 'SIGINT':
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
    _state['signal'] = signal.Signals(signum).name

  def to_sigterm(signum, frame):
    _state['signal'] = signal.Signals(signum).name
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service listens for SIGTERM

  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, to_sigterm if multi else note)
  if not multi:
    signal.signal(signal.SIGTERM, note)
  _state.update(active=True, signal=None)
  try:
    yield
  finally:
    _state['active'] = False
    for s, handler in previous.items():
      if handler is not None and (s != signal.SIGTERM or not multi):
        signal.signal(s, handler)


def reached(step: int) -> bool:
  """Whether the run must save at ``step`` (the state's step after a training step) and
  stop. Every process calls it after every step, with the same steps, so the count of
  calls (the sync point's id) is the same on every process."""
  if not _state['active']:
    return False
  if _multiprocess():
    from jax.experimental import multihost_utils

    _sync_calls[0] += 1
    return multihost_utils.reached_preemption_sync_point(_sync_calls[0])
  return _state['signal'] is not None


def received() -> str | None:
  """The name of the signal this process got (``SIGTERM``), if any."""
  return _state['signal']
