"""Your own data: a folder of class subfolders (ltjax/data/folder.py). The digits written
as PNG and JPEG files of mixed sizes and modes (grayscale, RGB, RGBA), long-tailed;
every bad input with its message; a smoke DiVE trained on it end to end, and
``ltjax.predict`` on its test folder against the run's own evaluation."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import folder_lt
from conftest import REPO
from ltjax import config_lib, predict
from ltjax.data import registry
from ltjax.errors import DatasetNotPreparedError, MissingCheckpointError, PredictInputError

pytestmark = pytest.mark.slow  # writes, decodes and checks image folders: over 9 s in all
CLASSES = [f'digit_{c}' for c in range(5)]
TRAIN_COUNTS = [40, 24, 14, 8, 5]


def write_folder(root, counts, seed=0, offset=0):
  """The sklearn digits of classes 0-4 as image files: PNG (L, RGB, RGBA) and JPEG,
  upscaled to 12-40 pixels, ``counts[c]`` images in ``root/digit_c``."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  rng = np.random.default_rng(seed)
  for c, n in enumerate(counts):
    (root / CLASSES[c]).mkdir(parents=True, exist_ok=True)
    images = digits.images[digits.target == c][offset:offset + n]
    for i, image in enumerate(images):
      size = int(rng.integers(12, 41))
      pil = Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
      kind = i % 4
      if kind == 0:
        pil.save(root / CLASSES[c] / f'{i}.png')
      elif kind == 1:
        pil.convert('RGB').save(root / CLASSES[c] / f'{i}.JPG', quality=90)
      elif kind == 2:
        pil.convert('RGBA').save(root / CLASSES[c] / f'{i}.png')
      else:
        sub = root / CLASSES[c] / 'more'  # images in nested folders count too
        sub.mkdir(exist_ok=True)
        pil.convert('RGB').save(sub / f'{i}.jpeg')
  return root


def config(train, test='', extra=''):
  c = folder_lt.get_config(f'train={train},test={test},smoke' + (f',{extra}' if extra else ''))
  config_lib.validate(c)
  return c


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('folders')
  return (write_folder(root / 'train', TRAIN_COUNTS),
          write_folder(root / 'test', [6] * 5, seed=1, offset=60))


def test_folder_dataset_reads_classes_counts_and_images(folders):
  train, test = folders
  ds = registry.load(config(train, test))
  assert ds.class_names == CLASSES and list(ds.class_counts) == TRAIN_COUNTS
  assert ds.imbalance_factor == 8.0 and len(ds.test_labels) == 30 and ds.skipped_images == 0
  assert ds.title == train.parent.name  # .../<name>/train: the table says <name>
  for source in (ds.train_source, ds.test_source):
    for i in range(len(source)):
      ex = source[i]
      assert ex['image'].dtype == np.uint8 and ex['image'].ndim == 3 and ex['image'].shape[2] == 3
      assert 12 <= ex['image'].shape[0] <= 40
  # The host pipeline's evaluation view of it: centre crops of the configured size.
  batch = next(iter(ds.test_batches(16)))
  assert batch['images'].shape == (16, 32, 32, 3)


def test_held_out_test_split_is_balanced_seeded_and_said(folders):
  train, _ = folders
  ds = registry.load(config(train))
  # 0.2 of the smallest class (5) = 1 image of every class held out.
  assert list(np.bincount(ds.test_labels)) == [1] * 5 and list(ds.class_counts) == [n - 1 for n in TRAIN_COUNTS]
  assert '1 held-out training images a class, split_seed 0' in ds.title
  again = registry.load(config(train))
  assert again.test_source.files == ds.test_source.files
  other = registry.load(config(train, extra='seed=1'))
  assert other.test_source.files != ds.test_source.files
  assert not set(ds.test_source.files) & set(ds.train_source.files)


def test_imbalance_factor_draws_a_long_tail_from_a_balanced_folder(tmp_path):
  balanced = write_folder(tmp_path / 'balanced', [20] * 5)
  ds = registry.load(config(balanced, extra='imb=10,holdout=0.25'))
  # 15 left a class after 5 held out; the CIFAR-LT profile 15 ... 1.
  assert list(ds.class_counts) == [15, 8, 4, 2, 1]


