"""Choosing an epoch on a validation split (``run.val_every_epochs``), as Kang et al.'s code
does: the best validation epoch's checkpoint is kept (``checkpoint.BestKept``) and its test
results land in ``best_val_selected``, beside the last epoch's. Checked on the embedded
digits with the test split standing in as the validation split, so that the chosen epoch and
its numbers must be those that the test-set evaluations of every epoch logged."""
import dataclasses
import json
import os
import time

import jax
import numpy as np
import pytest

from conftest import crash_and_resume
from configs import digits_lt
from ltjax import checkpoint, config_lib, evaluate, pipeline, predict, preemption, train
from ltjax.data import registry
from ltjax.data.arrays import ArrayDataset
from ltjax.errors import ConfigError, MissingCheckpointError, Preempted, WorkdirConflictError

EPOCHS = 6


@pytest.fixture
def val_is_test(monkeypatch):
  """The digits dataset with a validation split: its test images. Returns the numbers of the
  ``val_batches`` calls so far (each validation reads the validation split, not the test
  split) and a set of call numbers that raise instead (a crash in that validation)."""
  spec = registry.DATASETS['digits']

  def loader(spec_, config):
    ds = spec.loader(spec_, config)
    return dataclasses.replace(ds, val_images=ds.test_images, val_labels=ds.test_labels)

  monkeypatch.setitem(registry.DATASETS, 'digits', dataclasses.replace(spec, loader=loader, val_split='test'))
  calls, real = [], ArrayDataset.val_batches

  def val_batches(self, *args, **kwargs):
    calls.append(len(calls) + 1)
    if calls[-1] in fail_at:
      raise RuntimeError('the machine went away')
    return real(self, *args, **kwargs)

  fail_at = set()
  monkeypatch.setattr(ArrayDataset, 'val_batches', val_batches)
  return calls, fail_at


def _config(handoff='last'):
  config = digits_lt.get_config('smoke,method=dive')
  config.handoff = handoff
  config.train.epochs = EPOCHS
  config.train.lr_boundaries = ()  # a constant lr after the warm-up: the best epoch may be any
  config.run.val_every_epochs = 1
  config.run.eval_every_epochs = 1  # the test set too, every epoch: what the choice must match
  config.run.checkpoint_min_seconds = 0.0
  return config


def _logged(path, split):
  with open(path) as f:
    lines = [json.loads(l) for l in f]
  return {int(l[f'{split}/epoch']): l[f'{split}/top1'] for l in lines if f'{split}/top1' in l}


def _check(workdir, results):
  for name in ('teacher', 'student'):
    r = results[name]
    best = r['best_val_selected']
    logged_val = _logged(os.path.join(workdir, name, 'metrics.jsonl'), 'val')
    tested = _logged(os.path.join(workdir, name, 'metrics.jsonl'), 'test')
    tested[EPOCHS] = r['top1']  # the last epoch's test evaluation is the phase's result
    assert sorted(logged_val) == list(range(1, EPOCHS + 1))
    # The earliest epoch of the highest validation top-1 (Kang et al.: ``acc > best_acc``) ...
    top = max(logged_val.values())
    assert best['epoch'] == min(e for e, v in logged_val.items() if v == top)
    assert best['val']['top1'] == top
    # ... the epoch best_test_epoch chooses on the same images, and its test numbers come
    # from the kept checkpoint: exactly what that epoch's own evaluation logged.
    assert best['epoch'] == r['best_test_selected']['epoch']
    assert best['top1'] == tested[best['epoch']] == r['best_test_selected']['top1']
    kept = os.path.join(workdir, name, train.BEST_VAL)
    steps = sorted(int(d) for d in os.listdir(kept) if d.isdigit())
    assert steps == [best['epoch'] * 7]  # 7 steps an epoch; orbax keeps the best one only
    assert 'validation split' in best['selected_on']


