"""Metric logs of a phase: TensorBoard event files (tensorboardX, no TensorFlow)
and one JSON object a line in ``metrics.jsonl``."""
from __future__ import annotations

import json
import math
import os

import jax


class MetricLogger:
  def __init__(self, directory: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      os.makedirs(directory, exist_ok=True)
      self._tb = SummaryWriter(logdir=directory)
      self._jsonl = open(os.path.join(directory, 'metrics.jsonl'), 'a')

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
