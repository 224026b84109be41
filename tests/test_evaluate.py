import json
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


def np_ece(logits, labels, bins=15):
  """ECE written plainly: loop over the bins (lo, hi] of the top-1 softmax confidence."""
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  conf, pred = p.max(-1), p.argmax(-1)
  total = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    m = (conf > lo) & (conf <= hi)
    if m.any():
      total += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
  return 100 * total


def test_ece_and_nll_hand_case():
  # Two images at confidence 0.9 (softmax of (log 9, 0)), one right, one wrong; two at
  # 0.5, both right. Bin (13/15, 14/15]: acc 0.5, conf 0.9; bin (7/15, 8/15]: acc 1, conf 0.5.
  # ECE = 2/4 * 0.4 + 2/4 * 0.5 = 0.45.
  logits = np.array([[np.log(9), 0], [np.log(9), 0], [0, 0], [0, 0]])
  labels = np.array([0, 1, 0, 0])
  c = evaluate.calibration(logits, labels)
  np.testing.assert_allclose(c['ece'], 45.0, rtol=1e-9)
  np.testing.assert_allclose(c['nll'], (-np.log(0.9) - np.log(0.1) + 2 * np.log(2)) / 4, rtol=1e-9)
  rel = c['reliability']
  assert rel['count'][13] == 2 and rel['count'][7] == 2 and sum(rel['count']) == 4
  np.testing.assert_allclose([rel['accuracy'][13], rel['confidence'][13]], [0.5, 0.9])
  assert rel['accuracy'][0] is None  # empty bins


def test_ece_matches_numpy_and_is_stored_with_every_evaluation():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1000, 10)) * 3
  labels = rng.integers(0, 10, 1000)
  r = evaluate.classification_results(logits, labels, np.full(10, 50))
  np.testing.assert_allclose(r['ece'], np_ece(logits, labels), rtol=1e-9)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(r['nll'], -np.log(p[np.arange(1000), labels]).mean(), rtol=1e-9)
  # Perfectly calibrated-by-construction: confidence 1 and always right gives ECE 0.
  assert evaluate.calibration(np.eye(3) * 100, np.arange(3))['ece'] < 1e-9


def _fabricate(workdir, method, phases, seed, imb=20.0):
  import json
  for name, top1, few in phases:
    (workdir / name).mkdir(parents=True)
    r = {'method': method, 'phase': name, 'dataset': 'digits', 'imbalance_factor': imb, 'seed': seed,
         'top1': top1, 'many': 100.0, 'medium': 90.0, 'few': few, 'top5': 99.0, 'ece': 2.0 + seed,
         'per_class': [100.0, 90.0, few if few is not None else 80.0], 'class_counts': [200, 50, 5],
         'reliability': {'confidence': [None, 0.5, 0.95], 'accuracy': [None, 0.4, 0.9], 'count': [0, 10, 30]}}
    (workdir / name / 'results.json').write_text(json.dumps(r))
  (workdir / 'results.json').write_text(json.dumps({**r, 'phase_names': [n for n, _, _ in phases]}))


def test_report_table_mean_std_over_seeds_and_figures(tmp_path):
  from PIL import Image

  from ltjax import report

  _fabricate(tmp_path / 'ce0', 'ce', [('ce', 94.0, 86.0)], seed=0)
  _fabricate(tmp_path / 'ce1', 'ce', [('ce', 96.0, 90.0)], seed=1)
  _fabricate(tmp_path / 'crt', 'crt', [('ce', 93.0, 85.0), ('crt', 97.4, None)], seed=0)
  out = tmp_path / 'report'
  report.main([str(tmp_path / d) for d in ('ce0', 'ce1', 'crt')] + ['--out', str(out)])
  lines = (out / 'report.md').read_text().splitlines()
  assert lines[0] == '| method | dataset | IF | seed | overall | many | medium | few | top-5 | ECE |'
  # Two seeds: mean ± sample standard deviation (94, 96: 95 ± 1.41; 86, 90: 88 ± 2.83).
  assert lines[2] == ('| ce | digits | 20 | 0,1 | 95.00 ± 1.41 | 100.00 ± 0.00 | 90.00 ± 0.00 | '
                      '88.00 ± 2.83 | 99.00 ± 0.00 | 2.50 ± 0.71 |')
  assert lines[3].startswith('| crt/ce | digits | 20 | 0 | 93.00 | 100.00 |')
  assert lines[4] == '| crt | digits | 20 | 0 | 97.40 | 100.00 | 90.00 | - | 99.00 | 2.00 |'  # no few group
  for name in ('per_class.png', 'reliability.png'):
    path = out / name
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with Image.open(path) as im:
      w, h = im.size
      assert 400 <= w <= 3000 and 300 <= h <= 3000 and im.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))
    assert path.stat().st_size > 10_000
    assert f'({name})' in (out / 'report.md').read_text()
  with pytest.raises(SystemExit, match='no results.json'):
    report.main([str(tmp_path / 'missing')])
  with pytest.raises(SystemExit, match=f"{tmp_path / 'crt' / 'ce'} is the folder of phase 'ce' of a run: give "
                                       f"the run's workdir \\({tmp_path / 'crt'}\\)"):
    report.main([str(tmp_path / 'crt' / 'ce')])