@pytest.mark.slow  # about 30 s
def test_best_validation_epoch_is_kept_and_tested(tmp_path, val_is_test):
  workdir = str(tmp_path / 'w')
  results = pipeline.run(_config('best_val'), workdir)
  _check(workdir, results)
  # The student distilled the teacher's best validation epoch (Kang et al.'s stage 2).
  assert results['student']['handoff']['teacher'] == {
      'phase': 'teacher', 'checkpoint': train.BEST_VAL, 'epoch': results['teacher']['best_val_selected']['epoch'],
      'epochs': EPOCHS, 'val_top1': results['teacher']['best_val_selected']['val']['top1']}
  # Interrupted mid-phase (a preemption in the student's fourth epoch), then resumed: the
  # kept best and its numbers are the uninterrupted run's.
  again = str(tmp_path / 'again')
  real, hits = preemption.reached, []

  def reached(step):  # the student's step 23 (the teacher's comes first)
    hits.extend([step] if step == 7 * 3 + 2 else [])
    return len(hits) == 2

  try:
    preemption.reached = reached
    with pytest.raises(Preempted):
      pipeline.run(_config('best_val'), again)  # the teacher finishes, the student stops
  finally:
    preemption.reached = real
  assert not os.path.exists(os.path.join(again, 'student', 'results.json'))
  kept = checkpoint.BestKept(os.path.join(again, 'student', train.BEST_VAL))
  assert 1 <= kept.best()['epoch'] <= 3
  kept.close()
  resumed = pipeline.run(_config('best_val'), again)
  _check(again, resumed)
  for name in ('teacher', 'student'):
    assert resumed[name]['best_val_selected'] == results[name]['best_val_selected']

  # Killed between an epoch's checkpoint and its validation (the student's third epoch): the
  # rerun resumes at that checkpoint and validates that epoch before it trains on.
  crashed = tmp_path / 'crashed'
  calls, fail_at = val_is_test
  fail_at.add(len(calls) + EPOCHS + 3)
  with pytest.raises(RuntimeError, match='went away'):
    pipeline.run(_config('best_val'), str(crashed))
  for _ in range(100):  # orbax finishes that checkpoint in the background
    if os.path.exists(crashed / 'student' / 'checkpoints' / '21' / 'default'):
      break
    time.sleep(0.1)
  assert sorted(int(d) for d in os.listdir(crashed / 'student' / 'checkpoints') if d.isdigit())[-1] == 21
  fail_at.clear()
  resumed = pipeline.run(_config('best_val'), str(crashed))
  _check(str(crashed), resumed)
  assert resumed['student']['best_val_selected'] == results['student']['best_val_selected']


@pytest.mark.slow  # about 20 s
def test_validation_switched_on_at_a_resume_says_which_epochs_it_chose_among(tmp_path, val_is_test, capsys):
  config = _config()
  config.run.val_every_epochs = 0
  real, hits = preemption.reached, []

  def reached(step):  # the student's step 23, in its fourth epoch
    hits.extend([step] if step == 23 else [])
    return len(hits) == 2

  try:
    preemption.reached = reached
    with pytest.raises(Preempted):
      pipeline.run(config, str(tmp_path / 'w'))
  finally:
    preemption.reached = real
  r = pipeline.run(_config(), str(tmp_path / 'w'))
  assert 'best_val_selected' not in r['teacher']  # finished before: not validated
  best = r['student']['best_val_selected']
  assert best['validated_from_epoch'] == 4 and best['epoch'] >= 4
  assert best['note'].startswith('chosen among epochs 4-6 only')
  assert 'warning: [student] best validation epoch chosen among epochs 4-6 only' in capsys.readouterr().out


@pytest.mark.slow  # about 25 s
def test_validation_off_for_part_of_a_run_says_which_epochs_it_missed(tmp_path, val_is_test, capsys):
  """Validated in epochs 1-2, resumed without validation for epochs 3-4 (stopped in epoch
  5, whose checkpoint is the stop's), resumed again with it: epochs 3 and 4 were never
  validated, and the choice says so."""
  workdir = str(tmp_path / 'w')

  def run_until(config, stop_step):
    real = preemption.reached
    try:
      preemption.reached = lambda step: step == stop_step
      with pytest.raises(Preempted):
        pipeline.run(config, workdir)
    finally:
      preemption.reached = real

  config = _config()
  config.run.phases = 'teacher'
  run_until(config, 7 * 2 + 2)  # in epoch 3: epochs 1 and 2 validated
  config.run.val_every_epochs = 0
  run_until(config, 7 * 4 + 2)  # in epoch 5
  r = pipeline.run(_config(), workdir)['teacher']  # resumes at step 30, in epoch 5
  best = r['best_val_selected']
  assert sorted(evaluate.logged_top1(os.path.join(workdir, 'teacher', 'metrics.jsonl'), 'val')) == [1, 2, 5, 6]
  assert best['validated_from_epoch'] == 1
  assert best['note'] == ('chosen among fewer epochs than asked: epochs 3, 4 were not validated '
                          '(run.val_every_epochs was off, or another value, for part of the run)')
  assert f'warning: [teacher] best validation epoch {best["note"]}' in capsys.readouterr().out
  assert json.loads((tmp_path / 'w' / 'teacher' / 'results.json').read_text())['best_val_selected']['note'] == best['note']