def test_bad_folders_get_clear_errors(folders, tmp_path):
  train, test = folders
  with pytest.raises(DatasetNotPreparedError, match='does not exist'):
    registry.load(config(tmp_path / 'nowhere'))
  (tmp_path / 'flat').mkdir()
  Image.new('L', (8, 8)).save(tmp_path / 'flat' / 'a.png')
  with pytest.raises(DatasetNotPreparedError, match='holds no class subfolders'):
    registry.load(config(tmp_path / 'flat'))
  empty = write_folder(tmp_path / 'empty', [3, 3, 3, 3, 3])
  for f in (empty / 'digit_2').rglob('*'):
    if f.is_file():
      f.unlink()
  with pytest.raises(DatasetNotPreparedError, match=r'1 class folder\(s\) of .* hold no image \(digit_2\)'):
    registry.load(config(empty))
  fewer = write_folder(tmp_path / 'fewer', [3, 3, 3, 3])
  with pytest.raises(DatasetNotPreparedError, match=r"other classes .*only in training: \['digit_4'\]; only in test: \[\]"):
    registry.load(config(train, fewer))


def test_undecodable_image_is_named_or_skipped(tmp_path):
  root = write_folder(tmp_path / 'broken', [6, 6, 6, 6, 6])
  bad = root / 'digit_3' / 'broken.jpg'
  bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  with pytest.raises(DatasetNotPreparedError, match=f'1 training image\\(s\\) cannot be decoded \\(first: {bad}\\)'):
    registry.load(config(root))
  c = config(root)
  c.data.skip_bad_images = True
  ds = registry.load(c)
  assert ds.skipped_images == 1 and str(bad) not in ds.train_source.files + ds.test_source.files
  # Through the command: one line naming the file, exit 1, no workdir left behind.
  workdir = tmp_path / 'w'
  p = subprocess.run([sys.executable, '-m', 'ltjax.main', '--config',
                      f'{REPO}/configs/folder_lt.py:train={root},method=dive,smoke', '--workdir', str(workdir)],
                     capture_output=True, text=True, timeout=300, cwd=REPO)
  assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-3000:]
  assert f'ltjax: error: 1 training image(s) cannot be decoded (first: {bad})' in p.stderr
  assert 'skip_bad_images=True' in p.stderr and not workdir.exists()


def test_validation_folder_is_read_checked_and_switches_on_epoch_choice(folders, tmp_path):
  train, test = folders
  val = write_folder(tmp_path / 'val', [3] * 5, seed=2, offset=80)
  c = config(train, test, extra=f'val={val}')
  assert c.data.val_dir == str(val) and c.run.val_every_epochs == 1
  ds = registry.load(c)
  assert list(np.bincount(ds.val_labels)) == [3] * 5 and len(ds.val_records) == 15
  assert not set(ds.val_source.files) & (set(ds.train_source.files) | set(ds.test_source.files))
  batch = next(iter(ds.val_batches(16)))
  assert batch['images'].shape == (16, 32, 32, 3) and batch['images'][15].max() == 0  # one padding row
  assert registry.load(config(train, test)).val_labels is None  # none without val=
  c.run.val_every_epochs = 0  # validation switched off: the folder is not even read
  assert registry.load(c).val_labels is None
  fewer = write_folder(tmp_path / 'fewer', [3, 3, 3, 3])
  with pytest.raises(DatasetNotPreparedError, match=r"validation folder .* other classes .*only in validation: \[\]"):
    registry.load(config(train, test, extra=f'val={fewer}'))
  # Choosing an epoch needs a validation split: an image folder without val= has none.
  bare = folder_lt.get_config(f'train={train},smoke')
  bare.run.val_every_epochs = 1
  with pytest.raises(config_lib.ConfigError, match=r'image folder has no validation split .*folder with data.val_dir'):
    config_lib.validate(bare)