def test_report_has_the_validation_choices_beside_the_last_epochs(tmp_path):
  import json

  from ltjax import report

  _fabricate(tmp_path / 'a0', 'crt', [('ce', 90.0, 80.0), ('crt', 92.0, 84.0)], seed=0)
  _fabricate(tmp_path / 'a1', 'crt', [('ce', 91.0, 82.0), ('crt', 93.0, 86.0)], seed=1)
  _fabricate(tmp_path / 'a2', 'crt', [('ce', 89.0, 81.0), ('crt', 90.0, 83.0)], seed=2)
  chosen = {('a0', 'ce'): (7, 88.0, 91.0, 81.0), ('a1', 'ce'): (9, 90.0, 93.0, 85.0),
            ('a0', 'crt'): (2, 89.0, 92.5, 84.0)}
  for (run, phase), (epoch, val, top1, few) in chosen.items():
    path = tmp_path / run / phase / 'results.json'
    r = json.loads(path.read_text())
    r['best_val_selected'] = {'epoch': epoch, 'val': {'top1': val}, 'top1': top1, 'many': 100.0, 'medium': 90.0,
                              'few': few, **({'note': 'chosen among epochs 5-10 only'} if run == 'a1' else {})}
    path.write_text(json.dumps(r))
  out = tmp_path / 'report'
  report.main([str(tmp_path / d) for d in ('a0', 'a1', 'a2')] + ['--out', str(out)])
  text = (out / 'report.md').read_text()
  lines = text.splitlines()
  assert lines[2].startswith('| crt/ce | digits | 20 | 0,1,2 | 90.00 ± 1.00 |')  # the last epochs, as before
  start = lines.index('| method | dataset | IF | seed | chosen | validation | overall | many | medium | few |')
  assert 'last epoch' in lines[start - 2]
  # Seeds 0 and 1 chose (seed 2 ran without validation); seed 1's choice was partial.
  assert lines[start + 2] == ('| crt/ce | digits | 20 | 0,1,2 (2 chose) | epoch 7, epoch 9 * | 89.00 ± 1.41 | '
                              '92.00 ± 1.41 | 100.00 ± 0.00 | 90.00 ± 0.00 | 83.00 ± 2.83 |')
  assert lines[start + 3] == ('| crt | digits | 20 | 0,1,2 (1 chose) | epoch 2 | 89.00 | 92.50 | 100.00 | '
                              '90.00 | 84.00 |')
  assert len(lines) > start + 4 and not lines[start + 4].startswith('|')
  assert report.best_val_table(report.group(report.rows_of(str(tmp_path / 'a2')))) == ''
  # A phase that started from an earlier phase's best validation epoch is not merged with
  # one that started from the last epoch.
  path = tmp_path / 'a2' / 'crt' / 'results.json'
  path.write_text(json.dumps({**json.loads(path.read_text()), 'handoff': {'init_from': {'phase': 'ce'}}}))
  assert [r['run'] for r in report.rows_of(str(tmp_path / 'a2'))] == ['crt/ce', 'crt [best-val handoff]']


def test_no_figure_without_per_class_results(tmp_path):
  from ltjax import plots
  assert plots.per_class_figure([('x', {'top1': 50.0})], str(tmp_path / 'a.png')) is None
  assert plots.reliability_figure([('x', {'top1': 50.0})], str(tmp_path / 'b.png')) is None
  assert not list(tmp_path.iterdir())