def test_best_kept_keeps_the_earliest_of_the_best(tmp_path, capfd):
  kept = checkpoint.BestKept(str(tmp_path / 'best'))
  variables = lambda v: {'params': {'w': np.full(3, v, np.float32)}, 'batch_stats': {}}
  assert kept.best() is None
  offers = [(10, 50.0, True), (20, 70.0, True), (30, 70.0, False), (40, 60.0, False), (20, 70.0, False),
            (50, 72.5, True)]
  for step, top1, saved in offers:
    assert kept.offer(step, variables(step), {'top1': top1, 'epoch': step // 10}) is saved
    if step == 40:
      assert kept.best() == {'top1': 70.0, 'epoch': 2, 'step': 20}
  kept.close()
  again = checkpoint.BestKept(str(tmp_path / 'best'))  # a resumed run reads it back
  assert again.best() == {'top1': 72.5, 'epoch': 5, 'step': 50}
  assert not again.improves(50, 80.0)  # the step it holds, validated again after a resume
  assert again.drop_after(50) == [] and again.best()['step'] == 50
  again.close()
  assert sorted(os.listdir(tmp_path / 'best')) == ['50']
  np.testing.assert_array_equal(checkpoint.restore_variables(str(tmp_path / 'best'))['params']['w'], 50.0)
  # A run restarting before the kept step (its checkpoints deleted, or set aside as damaged):
  # the kept model is of another trajectory, and goes.
  again = checkpoint.BestKept(str(tmp_path / 'best'))
  assert again.drop_after(40) == [50] and again.best() is None and again.improves(10, 0.0)
  again.offer(30, variables(30), {'top1': 60.0, 'epoch': 3})
  again.close()
  assert sorted(os.listdir(tmp_path / 'best')) == ['30']
  # Its metrics cut short (a copy of the workdir that stopped half-way): set aside, said,
  # and the choice starts again.
  (tmp_path / 'best' / '30' / 'metrics' / 'metrics').write_text('{"top1": 60.0, "ep')
  again = checkpoint.BestKept(str(tmp_path / 'best'))
  assert again.best() is None and again.improves(40, 0.0)
  again.close()
  assert sorted(os.listdir(tmp_path / 'best')) == ['30.damaged']
  assert f'the best validation checkpoint {tmp_path / "best" / "30"} cannot be read (JSONDecodeError' in \
      capfd.readouterr().err


@pytest.mark.parametrize('name', ['digits', 'cifar10', 'inat18'])
def test_a_dataset_without_a_validation_split_is_refused(name):
  config = digits_lt.get_config('smoke')
  config.data.name = name
  config.run.val_every_epochs = 1
  with pytest.raises(ConfigError, match=r'run.val_every_epochs=1 .* no validation split .*imagenet_lt.*'
                                        r'set run.val_every_epochs=0'):
    config_lib.validate(config)


@pytest.mark.slow  # about 20 s
def test_tau_norm_chooses_tau_on_the_validation_split(tmp_path, val_is_test):
  """Kang et al.'s tau_norm.py sweeps tau on the validation split's features: with the test
  split standing in for it, the choice is the test sweep's best, with its numbers."""
  config = digits_lt.get_config('smoke,method=tau_norm')
  config.run.val_every_epochs = 2
  r = pipeline.run(config, str(tmp_path / 'w'))['tau_norm']
  assert r['tau_val_sweep'] == r['tau_sweep']
  top = max(row['top1'] for row in r['tau_sweep'])
  first = next(row for row in r['tau_sweep'] if row['top1'] == top)
  best = r['best_val_selected']
  assert best['tau'] == first['tau'] and best['val']['top1'] == best['top1'] == top
  others = ('top5', 'many', 'medium', 'few')
  assert {k: best[k] for k in others} == {k: first[k] for k in others}
  assert 'epoch' not in best and 'validation split' in r['tau_note']
  calls, _ = val_is_test
  assert len(calls) == 2 + 9  # the CE phase's epochs 2 and 4, then the tau sweep
  # The CE phase before it chose its epoch too: epochs 2 and 4 (the last) evaluated.
  ce = json.loads((tmp_path / 'w' / 'ce' / 'results.json').read_text())
  assert ce['best_val_selected']['epoch'] in (2, 4)
  with open(tmp_path / 'w' / 'ce' / 'metrics.jsonl') as f:
    assert [json.loads(l)['val/epoch'] for l in f if 'val/epoch' in l] == [2, 4]


@pytest.mark.slow  # about 40 s
@pytest.mark.parametrize('handoff', ['best_val', 'last'])
def test_a_later_phase_starts_from_the_epoch_that_handoff_names(tmp_path, val_is_test, handoff, capsys):
  """Kang et al.'s stage 2 loads stage 1's best validation epoch (``state_dict_best``):
  ``handoff='best_val'``. tau-norm at tau 0 with the bias kept is the CE model itself, so
  its sweep's first row must be the test result of the CE epoch handed on."""
  config = digits_lt.get_config('smoke,method=tau_norm')
  config.handoff = handoff
  config.train.epochs = 4  # a constant lr after the warm-up: here the third epoch is the best
  config.train.lr_boundaries = ()
  config.run.val_every_epochs = 1
  config.loss.tau_norm_bias = True
  r = pipeline.run(config, str(tmp_path / 'w'))
  ce, tau0 = r['ce'], r['tau_norm']['tau_sweep'][0]
  best = ce['best_val_selected']
  assert tau0['tau'] == 0.0
  assert best['top1'] > ce['top1'], 'here the best epoch is better than the last: the two can be told apart'
  taken = best if handoff == 'best_val' else ce
  assert {k: tau0[k] for k in ('top1', 'many', 'medium', 'few')} == {k: taken[k] for k in ('top1', 'many', 'medium', 'few')}
  out = capsys.readouterr().out
  if handoff == 'best_val':
    assert r['tau_norm']['handoff'] == {'init_from': {
        'phase': 'ce', 'checkpoint': train.BEST_VAL, 'epoch': best['epoch'], 'epochs': 4,
        'val_top1': best['val']['top1']}}
    assert f"[tau_norm] takes phase 'ce' at its best validation epoch {best['epoch']} of 4" in out
    # ltjax.predict --checkpoint=best_val: the model that best_val_selected reports.
    chosen = predict.Predictor(str(tmp_path / 'w'), 'ce', which='best_val')
    assert chosen.epoch == best['epoch']
    kept = checkpoint.restore_variables(str(tmp_path / 'w' / 'ce' / train.BEST_VAL))
    last = checkpoint.restore_variables(str(tmp_path / 'w' / 'ce' / 'checkpoints'))
    for got, want in zip(jax.tree.leaves(chosen.variables), jax.tree.leaves(kept)):
      np.testing.assert_array_equal(np.asarray(got), want)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(last)))
    with pytest.raises(MissingCheckpointError, match=r"phase 'tau_norm' .* kept no best validation epoch .* "
                                                     r'leave out --checkpoint=best_val'):
      predict.Predictor(str(tmp_path / 'w'), 'tau_norm', which='best_val')  # it trained no epoch
    # A best_val/ that the results do not report (validation switched off before the end).
    path = tmp_path / 'w' / 'ce' / 'results.json'
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != 'best_val_selected'}))
    with pytest.raises(MissingCheckpointError, match=r"phase 'ce' .* reports no best validation epoch"):
      predict.Predictor(str(tmp_path / 'w'), 'ce', which='best_val')
  else:
    assert 'handoff' not in r['tau_norm'] and 'takes phase' not in out


