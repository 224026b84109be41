"""Orbax checkpoints of a phase's train state, and finding an earlier phase's output.

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact. A checkpoint is the
train state alone (orbax's single default item): whichever feed a run has, its batches
depend on the seed and the step only. (Host-pipeline checkpoints of earlier ltjax also
hold each process's grain iterator state, item ``data``; they restore, that item unread.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ltjax import parallel
from ltjax.errors import MissingCheckpointError, WorkdirWriteError, described


@dataclasses.dataclass
class AllPolicies:
  """Saves when every one of orbax's ``policies`` says so (orbax has ``AnySavePolicy``
  only). They are asked in order and stop at the first no, so a policy that all
  processes must call together (``ContinuousCheckpointingPolicy`` broadcasts process 0's
  decision) goes after the ones that every process answers alike."""
  policies: Sequence[ocp.checkpoint_managers.SaveDecisionPolicy]

  def should_save(self, step, previous_steps, *, context) -> bool:
    return all(p.should_save(step, previous_steps, context=context) for p in self.policies)


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, kept from JAX's preemption sync points: ltjax decides when a
  preemption stops the run (``preemption.reached``, which numbers the sync points over
  the life of the process); orbax would pass them a phase's steps from ``should_save``
  and ``save`` and move the point the processes agree on."""

  def reached_preemption(self, step: int) -> bool:
    return False


