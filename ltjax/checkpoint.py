"""Orbax checkpoints of a phase's train state, and finding an earlier phase's output.

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact. A run fed by the host
pipeline saves two items per step, ``state`` and ``data`` (each process's grain
iterator state, through grain's orbax handler); a run on an on-device dataset saves
the state alone (orbax's single default item).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import orbax.checkpoint as ocp


class DataState:
  """A grain iterator state captured when its batch was read (the live iterator has
  already read ahead), in the form grain's orbax handler saves and restores."""

  def __init__(self, state=None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:
    pass


@dataclasses.dataclass
class AllPolicies:
  """Saves when every one of orbax's ``policies`` says so (orbax has ``AnySavePolicy``
  only). They are asked in order and stop at the first no, so a policy that all
  processes must call together (``ContinuousCheckpointingPolicy`` broadcasts process 0's
  decision) goes after the ones that every process answers alike."""
  policies: Sequence[ocp.checkpoint_managers.SaveDecisionPolicy]

  def should_save(self, step, previous_steps, *, context) -> bool:
    return all(p.should_save(step, previous_steps, context=context) for p in self.policies)


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
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, data_state=None) -> None:
  """Saves ``state``; with ``data_state`` (a grain iterator state) both, as one step.
  The caller has decided (``mgr.should_save``, or the last step): no policy is asked."""
  if data_state is None:
    mgr.save(step, args=ocp.args.StandardSave(state), force=True)
  else:
    import grain

    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           data=grain.checkpoint.CheckpointSave(DataState(data_state))),
             force=True)


def _has_items(directory: str, step: int) -> bool:
  return os.path.isdir(os.path.join(directory, str(step), 'state'))


def restore_latest(mgr: ocp.CheckpointManager, target, with_data: bool = False):
  """Restores the newest checkpoint into the shapes and shardings of ``target``;
  returns ``target`` unchanged when there is none. With ``with_data``, returns
  ``(state, data_state)`` (``None`` without a checkpoint)."""
  step = mgr.latest_step()
  if step is None:
    return (target, None) if with_data else target
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  if not with_data:
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract))
  import grain

  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                  data=grain.checkpoint.CheckpointRestore(DataState())))
  return out['state'], out['data'].state


def restore_variables(directory: str) -> dict:
  """The model variables (``params``, ``batch_stats``) of the newest checkpoint in
  ``directory``, as saved, without needing the optimizer that wrote them."""
  mgr = manager(directory)
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(directory)
  if _has_items(os.path.abspath(directory), step):
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  else:
    state = mgr.restore(step, args=ocp.args.StandardRestore())
  mgr.close()
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
