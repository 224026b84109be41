"""ltjax.predict's parts without a trained run: the top-k against NumPy, the CSV and JSON
it writes, how an image file becomes a model input (as the dataset's own test images),
what a workdir records, and the errors for bad paths and unfinished workdirs. The end to
end check (train on an image folder, predict, compare with the run's own evaluation) is
in tests/data/test_folder.py."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from ltjax import predict
from ltjax.data import saved
from ltjax.data.arrays import ArrayDataset
from ltjax.data.digits import load_digits_lt
from ltjax.errors import MissingCheckpointError, PredictInputError, WorkdirConflictError, WorkdirWriteError


def test_top_k_is_the_softmax_in_order():
  logits = np.array([[2.0, 0.5, 1.0], [-1.0, 3.0, 3.0]])
  out = predict.top_k(logits, ['a', 'b', 'c'], 2)
  p0 = np.exp([2.0, 0.5, 1.0]) / np.exp([2.0, 0.5, 1.0]).sum()
  assert [c for c, _ in out[0]] == ['a', 'c'] and np.allclose([p for _, p in out[0]], p0[[0, 2]])
  # Equal probabilities: the lower class index first (a stable order).
  assert [c for c, _ in out[1]] == ['b', 'c'] and np.isclose(out[1][0][1], out[1][1][1])
  assert np.isclose(sum(p for _, p in predict.top_k(logits, ['a', 'b', 'c'], 3)[1]), 1.0)


def test_output_files_csv_and_json():
  rows = [{'path': 'x.png', 'top': [{'class': 'cat', 'probability': 0.75}, {'class': 'dog', 'probability': 0.25}]},
          {'path': 'bad.jpg', 'top': [], 'error': 'cannot be decoded'}]
  meta = {'top_k': 2, 'phase': 'student'}
  table = list(csv.reader(io.StringIO(predict.format_output('p.csv', rows, meta))))
  assert table[0] == ['path', 'class_1', 'probability_1', 'class_2', 'probability_2', 'error']
  assert table[1] == ['x.png', 'cat', '0.75', 'dog', '0.25', '']
  assert table[2] == ['bad.jpg', '', '', '', '', 'cannot be decoded']
  doc = json.loads(predict.format_output('p.JSON', rows, meta))
  assert doc['phase'] == 'student' and doc['predictions'] == rows
  with pytest.raises(PredictInputError, match=r'--out=p.txt: write .csv or .json'):
    predict.format_output('p.txt', rows, meta)


def test_a_digit_file_becomes_the_same_input_as_the_dataset_image(tmp_path):
  """Arrays datasets: the whole image resized, scaled back to 0..pixel_scale."""
  ds = load_digits_lt(20.0)
  record = saved.describe(ds)
  assert record['preprocessing'] == {'kind': 'resize', 'height': 8, 'width': 8, 'channels': 1}
  assert record['class_counts'] == [int(c) for c in ds.class_counts] and record['pixel_scale'] == 16.0
  saved.write(str(tmp_path), ds)
  loaded = saved.SavedDataset.read(str(tmp_path / saved.FILE))
  assert loaded.example_images(3).shape == (3, 8, 8, 1) and loaded.class_names == ds.class_names
  for i in range(20):  # written as 8-bit PNG (0..255) and read back: the exact 0..16 values
    image = ds.test_images[i]
    path = tmp_path / f'{i}.png'
    Image.fromarray(np.round(image[..., 0] * 255.0 / 16).astype(np.uint8)).convert('RGB').save(path)
    np.testing.assert_array_equal(loaded.prepare(str(path)), image)
  # A larger image is resized whole to 8 x 8.
  Image.new('RGB', (40, 30), (255, 255, 255)).save(tmp_path / 'big.jpg')
  np.testing.assert_array_equal(loaded.prepare(str(tmp_path / 'big.jpg')), np.full((8, 8, 1), 16, np.uint8))


def test_a_photo_becomes_the_input_an_image_folder_evaluates(tmp_path):
  """Host datasets: a file prepared from dataset.json alone equals the row the dataset's
  own evaluation batches hold for it (decode, resize, centre crop), for images of several
  sizes and modes."""
  from configs import folder_lt
  from ltjax.data import registry

  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('test', 2)):
    for c in ('a', 'b'):
      (tmp_path / split / c).mkdir(parents=True)
      for i in range(n):
        h, w = rng.integers(20, 60, 2)
        mode = ('RGB', 'L', 'RGBA')[i % 3]
        shape = (h, w) if mode == 'L' else (h, w, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, np.uint8), mode).save(tmp_path / split / c / f'{i}.png')
  ds = registry.load(folder_lt.get_config(f'train={tmp_path / "train"},test={tmp_path / "test"},smoke'))
  saved.write(str(tmp_path), ds)
  loaded = saved.SavedDataset.read(str(tmp_path / saved.FILE))
  assert loaded.preprocessing == {'kind': 'centre_crop', 'resize': 36, 'crop': 32}
  assert loaded.num_classes == 2 and loaded.example_images(1).shape == (1, 32, 32, 3)
  evaluated = next(iter(ds.test_batches(8)))['images']
  for i, path in enumerate(ds.test_source.files):
    np.testing.assert_array_equal(loaded.prepare(path), evaluated[i])


def test_a_workdir_records_its_dataset_once(tmp_path):
  ds = ArrayDataset(name='n', train_images=np.zeros((3, 4, 4, 3), np.uint8), train_labels=np.array([0, 0, 1]),
                    test_images=np.zeros((1, 4, 4, 3), np.uint8), test_labels=np.array([1]), num_classes=2,
                    imbalance_factor=2.0, class_names=['x', 'y'])
  saved.write(str(tmp_path), ds)
  path = tmp_path / saved.FILE
  stamp = path.stat().st_mtime_ns
  saved.write(str(tmp_path), ds)  # the same record: left as it was
  assert path.stat().st_mtime_ns == stamp
  assert json.loads(path.read_text())['class_counts'] == [2, 1]
  # Other data under the same config (an image folder that changed): refused, file kept.
  ds.train_labels = np.array([0, 1, 1])
  with pytest.raises(WorkdirConflictError, match=r'trained on other data than this run loads \(class_counts differ'):
    saved.write(str(tmp_path), ds)
  assert json.loads(path.read_text())['class_counts'] == [2, 1]


def test_bad_paths_and_workdirs_get_clear_errors(tmp_path):
  with pytest.raises(PredictInputError, match='no image given'):
    predict.find_images([])
  with pytest.raises(PredictInputError, match=f'{tmp_path}/nowhere does not exist'):
    predict.find_images([str(tmp_path / 'nowhere')])
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'notes.txt').write_text('no image')
  with pytest.raises(PredictInputError, match='holds no image'):
    predict.find_images([str(tmp_path / 'empty')])
  Image.new('L', (5, 5)).save(tmp_path / 'empty' / 'sub' / 'b.png')
  Image.new('L', (5, 5)).save(tmp_path / 'empty' / 'a.PNG')
  assert predict.find_images([str(tmp_path / 'empty')]) == [str(tmp_path / 'empty' / 'a.PNG'),
                                                           str(tmp_path / 'empty' / 'sub' / 'b.png')]
  with pytest.raises(MissingCheckpointError, match='not the workdir of a training run'):
    predict.Predictor(str(tmp_path))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(MissingCheckpointError, match='has no dataset.json.*rerun the training command'):
    predict.Predictor(str(tmp_path))


def test_a_workdir_without_a_finished_phase_is_refused(tmp_path):
  from configs import digits_lt

  (tmp_path / 'config.json').write_text(digits_lt.get_config().to_json())
  saved.write(str(tmp_path), load_digits_lt(20.0))
  with pytest.raises(MissingCheckpointError, match=r"holds no finished run of any phase of 'dive' "
                                                   r"\(teacher, student\)\. Fix: let the training finish"):
    predict.Predictor(str(tmp_path))
  (tmp_path / 'teacher').mkdir()
  (tmp_path / 'teacher' / 'results.json').write_text('{}')
  with pytest.raises(MissingCheckpointError, match="no finished run of phase 'student'; finished: teacher"):
    predict.Predictor(str(tmp_path), 'student')
  with pytest.raises(MissingCheckpointError, match=r"--phase=ce is not a phase of 'dive': \['teacher', 'student'\]"):
    predict.Predictor(str(tmp_path), 'ce')


def test_a_workdir_from_before_newer_config_fields_still_builds_its_phases(tmp_path):
  """A config.json written before fields were added (config_lib.LEGACY_VALUES /
  LEGACY_UNREAD) reads with the values that ltjax then had, so its phases are rebuilt."""
  from configs import digits_lt
  from ltjax import config_lib

  recorded = json.loads(digits_lt.get_config('method=ssd').to_json())
  for key in [*config_lib.LEGACY_VALUES, *config_lib.LEGACY_UNREAD]:
    *groups, field = key.split('.')
    node = recorded
    for group in groups:
      node = node[group]
    del node[field]
  (tmp_path / 'config.json').write_text(json.dumps(recorded))
  saved.write(str(tmp_path), load_digits_lt(20.0))
  with pytest.raises(MissingCheckpointError, match=r"no finished run of any phase of 'ssd'"):
    predict.Predictor(str(tmp_path))  # got as far as the phases (not an AttributeError)


def test_bad_arguments_fail_before_any_work(tmp_path):
  import subprocess
  import sys

  Image.new('L', (5, 5)).save(tmp_path / 'a.png')
  with pytest.raises(PredictInputError, match='give --top_k >= 1'):
    predict.run(str(tmp_path), [str(tmp_path)], k=0)
  with pytest.raises(PredictInputError, match='--batch_size >= 0'):
    predict.run(str(tmp_path), [str(tmp_path)], batch_size=-8)
  (tmp_path / 'file').write_text('not a folder')
  with pytest.raises(WorkdirWriteError, match=f'cannot write --out={tmp_path}/file/p.csv .*Fix: choose a path'):
    predict.run(str(tmp_path), [str(tmp_path)], out=str(tmp_path / 'file' / 'p.csv'))
  p = subprocess.run([sys.executable, '-m', 'ltjax.predict', '--workdir', str(tmp_path), '--top_k=abc',
                      str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and "ltjax: error: flag --top_k=abc" in p.stderr and 'Traceback' not in p.stderr