@pytest.fixture(scope='module')
def trained(folders, tmp_path_factory):
  """A smoke DiVE trained on the image folders by the README's command: (workdir, stdout)."""
  train, test = folders
  workdir = tmp_path_factory.mktemp('trained') / 'w'
  p = subprocess.run([sys.executable, '-m', 'ltjax.main', '--config',
                      f'{REPO}/configs/folder_lt.py:train={train},test={test},method=dive,smoke',
                      '--workdir', str(workdir)], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  return workdir, p.stdout


def test_smoke_dive_trains_on_an_image_folder(trained):
  workdir, stdout = trained
  r = json.load(open(workdir / 'results.json'))
  assert r['dataset'] == 'folder' and r['phase'] == 'student' and len(r['per_class']) == 5
  assert r['class_counts'] == TRAIN_COUNTS and r['num_test'] == 30
  assert '| student |' in stdout
  recorded = json.load(open(workdir / 'dataset.json'))
  assert recorded['class_names'] == CLASSES and recorded['class_counts'] == TRAIN_COUNTS


def _accuracy_and_nll(rows):
  """Per-class top-1 (%) and the mean NLL of the true class (its folder's name), from
  predictions that list every class."""
  labels = np.array([CLASSES.index(Path(r['path']).parent.name if Path(r['path']).parent.name != 'more'
                                   else Path(r['path']).parent.parent.name) for r in rows])
  top1 = np.array([CLASSES.index(r['top'][0]['class']) for r in rows])
  prob = np.array([next(t['probability'] for t in r['top'] if t['class'] == CLASSES[l]) for r, l in zip(rows, labels)])
  return [100 * float((top1[labels == c] == c).mean()) for c in range(len(CLASSES))], float(-np.log(prob).mean())


def test_predict_on_a_copied_workdir_matches_the_runs_own_evaluation(trained, folders, tmp_path):
  """``python -m ltjax.predict`` on the test folder, from a copy of the workdir (the
  training folder out of reach): the student's per-class accuracy and NLL on those images
  are the ones the run evaluated."""
  workdir, _ = trained
  _, test = folders
  copy = tmp_path / 'elsewhere'
  shutil.copytree(workdir, copy)
  out = tmp_path / 'predictions.json'
  # Trained on 8 CPU devices, predicting on 1 (a GPU node's run on a laptop).
  p = subprocess.run([sys.executable, '-m', 'ltjax.predict', '--workdir', str(copy), '--top_k', '5',
                      '--cpu_devices', '1', '--out', str(out), str(test)], capture_output=True, text=True,
                     timeout=600, cwd=tmp_path)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"predicting 30 image(s) with phase 'student' of dive ({copy / 'student'})" in p.stderr
  doc = json.loads(out.read_text())
  assert doc['phase'] == 'student' and doc['class_names'] == CLASSES and len(doc['predictions']) == 30
  first = doc['predictions'][0]
  assert f'{first["path"]}: {first["top"][0]["class"]} {first["top"][0]["probability"]:.3f}' in p.stdout
  want = json.load(open(workdir / 'student' / 'results.json'))
  per_class, nll = _accuracy_and_nll(doc['predictions'])
  assert per_class == want['per_class']
  assert nll == pytest.approx(want['nll'], rel=1e-5)  # a sum over 1 device rather than 8: not bit for bit
  # The teacher too, as CSV, its top-1 from the run's evaluation of the teacher.
  teacher = predict.run(str(copy), [str(test)], phase='teacher', k=5, out=str(tmp_path / 't.csv'), quiet=True)
  per_class, nll = _accuracy_and_nll(teacher)
  assert per_class == json.load(open(workdir / 'teacher' / 'results.json'))['per_class']
  assert (tmp_path / 't.csv').read_text().count('\n') == 31
  # A dataset.json that no longer fits the checkpoint (a class removed by hand): named, not a traceback.
  record = json.load(open(copy / 'dataset.json'))
  record.update(class_names=CLASSES[:4], class_counts=TRAIN_COUNTS[:4])
  (copy / 'dataset.json').write_text(json.dumps(record))
  with pytest.raises(MissingCheckpointError, match='does not fit the model .*4 classes'):
    predict.Predictor(str(copy))


def test_predict_names_a_bad_image_or_skips_and_lists_it(trained, folders, tmp_path):
  workdir, _ = trained
  _, test = folders
  images = tmp_path / 'images'
  shutil.copytree(test / 'digit_1', images)
  bad = images / 'broken.png'
  bad.write_bytes(b'\x89PNG not really')
  with pytest.raises(PredictInputError, match=f'{bad} cannot be decoded as an image.*--skip_bad_images'):
    predict.run(str(workdir), [str(images)], quiet=True)
  out = tmp_path / 'p.csv'
  assert not out.exists()
  rows = predict.run(str(workdir), [str(images)], k=2, out=str(out), skip_bad=True, quiet=True)
  assert [r['path'] for r in rows if r.get('error')] == [str(bad)]
  assert len(rows) == 7 and all(len(r['top']) == 2 for r in rows if not r.get('error'))
  assert f'{bad},,,,,cannot be decoded' in out.read_text()
  with pytest.raises(PredictInputError, match='none of the 1 image'):
    predict.run(str(workdir), [str(bad)], skip_bad=True, quiet=True)