def test_best_test_epoch_counts_a_resumed_epoch_once(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [{'step': 10, 'train/loss': 1.0}, {'step': 20, 'test/epoch': 2, 'test/top1': 50.0},
           {'step': 40, 'test/epoch': 4, 'test/top1': 61.0},
           # resumed from epoch 2's checkpoint: epoch 4 evaluated again
           {'step': 40, 'test/epoch': 4, 'test/top1': 60.0}, {'step': 60, 'test/epoch': 6, 'test/top1': 55.0}]
  path.write_text(''.join(json.dumps(l) + '\n' for l in lines))
  best = evaluate.best_test_epoch(str(path), 58.0, 8)
  assert (best['epoch'], best['top1'], best['evaluated_epochs']) == (4, 60.0, 4)
  assert evaluate.best_test_epoch(str(path), 70.0, 8)['epoch'] == 8  # the last epoch can be the best
  assert evaluate.best_test_epoch(str(tmp_path / 'none.jsonl'), 10.0, 3) == {
      'epoch': 3, 'top1': 10.0, 'evaluated_epochs': 1, 'selected_on': best['selected_on']}


def test_report_keeps_runs_of_other_configs_apart(tmp_path, capsys):
  """Runs merge into one row only where their configs differ in the seed alone (and in
  where each seed took its backbone or teacher, and where pinned weights were read): a
  smoke run beside a full one, or an ablation, is a row of its own, labelled with the
  fields that differ; two runs of one config and seed are counted, with a warning; a run
  without config.json joins the one setup of its label, else is a row of its own."""
  import json

  from ltjax import report

  def config(seed, epochs=60, width=16, backbone='', pretrained='', sha=''):
    return {'method': 'ce', 'seed': seed, 'train': {'epochs': epochs, 'lr': 0.1},
            'model': {'width': width, 'pretrained': pretrained, 'pretrained_sha256': sha},
            'run': {'phases': '', 'data_dir': f'/data{seed}'}, 'stage2': {'backbone_dir': backbone},
            'ssd': {'alpha1': seed}}

  runs = {'s0': (90.0, config(0, backbone='/b0', pretrained='/w/a.pth', sha='ab' * 32)),
          's1': (92.0, config(1, backbone='/b1', pretrained='https://x/a.pth', sha='ab' * 32)),
          'smoke': (40.0, config(0, epochs=4, width=8, pretrained='/w/a.pth', sha='ab' * 32)),
          'again': (94.0, config(0, pretrained='/w/a.pth', sha='ab' * 32)),
          'scratch': (80.0, config(0)), 'other_weights': (85.0, config(0, pretrained='/w/b.pth')),
          'old': (96.0, None)}
  for name, (top1, cfg) in runs.items():
    _fabricate(tmp_path / name, 'ce', [('ce', top1, 80.0)], seed=cfg['seed'] if cfg else 2)
    if cfg:
      (tmp_path / name / 'config.json').write_text(json.dumps(cfg))
  out = tmp_path / 'report'
  report.main([str(tmp_path / d) for d in ('s0', 's1', 'smoke', 'again', 'old', 'scratch', 'other_weights')]
              + [str(tmp_path / 's1') + '/', '--out', str(out)])
  rows = [l for l in (out / 'report.md').read_text().splitlines() if l.startswith('| ce')]
  # 90, 92, 94: mean 92 ± 2 (the backbone and pinned weights' locations differ between seeds).
  assert rows[0].startswith('| ce [model.pretrained_sha256=abababab'), rows
  assert '| digits | 20 | 0,0,1 | 92.00 ± 2.00 |' in rows[0]
  assert rows[1].startswith('| ce [model.pretrained_sha256=abababab'), rows
  assert 'model.width=8' in rows[1] and '| 0 | 40.00 |' in rows[1]
  assert rows[2].startswith("| ce [model.pretrained='', model.pretrained_sha256='', ") and '| 80.00 |' in rows[2]
  assert rows[3].startswith("| ce [model.pretrained=/w/b.pth, model.pretrained_sha256='', ") and '| 85.00 |' in rows[3]
  assert rows[4].startswith('| ce [no config.json] | digits | 20 | 2 | 96.00 |')
  assert len(rows) == 5
  err = capsys.readouterr().err
  assert f'warning: {tmp_path / "again"}, {tmp_path / "s0"} are runs of one config with seed 0: row ' in err
  # Runs that differ in their seed alone are one row, without a label of fields; a run
  # without config.json joins it.
  report.main([str(tmp_path / d) for d in ('old', 's0', 's1')] + ['--out', str(out)])
  assert (out / 'report.md').read_text().splitlines()[2].startswith('| ce | digits | 20 | 0,1,2 | 92.67 ± 3.06 |')


def test_report_labels_that_would_read_alike_name_every_field():
  """Labels name up to 3 of the fields that set a row apart; two rows that differ only in
  a later field are labelled with all of theirs."""
  from ltjax import report

  def row(seed, **setup):
    return {'run': 'ce', 'dataset': 'digits', 'imbalance_factor': 20.0, 'seed': seed, 'workdir': f'w{seed}',
            'setup': setup, 'top1': 90.0 + seed}

  rows = [row(0, a=1, b=1, c=1, d=1), row(1, a=2, b=2, c=2, d=1), row(2, a=2, b=2, c=2, d=2), row(3, a=1, b=1, c=1, d=1)]
  assert [(g['run'], g['seeds']) for g in report.group(rows)] == [
      ('ce [a=1, b=1, c=1, ...]', [0, 3]), ('ce [a=2, b=2, c=2, d=1]', [1]), ('ce [a=2, b=2, c=2, d=2]', [2])]
