"""Metric logs of a phase: TensorBoard event files (tensorboardX, no TensorFlow)
and one JSON object a line in ``metrics.jsonl``."""
from __future__ import annotations

import json
import math
import os

import jax


class MetricLogger:
  """``start``: the step the phase starts (or resumes) from. What ``metrics.jsonl``
  holds of a run's steps after it (logged before a kill, then trained again from the
  checkpoint at ``start``; or a phase trained again from 0) is dropped, and its records
  at ``start`` whose prefix is in ``repeated`` (the evaluations the resumed run repeats
  there: ``val/``, ``test/``), so that the file is one record
  per logged step of the run that the checkpoints hold, and what is read from it (the
  test-selected best epoch) comes from that run alone."""

  def __init__(self, directory: str, enabled: bool | None = None, start: int = 0, repeated: tuple = ()):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      os.makedirs(directory, exist_ok=True)
      path = os.path.join(directory, 'metrics.jsonl')
      _keep_before(path, start, repeated)
      self._tb = SummaryWriter(logdir=directory)
      self._jsonl = open(path, 'a')

  def write(self, step: int, metrics: dict, prefix: str = '') -> None:
    if not self.enabled:
      return
    scalars = {f'{prefix}{k}': float(v) for k, v in metrics.items()}
    for k, v in scalars.items():
      if math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _keep_before(path: str, start: int, repeated: tuple = ()) -> None:
  """Rewrites ``path`` (atomically) with its records of steps before ``start`` and, at
  ``start``, those of no prefix in ``repeated``; a line cut by a kill is dropped."""
  if not os.path.exists(path):
    return
  from ltjax import files

  kept, changed = [], False
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
        step = int(record['step'])
      except (ValueError, KeyError, TypeError):
        changed = True
        continue
      repeated_here = step == start and bool(repeated) and any(k.startswith(repeated) for k in record)
      if step < start or (step == start and not repeated_here):
        kept.append(line if line.endswith('\n') else line + '\n')
      else:
        changed = True
  if changed:
    files.write_atomic(path, ''.join(kept))
