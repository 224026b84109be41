"""bench/torch_twin.py's schedule (the PyTorch twin's lr, written out independently)
against LDAM-DRW's adjust_learning_rate and against ltjax's own schedule for the CE row,
at the full length and at the shortened lengths the twin runs. No torch needed."""
import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

from configs import cifar_lt
from ltjax import train
from tests.test_configs import _ldam_reference_lr as ldam_adjust_learning_rate  # kaidic/LDAM-DRW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('torch_twin', os.path.join(ROOT, 'bench', 'torch_twin.py'))
twin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(twin)

SPE = 97  # CIFAR-10-LT IF 100: ceil(12406 / 128)


def test_full_length_is_ldam_drw_adjust_learning_rate():
  for epoch in range(200):
    for s in (0, SPE - 1):
      assert twin.lr_at_epoch(epoch, s, SPE, 200) == pytest.approx(ldam_adjust_learning_rate(epoch), rel=1e-12)


@pytest.mark.parametrize('epochs', [200, 50, 16])
def test_twin_schedule_is_ltjax_ce_row_schedule(epochs):
  """Every step's lr of ltjax's CE row (configs/cifar_lt.py, schedule=ldam) run for
  ``epochs``, against the twin's: equal except on the first step of a decay epoch, which
  optax's piecewise schedule still runs at the old lr (one step in 97)."""
  tc = cifar_lt.get_config('dataset=cifar10,imb=100,method=ce,schedule=ldam').train
  with tc.unlocked():
    tc.epochs = epochs
  sched = train.make_schedule(tc, SPE)
  steps = np.arange(epochs * SPE)
  ours = np.asarray([float(sched(s)) for s in steps])
  theirs = np.asarray([twin.lr_at_epoch(s // SPE, s % SPE, SPE, epochs) for s in steps])
  differ = steps[~np.isclose(ours, theirs, rtol=1e-5)]
  boundary_firsts = {round(b * epochs / 200) * SPE for b in (160, 180)}
  assert set(differ.tolist()) <= boundary_firsts, differ[:10]
  assert theirs[-1] == pytest.approx(1e-5) and ours[-1] == pytest.approx(1e-5, rel=1e-5)


def test_compare_reads_both_kinds_of_run(tmp_path, capsys):
  per_class = [90.0, 80.0, 0.0]
  (tmp_path / 'lt').mkdir()
  (tmp_path / 'lt' / 'results.json').write_text(json.dumps(
      {'epochs': 16, 'seed': 1, 'top1': 56.67, 'many': 85.0, 'medium': 0.0, 'per_class': per_class,
       'timing': {'train_seconds': 10.0}}))
  (tmp_path / 'torch.json').write_text(json.dumps(
      {'epochs': 16, 'seed': 0, 'wall_seconds': 5.0,
       'final': {'top1': 50.0, 'many': 75.0, 'medium': 0.0, 'per_class': [80.0, 70.0, 0.0]}}))
  twin.compare(argparse.Namespace(runs=[str(tmp_path / 'lt'), str(tmp_path / 'torch.json')]))
  lines = capsys.readouterr().out.splitlines()
  assert lines[2] == '| 16 | PyTorch twin | 0 | 50.00 | 75.00 | 0.00 | 80.0 70.0 0.0 |'
  assert lines[3] == '| 16 | ltjax | 1 | 56.67 | 85.00 | 0.00 | 90.0 80.0 0.0 |'
