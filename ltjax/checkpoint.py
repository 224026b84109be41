"""Orbax checkpoints of a phase's train state, and finding an earlier phase's output.

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state) -> None:
  mgr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mgr: ocp.CheckpointManager, target):
  """Restores the newest checkpoint into the shapes and shardings of ``target``;
  returns ``target`` unchanged when there is none."""
  step = mgr.latest_step()
  if step is None:
    return target
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mgr.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_variables(directory: str) -> dict:
  """The model variables (``params``, ``batch_stats``) of the newest checkpoint in
  ``directory``, as saved, without needing the optimizer that wrote them."""
  mgr = manager(directory)
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(directory)
  state = mgr.restore(step, args=ocp.args.StandardRestore())
  mgr.close()
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
