"""End to end through ``python -m ltjax.main``: a smoke run, resume after SIGKILL,
skipping a finished phase, and the errors a user sees."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, real_tfds_dir, wait_for_checkpoint

pytestmark = pytest.mark.slow
EPOCHS = '--config.train.epochs=10'  # 70 steps: long enough to be killed mid-run
CKPT = '--config.run.checkpoint_min_seconds=0'  # a checkpoint every epoch
EVAL = '--config.run.eval_every_epochs=4'  # test-set evaluations at epochs 4 and 8 (and 10, the last)


def main_cmd(workdir, config='configs/digits_lt.py:smoke', *extra):
  return [sys.executable, '-m', 'ltjax.main', '--config', str(REPO / config),
          '--workdir', str(workdir), *extra]


def run(workdir, *extra, config='configs/digits_lt.py:smoke', timeout=600):
  return subprocess.run(main_cmd(workdir, config, *extra), capture_output=True, text=True,
                        timeout=timeout, cwd=REPO)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run') / 'digits'
  p = run(workdir, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0, p.stderr[-3000:]
  return workdir, p


def test_smoke_run_writes_results_and_prints_table(finished):
  workdir, p = finished
  r = json.load(open(workdir / 'results.json'))
  for key in ('top1', 'top5', 'many', 'medium', 'few', 'per_class', 'class_counts',
              'dataset', 'imbalance_factor'):
    assert key in r
  assert r['dataset'] == 'digits' and r['imbalance_factor'] == 20
  assert r['class_counts'] == [124, 88, 63, 45, 32, 23, 16, 12, 8, 6]
  assert len(r['per_class']) == 10 and r['top1'] > 30  # 10 classes: chance is 10
  # The default method, DiVE: a teacher phase, then the student, and the table of both.
  assert r['method'] == 'dive' and r['phase'] == 'student' and set(r['phases']) == {'teacher', 'student'}
  assert (workdir / 'teacher' / 'results.json').exists() and (workdir / 'student' / 'results.json').exists()
  assert '| run | overall | many | medium | few | top-5 | ECE |' in p.stdout
  assert 0 <= r['ece'] <= 100 and r['nll'] > 0 and len(r['reliability']['count']) == 15
  # The figures of the run, and their paths printed.
  for name in ('per_class.png', 'reliability.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG' and f'{workdir / name}' in p.stdout
  assert f'| student | {r["top1"]:.2f} |' in p.stdout
  assert f'| teacher | {r["phases"]["teacher"]["top1"]:.2f} |' in p.stdout
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'student'))
  lines = [json.loads(l) for l in open(workdir / 'student' / 'metrics.jsonl')]
  assert lines[-1]['step'] == 70 and 'train/loss' in lines[-1] and 'train/images_per_sec' in lines[-1]
  assert 'train/distill' in lines[-1] and 'train/teacher_accuracy' in lines[-1]
  # ltjax's number is the last epoch; the best test epoch is recorded beside it, labelled.
  tested = {l['test/epoch']: l['test/top1'] for l in lines if 'test/top1' in l}
  assert sorted(tested) == [4, 8]
  tested[10] = r['top1']
  best = r['best_test_selected']
  assert best['top1'] == max(tested.values()) and tested[best['epoch']] == best['top1']
  assert best['evaluated_epochs'] == 3 and 'test set' in best['selected_on']


def test_rerun_skips_finished_phases(finished):
  workdir, _ = finished
  before = [(workdir / ph / 'results.json').stat().st_mtime for ph in ('teacher', 'student')]
  p = run(workdir, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0
  assert '[teacher] finished earlier' in p.stdout and '[student] finished earlier' in p.stdout
  assert [(workdir / ph / 'results.json').stat().st_mtime for ph in ('teacher', 'student')] == before


def test_killed_run_resumes_to_the_same_result(finished, tmp_path):
  workdir, _ = finished
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(main_cmd(killed, 'configs/digits_lt.py:smoke', EPOCHS, CKPT, EVAL), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Killed in the second phase, the teacher done.
  wait_for_checkpoint(proc, killed / 'student' / 'checkpoints', 14)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / 'teacher' / 'results.json').exists()
  assert not (killed / 'student' / 'results.json').exists()
  p = run(killed, EPOCHS, CKPT, EVAL)
  assert p.returncode == 0, p.stderr[-3000:]
  resumed = [l for l in p.stderr.splitlines() + p.stdout.splitlines() if 'resumed from checkpoint' in l]
  assert resumed, 'the second run did not resume'
  step = int(resumed[0].split('at step ')[1].split()[0])
  assert 14 <= step < 70
  assert '[teacher] finished earlier' in p.stdout
  a = json.load(open(workdir / 'student' / 'results.json'))
  b = json.load(open(killed / 'student' / 'results.json'))
  assert a['per_class'] == b['per_class'] and a['top1'] == b['top1']
  assert a['best_test_selected'] == b['best_test_selected']
  last = lambda d: json.loads(open(d / 'student' / 'metrics.jsonl').read().splitlines()[-1])['train/loss']
  assert last(workdir) == pytest.approx(last(killed), rel=1e-6)


def test_workdir_with_other_config_is_refused(finished):
  workdir, _ = finished
  saved = (workdir / 'config.json').read_text()
  p = run(workdir, EPOCHS, CKPT, EVAL, '--config.seed=1')
  assert p.returncode == 1
  assert 'different config' in p.stderr and 'seed: 0 in the workdir, 1 now' in p.stderr
  assert 'new --workdir' in p.stderr
  assert (workdir / 'config.json').read_text() == saved


def test_unknown_config_field(tmp_path):
  p = run(tmp_path / 'w', '--config.train.lrr=0.1')
  assert p.returncode == 2 and 'Did you mean "lr"' in p.stderr and 'Traceback' not in p.stderr
  assert not (tmp_path / 'w').exists()


def test_unknown_config_argument(tmp_path):
  p = run(tmp_path / 'w', config='configs/digits_lt.py:smoke,imbalance=50')
  assert p.returncode != 0 and "unknown config argument 'imbalance'" in p.stderr


def test_imbalance_factor_below_one(tmp_path):
  p = run(tmp_path / 'w', config='configs/digits_lt.py:imb=0.05')
  assert p.returncode == 1 and 'IF = 20' in p.stderr and 'Traceback' not in p.stderr
  assert not (tmp_path / 'w').exists()


def test_dataset_not_prepared(tmp_path):
  p = run(tmp_path / 'w', f'--config.run.data_dir={tmp_path}', config='configs/cifar_lt.py:smoke')
  assert p.returncode == 1 and 'is not prepared' in p.stderr and 'download=True' in p.stderr
  assert not (tmp_path / 'w').exists()


def test_real_cifar10_lt_smoke(tmp_path):
  data_dir = real_tfds_dir()
  if data_dir is None:
    pytest.skip('real CIFAR-10 not found (set LTJAX_TFDS_DIR or put it in ../shared/tfds)')
  p = run(tmp_path / 'c10', f'--config.run.data_dir={data_dir}', config='configs/cifar_lt.py:smoke,method=dive')
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.load(open(tmp_path / 'c10' / 'results.json'))
  assert set(r['phases']) == {'teacher', 'student'}
  assert r['dataset'] == 'cifar10' and r['num_train'] == 12406 and r['num_test'] == 10000
  assert r['class_counts'][0] == 5000 and r['class_counts'][9] == 50
  assert r['few'] is None and r['top1'] > 12  # 1 tiny epoch: above chance (10)
