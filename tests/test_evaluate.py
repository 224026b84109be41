import numpy as np
import pytest

from ltjax import evaluate


def test_results_hand_case():
  # 3 classes: counts 200 (many), 50 (medium), 5 (few); 2 test images each.
  labels = np.array([0, 0, 1, 1, 2, 2])
  logits = np.array([
      [3, 2, 1], [3, 2, 1],      # class 0: both right
      [2, 3, 1], [3, 1, 2],      # class 1: one right; the wrong one has 1 at rank 3
      [1, 2, 3], [2, 3, 1],      # class 2: one right
  ], np.float32)
  r = evaluate.classification_results(logits, labels, [200, 50, 5])
  assert r['per_class'] == [100.0, 50.0, 50.0]
  assert r['many'] == 100.0 and r['medium'] == 50.0 and r['few'] == 50.0
  np.testing.assert_allclose(r['top1'], 100 * 4 / 6)
  assert r['top5'] == 100.0  # 3 classes: top-5 is top-3
  assert r['class_counts'] == [200, 50, 5]
  assert r['num_classes_per_group'] == {'many': 1, 'medium': 1, 'few': 1}


def test_empty_group_is_none_not_crash():
  r = evaluate.classification_results(np.eye(2), np.array([0, 1]), [500, 300])
  assert r['few'] is None and r['medium'] is None and r['many'] == 100.0
  assert '| - |' in evaluate.format_table([('x', r)])


def test_report_table_from_fabricated_runs(tmp_path):
  import json

  from ltjax import report

  def write(workdir, method, phases):
    for name, top1, few in phases:
      (workdir / name).mkdir(parents=True)
      r = {'method': method, 'phase': name, 'dataset': 'digits', 'imbalance_factor': 20.0, 'seed': 0,
           'top1': top1, 'many': 100.0, 'medium': 90.0, 'few': few, 'top5': 99.0}
      (workdir / name / 'results.json').write_text(json.dumps(r))
    (workdir / 'results.json').write_text(json.dumps({**r, 'phases': {n: {} for n, _, _ in phases}}))

  write(tmp_path / 'a', 'ce', [('ce', 94.0, 86.0)])
  write(tmp_path / 'b', 'crt', [('ce', 93.0, 85.0), ('crt', 97.4, None)])
  out = tmp_path / 'results.md'
  report.main([str(tmp_path / 'a'), str(tmp_path / 'b'), '--out', str(out)])
  lines = out.read_text().splitlines()
  assert lines[2] == '| ce | digits | 20 | 0 | 94.00 | 100.00 | 90.00 | 86.00 | 99.00 |'
  assert lines[3].startswith('| crt/ce | digits | 20 | 0 | 93.00 |')
  assert lines[4] == '| crt | digits | 20 | 0 | 97.40 | 100.00 | 90.00 | - | 99.00 |'
  with pytest.raises(SystemExit, match='no results.json'):
    report.main([str(tmp_path / 'missing')])