def test_handoff_best_val_needs_validation_and_keeps_its_epochs(tmp_path):
  config = digits_lt.get_config('smoke,method=crt')
  config.handoff = 'best_val'
  with pytest.raises(ConfigError, match=r"handoff='best_val' with run.val_every_epochs=0: .* set "
                                        r"run.val_every_epochs .* or handoff='last'"):
    config_lib.validate(config)
  # Which epochs are validated picks what later phases train on: a workdir keeps it.
  config = digits_lt.get_config('smoke,method=crt')
  config.run.val_every_epochs = 1
  workdir = str(tmp_path / 'w')
  for handoff in ('last', 'best_val'):
    config.handoff = handoff
    os.makedirs(os.path.join(workdir, 'ce', 'checkpoints', '7'), exist_ok=True)  # a phase that saved
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json())
    other = config.copy_and_resolve_references()
    other.run.val_every_epochs = 2
    other.data.val_dir = '/elsewhere/val'  # validation images: they too pick what later phases take
    if handoff == 'last':
      assert pipeline.check_workdir(other, workdir)
    else:
      with pytest.raises(WorkdirConflictError, match=r"data.val_dir: '' in the workdir, '/elsewhere/val' now\n"
                                                     r'  run.val_every_epochs: 1 in the workdir, 2 now'):
        pipeline.check_workdir(other, workdir)


