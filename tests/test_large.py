"""The large-dataset configs end to end through ``python -m ltjax.main`` on TFDS's mock
data (``:mock``): the host pipeline, the ImageNet backbones, DiVE's teacher and student,
and SSD's MoCo phases with the host's two views."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def run(workdir, config, *extra):
  return subprocess.run([sys.executable, '-m', 'ltjax.main', '--config', str(REPO / config),
                         '--workdir', str(workdir), *extra], capture_output=True, text=True,
                        timeout=900, cwd=REPO)


def test_imagenet_lt_dive_on_mock_data(tmp_path):
  # The README's mock command with ResNet-10 for its ResNeXt-50 (whose compilation alone
  # takes a minute here; its layout is checked in tests/models/test_resnet.py), in bf16.
  p = run(tmp_path / 'w', 'configs/imagenet_lt.py:method=dive,mock', '--config.model.name=resnet10')
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'ImageNet-LT' in p.stdout and '| teacher |' in p.stdout and '| student |' in p.stdout
  r = json.load(open(tmp_path / 'w' / 'results.json'))
  assert (r['method'], r['dataset'], r['num_train'], r['num_test']) == ('dive', 'imagenet_lt', 64, 64)
  assert len(r['per_class']) == 1000 and set(r['phases']) == {'teacher', 'student'}
  config = json.load(open(tmp_path / 'w' / 'config.json'))
  assert config['model']['dtype'] == 'bfloat16'
  from configs import imagenet_lt

  default = imagenet_lt.get_config('method=dive,mock').model
  assert (default.name, default.dtype) == ('resnext50_32x4d', 'bfloat16')
  for phase in ('teacher', 'student'):
    # 64 images, batch 16: 4 steps; the checkpoint is the train state alone.
    assert '4' in os.listdir(tmp_path / 'w' / phase / 'checkpoints')
    assert not (tmp_path / 'w' / phase / 'checkpoints' / '4' / 'data').exists()
    lines = [json.loads(l) for l in open(tmp_path / 'w' / phase / 'metrics.jsonl')]
    assert lines[-1]['step'] == 4 and all(l['train/loss'] > 0 for l in lines if 'train/loss' in l)
    # The validation split (Kang et al.'s model selection, every epoch): its one epoch is the
    # best, kept at step 4, and the test evaluation of that checkpoint is the phase's own.
    assert [l['val/epoch'] for l in lines if 'val/top1' in l] == [1]
    best, own = json.load(open(tmp_path / 'w' / phase / 'results.json'))['best_val_selected'], r['phases'][phase]
    assert best['epoch'] == 1 and 0 <= best['val']['top1'] <= 100
    assert {k: best[k] for k in ('top1', 'top5')} == {k: own[k] for k in ('top1', 'top5')}
    assert os.listdir(tmp_path / 'w' / phase / 'best_val') == ['4']
  assert 'train/distill' in [k for l in lines for k in l]
  assert 'its best validation epoch 1 of 1' in p.stdout


def test_imagenet_lt_ssd_moco_on_mock_data(tmp_path):
  p = run(tmp_path / 'w', 'configs/imagenet_lt.py:method=ssd,mock', '--config.model.name=resnet10')
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.load(open(tmp_path / 'w' / 'results.json'))
  assert set(r['phases']) == {'selfsup', 'teacher', 'student (hard)', 'student (soft)', 'student_lws'}
  lines = [json.loads(l) for l in open(tmp_path / 'w' / 'selfsup' / 'metrics.jsonl')]
  assert all(l['train/selfsup'] > 0 for l in lines if 'train/loss' in l)  # InfoNCE on the host's two views
  assert any('val/top1' in l for l in lines)  # every phase chooses its epoch on the validation split
  assert r['best_val_selected']['epoch'] == 1