def manager(directory: str, keep: int = 2, every_steps: int = 1, min_seconds: float = 0.0) -> ocp.CheckpointManager:
  """An orbax manager whose ``should_save(step)`` is true every ``every_steps`` steps
  (``FixedIntervalPolicy``) and, with ``min_seconds``, no sooner than that after the last
  checkpoint and not while one is being written (``ContinuousCheckpointingPolicy``: decided
  on process 0 and broadcast, so that every process saves the same steps)."""
  policy = ocp.checkpoint_managers.FixedIntervalPolicy(every_steps)
  if min_seconds > 0:
    policy = AllPolicies([policy, ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
        minimum_interval_secs=min_seconds)])
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, save_decision_policy=policy)
  return _Manager(os.path.abspath(directory), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves ``state``. The caller has decided (``mgr.should_save``, or the last step): no
  policy is asked. Orbax writes in the background; a failed write (a full disk) is a
  ``WorkdirWriteError`` here (the one before, still writing, or this one) or at
  ``finish``, and the finished checkpoints stay as they were."""
  finish(mgr)  # an earlier background write that failed is reported as such
  args = ocp.args.StandardSave(state)
  directory = str(mgr.directory)
  if any(_has_items(directory, s) for s in mgr.all_steps()):
    args = ocp.args.Composite(state=args)  # a workdir of earlier ltjax: orbax keeps its item layout
  try:
    mgr.save(step, args=args, force=True)
  except Exception as e:
    _raise_write_error(mgr, e)


def finish(mgr: ocp.CheckpointManager) -> None:
  """Waits for the background writes of ``mgr`` (``save``'s errors surface here too)."""
  try:
    mgr.wait_until_finished()
  except Exception as e:
    _raise_write_error(mgr, e)


_OS_ERRORS = ('No space left on device', 'Disk quota exceeded', 'Read-only file system', 'Permission denied')


def _raise_write_error(mgr, error):
  mapped = _write_error(mgr, error)
  if mapped is error:
    raise error
  raise mapped from error


def _write_error(mgr, error) -> Exception:
  """A failed write (``OSError``: a full disk, a quota, permissions) as a
  ``WorkdirWriteError`` that says what is intact and how to go on; any other error
  (a bug, orbax refusing a step) as it is."""
  chain, e = [], error
  while e is not None and len(chain) < 10:  # what raised it (raise ... from), not what it interrupted
    chain.append(e)
    e = e.__cause__
  text = str(error)
  if not any(isinstance(e, OSError) for e in chain) and not any(m in text for m in _OS_ERRORS):
    return error
  directory = str(mgr.directory)
  why = next((e for e in _OS_ERRORS if e in text), described(error))
  kept = mgr.all_steps()  # finished checkpoints only: orbax writes into a temporary folder
  before = (f'the checkpoint of step {max(kept)} is intact' if kept else
            'no checkpoint of this phase was finished before it')
  return WorkdirWriteError(
      f'could not write a checkpoint in {directory} ({why}); {before}. Fix: free space on that '
      f'disk (or fix its permissions), then rerun the same command to resume.')


class BestKept:
  """The model variables of the best validation epoch so far, in ``directory`` (a phase's
  ``best_val/``): orbax keeps the one checkpoint with the highest ``top1`` of its metrics
  (``BestN``), and the metrics (the validation results and the epoch) are saved with it, so a
  resumed run knows the best so far. Only a strictly better epoch is saved (``improves``):
  of equal ones the earliest stays, as in Kang et al.'s ``if acc > best_acc``. The trainer
  writes an epoch's main checkpoint before its copy here, so that the kept best is never
  newer than the step a run resumes from (``drop_after`` for when it is). A kept step whose
  metrics cannot be read is set aside (``<step>.damaged``, as damaged main checkpoints
  are), with a warning: the choice starts again from the epochs this run validates."""

  def __init__(self, directory: str):
    top1 = lambda metrics: metrics['top1']
    policy = ocp.checkpoint_managers.BestN(get_metric_fn=top1, n=1, keep_checkpoints_without_metrics=False)
    # best_fn too: orbax writes a step's metrics only where it ranks by them.
    options = ocp.CheckpointManagerOptions(create=True, best_fn=top1, best_mode='max', preservation_policy=policy)
    directory = os.path.abspath(directory)
    _set_aside_unreadable_metrics(directory)  # orbax reads every step's metrics when it opens the folder
    self.mgr = _Manager(directory, options=options)
    self._best = self._read()

  def _read(self) -> dict | None:
    step = self.mgr.best_step()
    metrics = None if step is None else self.mgr.metrics(step)
    return None if metrics is None else {**metrics, 'step': int(step)}

  def best(self) -> dict | None:
    """The kept epoch's metrics (with its ``step``), or None before the first."""
    return None if self._best is None else dict(self._best)

  def improves(self, step: int, top1: float) -> bool:
    """Whether an evaluation at ``step`` with ``top1`` beats the kept one (a resumed run
    evaluates the step it resumed at again: kept already, not again)."""
    best = self._best
    return best is None or (top1 > best['top1'] and step != best['step'])

  def drop_after(self, step: int) -> list[int]:
    """Deletes kept checkpoints newer than ``step`` (a run restarting from an earlier
    checkpoint, or from scratch, would otherwise be compared with a model of another
    trajectory); returns their steps. Every process calls it."""
    late = [s for s in self.mgr.all_steps() if s > step]
    for s in late:
      self.mgr.delete(s)
    if late:
      self._best = self._read()
    return late

  def offer(self, step: int, variables, metrics: dict) -> bool:
    """Saves ``variables`` at ``step`` with ``metrics`` (``top1`` and what else is to be
    kept) when ``improves``; says whether it did. Every process calls it with the same
    metrics."""
    if not self.improves(step, metrics['top1']):
      return False
    finish(self.mgr)
    try:
      self.mgr.save(step, args=ocp.args.StandardSave(variables), metrics=metrics, force=True)
    except Exception as e:
      _raise_write_error(self.mgr, e)
    self._best = {**metrics, 'step': int(step)}
    return True

  def close(self) -> None:
    finish(self.mgr)
    self.mgr.close()


def _rename_damaged(src: str) -> str:
  """Renames the folder ``src`` to ``src.damaged`` (or ``.damaged1``, ... where taken):
  kept, never deleted, and no longer a step that orbax lists; returns the new name."""
  dst, n = f'{src}.damaged', 1
  while os.path.exists(dst):
    dst, n = f'{src}.damaged{n}', n + 1
  os.rename(src, dst)
  return dst


def _set_aside_unreadable_metrics(directory: str) -> list[str]:
  """Renames the step folders of ``directory`` (a ``BestKept`` folder) whose saved metrics
  any process cannot read to ``<step>.damaged`` and says so; returns them. Every process
  reads the steps process 0 lists, all learn which any could not read (one that only some
  could read would make orbax's managers, which read them all, differ), and every process
  waits for process 0's renames (whether or not one is damaged, so that none waits alone)."""
  names = sorted(d for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  damaged = []
  for step in parallel.of_process_0([int(d) for d in names]):
    src = os.path.join(directory, str(step))
    why = None
    try:
      with open(os.path.join(src, 'metrics', 'metrics')) as f:
        json.load(f)['top1']
    except Exception as e:  # missing, cut short, not JSON, no top1
      why = f'{type(e).__name__}: {str(e)[:120]}'
    failed = parallel.failed_processes(why is not None)
    if failed:
      damaged.append((src, why or _elsewhere(failed)))
      if why and not parallel.is_main():
        print(f'ltjax: warning: process {jax.process_index()} cannot read the best validation metrics of {src} '
              f'({why}); process 0 sets it aside', file=sys.stderr, flush=True)

  def rename():
    for src, why in damaged:
      dst = _rename_damaged(src)
      print(f'ltjax: warning: the best validation checkpoint {src} cannot be read ({why}); kept as {dst}. '
            f'The best validation epoch is chosen again from the epochs this run validates.',
            file=sys.stderr, flush=True)

  # Every process waits for it, and stops too when a rename fails (a read-only folder).
  parallel.on_main(rename, 'a damaged best validation checkpoint could not be set aside')
  return [src for src, _ in damaged]


def _has_items(directory: str, step: int) -> bool:
  return os.path.isdir(os.path.join(directory, str(step), 'state'))


def _read(directory: str, step: int, abstract):
  """This process's read of checkpoint ``step`` into ``abstract``'s shapes and shardings.
  Orbax's handler alone, not its ``Checkpointer``: the checkpointer waits at a barrier
  after reading, which a process whose read raised never reaches, so that the others would
  wait there until JAX's heartbeat timeout (``restore_latest`` agrees instead)."""
  # Written by ltjax before 2026-11-29 with the host pipeline: the state (item 'state')
  # beside grain's iterator state ('data'), which batches that depend on the step alone
  # no longer need; since then, orbax's single default item.
  item = 'state' if _has_items(directory, step) else 'default'
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.restore(epath.Path(directory) / str(step) / item, args=ocp.args.StandardRestore(abstract))
  finally:
    handler.close()


def _elsewhere(failed: list[int]) -> str:
  """What a process that read a checkpoint says of the processes that could not."""
  return (f'{parallel.processes_named(failed)} cannot read it (its own message says why) though process '
          f'{jax.process_index()} can')


def _read_locally(read) -> tuple[object, str | None]:
  """``read()``, tried twice (a transient error of a network file system need not set a
  checkpoint aside): its result and None, or None and why it failed."""
  for _ in range(2):
    try:
      return read(), None
    except Exception as e:  # orbax and tensorstore raise many types for a damaged file
      why = described(e)
  return None, why


def restore_latest(mgr: ocp.CheckpointManager, target):
  """Restores the newest readable checkpoint into the shapes and shardings of ``target``;
  returns ``target`` unchanged when there is none.

  A checkpoint that cannot be read (a file missing or truncated by a crash of the
  storage or a full disk) is moved aside to ``<step>.damaged`` (kept, never deleted) with
  a warning, and the newest earlier one is used; when none is readable, the error names
  them and what to delete. Every process of a multi-process run calls it: a checkpoint
  that one process cannot read (its own error, a transient one too) is set aside by all,
  and all restore the same step."""
  directory = str(mgr.directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  damaged, read_here = [], True
  # Every process tries the same steps in the same order (process 0's list).
  for step in parallel.of_process_0(sorted(mgr.all_steps(), reverse=True)):
    out, why = _read_locally(lambda: _read(directory, step, abstract))
    failed = parallel.failed_processes(why is not None)
    if not failed:
      if damaged:
        _set_aside(mgr, directory, damaged, resumed=step)
      return out
    if why is not None and not parallel.is_main():  # process 0 says the rest
      print(f'ltjax: warning: process {jax.process_index()} cannot read checkpoint '
            f'{os.path.join(directory, str(step))} ({why}).', file=sys.stderr, flush=True)
    read_here = read_here and why is None
    damaged.append((step, why or _elsewhere(failed)))
  if damaged:
    listing = '\n'.join(f'  {os.path.join(directory, str(s))}: {why}' for s, why in damaged)
    fix = (f'check that every process reaches {directory} (the messages of the others say what '
           f'they met) and rerun' if read_here else
           f'delete {directory} to train this phase again from its start (or restore the files '
           f'from a backup)')
    raise MissingCheckpointError(f'no checkpoint in {directory} can be read:\n{listing}\nFix: {fix}.')
  return target


def _set_aside(mgr, directory: str, damaged, resumed: int) -> None:
  """Renames damaged step folders (``6`` -> ``6.damaged``: orbax no longer lists them, so
  the run saves that step again) and says so; process 0 renames, every process reloads
  (all call it: ``restore_latest`` agrees on ``damaged``)."""

  def rename():
    for step, why in damaged:
      src = os.path.join(directory, str(step))
      dst = _rename_damaged(src)
      print(f'ltjax: warning: checkpoint {src} cannot be read ({why}); kept as {dst}. Resuming '
            f'from step {resumed}, the newest readable checkpoint.', file=sys.stderr, flush=True)

  # Every process waits for it, and stops too when a rename fails (a read-only folder).
  parallel.on_main(rename, 'a damaged checkpoint could not be set aside')
  mgr.reload()


def saved_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in ``directory`` (orbax's step folders; its
  temporary and set-aside ``.damaged`` folders are not steps), sorted; [] where none."""
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def restore_variables(directory: str) -> dict:
  """The model variables (``params``, ``batch_stats``) of the newest checkpoint in
  ``directory``, as saved, without needing the optimizer that wrote them: host NumPy
  arrays, whatever devices wrote them (a teacher or a model for ``ltjax.predict`` trained
  on 8 GPUs loads on one CPU; the caller places them). No checkpoint, or one that cannot
  be read, is a ``MissingCheckpointError`` naming it. Every process of a multi-process run
  calls it (they agree on the step read and on whether all could read it)."""
  directory = os.path.abspath(directory)
  steps = saved_steps(directory)
  newest = parallel.of_process_0(steps[-1:])  # every process reads the same one
  if not newest:
    results = os.path.join(os.path.dirname(directory), 'results.json')
    if os.path.exists(results):  # finished, then its checkpoints were removed: a rerun would skip it
      raise MissingCheckpointError(
          f'{directory} holds no checkpoint, though its phase finished ({results}): its checkpoints '
          f'were removed. Fix: delete {results} and rerun the command of that run (the phase trains '
          f'again), or point at the checkpoints/ folder of another finished phase.')
    raise MissingCheckpointError(
        f'{directory} holds no checkpoint. Fix: finish training that phase (rerun its command to '
        f'resume it), or point at the checkpoints/ folder of a finished phase.')
  step = newest[0]
  path = epath.Path(directory) / str(step) / ('state' if _has_items(directory, step) else 'default')

  def read():
    handler = ocp.StandardCheckpointHandler()  # no barrier: a process whose read fails must still agree
    try:
      # NumPy targets: restored on the host, not on the saved devices and shardings.
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), handler.metadata(path))
      return handler.restore(path, args=ocp.args.StandardRestore(target))
    finally:
      handler.close()

  state, why = _read_locally(read)
  failed = parallel.failed_processes(why is not None)
  if failed:
    where = os.path.join(directory, str(step))
    if why is None:
      raise MissingCheckpointError(
          f'the checkpoint {where} cannot be read: {_elsewhere(failed)}. Fix: check that every '
          f'process reaches {directory} (the messages of the others say what they met) and rerun.')
    raise MissingCheckpointError(
        f'the checkpoint {where} cannot be read ({why}): it is damaged or incomplete. Fix: train that '
        f'phase again (delete its folder and rerun the recipe) or point at another copy of it.')
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}


def shapes(tree) -> dict:
  """``{path: shape}`` of every leaf of a variable tree (arrays or ``jax.eval_shape``'s)."""
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def model_shapes(model, sample) -> dict:
  """``shapes`` of the variables ``model`` creates for inputs like ``sample`` (nothing
  computed): what a checkpoint must hold to be loaded into it."""
  return shapes(jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False)))