def test_handoff_best_val_from_another_run_takes_its_best_val_folder(tmp_path, capsys):
  """``stage2.backbone_dir`` (and the teacher paths) under ``handoff='best_val'``: a phase
  folder or workdir gives its ``best_val/``; one that kept none is refused by name, with its
  ``checkpoints/`` as the way to take its last epoch; an orbax folder is taken as it is."""
  phase = tmp_path / 'run' / 'ce'
  (phase / 'checkpoints' / '28').mkdir(parents=True)
  (phase / 'results.json').write_text('{}')
  with pytest.raises(MissingCheckpointError, match=r"handoff='best_val' takes the 'ce' phase at its best "
                                                   r'validation epoch, but .*ce kept none .* point '
                                                   r'--config.stage2.backbone_dir at .*ce/checkpoints'):
    pipeline._checkpoints_at(str(tmp_path / 'run'), 'ce', 'stage2.backbone_dir', 'best_val')
  assert pipeline._checkpoints_at(str(phase / 'checkpoints'), 'ce', 'stage2.backbone_dir', 'best_val') == \
      str(phase / 'checkpoints')
  assert 'is a checkpoint folder: its newest checkpoint is taken as it is, not a best validation epoch' in \
      capsys.readouterr().out
  (phase / train.BEST_VAL / '14').mkdir(parents=True)
  for path in (tmp_path / 'run', phase):
    assert pipeline._checkpoints_at(str(path), 'ce', 'stage2.backbone_dir', 'best_val') == str(phase / train.BEST_VAL)
    assert pipeline._checkpoints_at(str(path), 'ce', 'stage2.backbone_dir') == str(phase / 'checkpoints')
  assert pipeline._checkpoints_at(str(phase / train.BEST_VAL), 'ce', 'stage2.backbone_dir', 'best_val') == \
      str(phase / train.BEST_VAL)
  assert 'warning' not in capsys.readouterr().out


@pytest.mark.slow
def test_a_crash_after_a_validation_checkpoint_keeps_that_steps_training_record(tmp_path, monkeypatch, val_is_test):
  """Checkpoints every 3 epochs, validation every epoch: epoch 1's new best is saved by
  the validation; a crash right after it resumes at step 7, whose training record was
  written before that save."""
  def config():
    c = digits_lt.get_config('smoke,method=crt')
    c.train.epochs = 3
    c.run.phases = 'ce'
    c.run.val_every_epochs = 1
    c.run.checkpoint_every_epochs = 3
    c.run.checkpoint_min_seconds = 0
    c.run.log_every_steps = 1
    return c

  crash_and_resume(monkeypatch, 7, lambda: pipeline.run(config(), str(tmp_path / 'w')))
  with open(tmp_path / 'w' / 'ce' / 'metrics.jsonl') as f:
    rows = [json.loads(l) for l in f]
  assert [r['step'] for r in rows if 'train/loss' in r] == list(range(1, 22))
  assert [r['val/epoch'] for r in rows if 'val/top1' in r] == [1, 2, 3]
