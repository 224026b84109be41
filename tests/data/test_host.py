"""The host pipeline of the large datasets (ltjax/data/host.py) on TFDS's mock data:
crops, shapes and labels, two views, per-process shards, iterator state, Places-LT's
file list, and a phase trained from it that resumes after a crash."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import crash_and_resume
from configs import large

from ltjax import config_lib
from ltjax.data import file_lists, host, registry
from ltjax.data.samplers import Sampler
from ltjax.errors import ConfigError, DatasetNotPreparedError


def mock_config(name='imagenet_lt', examples=48, size=16):
  args = config_lib.parse_args('mock', large.LARGE_ARGS)
  c = large.large_config(args, name, 'resnet10', epochs=1, ssd_epochs=1)
  c.data.mock_examples = examples
  c.data.image_size = size
  c.data.resize_size = size + 4
  return c


@pytest.fixture(scope='module')
def imagenet():
  return registry.load(mock_config())


def sampler_for(ds, kind='instance', batch=8, epochs=2):
  return Sampler(kind, len(ds.train_labels), batch, tuple(int(c) for c in ds.class_counts), epochs)


def test_random_resized_crop_whole_image_and_flip():
  image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
  rng = np.random.default_rng(0)
  # scale 1 and ratio 1 on a square image: the box is the whole image.
  out = host.random_resized_crop(rng, image, 4, scale=(1, 1), ratio=(1, 1), flip=False)
  want = np.asarray(Image.fromarray(image).resize((4, 4), Image.BILINEAR))
  np.testing.assert_array_equal(out, want)
  flips = [host.random_resized_crop(np.random.default_rng(s), image, 8, scale=(1, 1), ratio=(1, 1))
           for s in range(20)]
  flipped = [np.array_equal(f, image[:, ::-1]) for f in flips]
  assert all(np.array_equal(f, image) or fl for f, fl in zip(flips, flipped)) and 3 < sum(flipped) < 17


def test_random_resized_crop_shapes_and_fallback():
  rng = np.random.default_rng(1)
  for shape in ((10, 25, 3), (300, 200, 3), (64, 64, 1), (5, 400, 3)):
    out = host.random_resized_crop(rng, np.full(shape, 7, np.uint8), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and (out == 7).all()


def test_center_crop_hand_case():
  # 8 x 16 (h x w), shorter side -> 4: 4 x 8, then the central 4 x 4 = columns 2..5.
  image = np.repeat(np.repeat(np.arange(8, dtype=np.uint8)[None, :, None] * 30, 8, 0), 2, 1)
  image = np.repeat(image, 3, 2)
  out = host.center_crop(image, 4, 4)
  resized = np.asarray(Image.fromarray(image).resize((8, 4), Image.BILINEAR))
  np.testing.assert_array_equal(out, resized[:, 2:6])


def test_mock_imagenet_lt_labels_and_counts(imagenet):
  ds = imagenet
  assert isinstance(ds, host.HostDataset) and ds.num_classes == 1000 and ds.title == 'ImageNet-LT'
  assert len(ds.train_records) == 48 and len(ds.test_records) == 48
  labels = np.array([int(ds.train_source[int(r)]['label']) for r in ds.train_records])
  np.testing.assert_array_equal(ds.train_labels, labels)
  np.testing.assert_array_equal(ds.class_counts, np.bincount(labels, minlength=1000))


def test_train_batches_shapes_labels_and_two_views(imagenet):
  ds = imagenet
  s = sampler_for(ds)
  it = host.train_iterator(ds, s, seed=0, total_steps=3, two_views=True)
  batch = next(it)
  assert batch['images'].shape == (8, 16, 16, 3) and batch['images'].dtype == np.uint8
  assert batch['key_images'].shape == batch['images'].shape
  assert not np.array_equal(batch['key_images'], batch['images'])  # another crop of each image
  positions = s.host_indices(Sampler.arrays(ds.train_labels, ds.num_classes), 0, 0)
  np.testing.assert_array_equal(batch['labels'], ds.train_labels[positions])
  assert 'key_images' not in next(host.train_iterator(ds, s, seed=0, total_steps=3))


def test_process_shards_cover_an_epoch_without_overlap(imagenet):
  ds = imagenet
  s = sampler_for(ds, batch=8)  # 48 images: 6 steps an epoch
  arrays = Sampler.arrays(ds.train_labels, ds.num_classes)
  seen = {p: [] for p in range(2)}
  for step in range(s.steps_per_epoch):
    for p, rows in enumerate((slice(0, 4), slice(4, 8))):
      seen[p].extend(s.host_indices(arrays, 0, step)[rows])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(48))
  # Two processes' batches are the one-process global batch, row for row.
  whole = next(host.train_iterator(ds, s, 0, 2))
  halves = [next(host.train_iterator(ds, s, 0, 2, rows)) for rows in (slice(0, 4), slice(4, 8))]
  for key in ('images', 'labels'):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_test_split_shards_cover_it_once(imagenet):
  ds = imagenet
  whole = np.concatenate([b['images'] for b in host.test_batches(ds, 20)])  # 48 -> 3 batches, padded
  assert whole.shape[0] == 60 and not whole[48:].any()
  parts = [list(host.test_batches(ds, 20, rows)) for rows in (slice(0, 10), slice(10, 20))]
  joined = np.concatenate([np.concatenate([a['images'], b['images']]) for a, b in zip(*parts)])
  np.testing.assert_array_equal(joined, whole)
  first = host.center_crop(ds.test_source[0]['image'], ds.resize_size, ds.image_size)
  np.testing.assert_array_equal(whole[0], first)


def test_imagenet_lt_validation_split_is_read_when_asked_and_cached(tmp_path):
  """ImageNet-LT's validation split (run.val_every_epochs) is opened only when asked; its
  labels join a labels cache written without them, which later runs read back."""
  c = mock_config()
  c.run.cache_dir = str(tmp_path)
  assert registry.load(c).val_labels is None
  cache = tmp_path / 'imagenet_lt_labels_mock.npz'
  with np.load(cache) as z:
    assert 'val_labels' not in z.files
  c.run.val_every_epochs = 1
  ds = registry.load(c)
  assert len(ds.val_records) == 48 and ds.val_source is not ds.test_source
  labels = np.array([int(ds.val_source[i]['label']) for i in range(48)])
  np.testing.assert_array_equal(ds.val_labels, labels)
  with np.load(cache) as z:
    np.testing.assert_array_equal(z['val_labels'], labels)
    np.testing.assert_array_equal(z['test_labels'], ds.test_labels)
  again = registry.load(c)  # from the cache
  np.testing.assert_array_equal(again.val_labels, labels)
  first = next(iter(ds.val_batches(20)))['images'][0]
  np.testing.assert_array_equal(first, host.center_crop(ds.val_source[0]['image'], ds.resize_size, ds.image_size))


def test_iterator_from_a_step_reads_that_steps_batches_on_any_split_of_rows(imagenet):
  """A resumed run's pipeline starts at its checkpoint's step (``start``) and reads the
  very batches of an unbroken run, also split into other processes' rows (a run resumed
  on another number of processes)."""
  s = sampler_for(imagenet, 'class')
  whole = list(host.train_iterator(imagenet, s, 0, 6))
  assert len(whole) == 6
  half = s.batch_size // 2
  parts = [list(host.train_iterator(imagenet, s, 0, 6, rows=rows, start=2))
           for rows in (slice(0, half), slice(half, s.batch_size))]
  assert len(parts[0]) == len(parts[1]) == 4
  for a, b, c in zip(whole[2:], *parts):
    for key in a:
      np.testing.assert_array_equal(a[key], np.concatenate([b[key], c[key]]))


def test_host_class_sampler_is_balanced():
  labels = np.repeat(np.arange(4), [40, 20, 6, 2]).astype(np.int32)
  s = Sampler('class', len(labels), 64, (40, 20, 6, 2), 1)
  arrays = Sampler.arrays(labels, 4)
  drawn = np.concatenate([s.host_indices(arrays, 0, step) for step in range(200)])
  freq = np.bincount(labels[drawn], minlength=4) / len(drawn)
  np.testing.assert_allclose(freq, 0.25, atol=0.02)
  assert len(np.unique(drawn[labels[drawn] == 3])) == 2  # both images of the rarest class


def test_places_lt_file_list_selection(tmp_path):
  files = ['data_256/a/airfield/00000001.jpg', 'data_256/a/airfield/00000002.jpg',
           'data_256/b/bakery/00000007.jpg']
  entries = ['/data_256/b/bakery/00000007.jpg 30', 'a/airfield/00000001.jpg 0', '']
  np.testing.assert_array_equal(file_lists.select_by_file_list(files, entries), [2, 0])
  with pytest.raises(DatasetNotPreparedError, match='1 of the 2 files'):
    file_lists.select_by_file_list(files, ['/data_256/c/canyon/00000001.jpg 40', entries[0]])
  # Kang et al.'s and BALMS's copies of the lists: train/<category parts joined by '-'>/<file>.
  files.append('data_256/a/apartment_building/outdoor/00000093.jpg')
  kang = ['train/apartment_building-outdoor/00000093.jpg 8', 'train/airfield/00000002.jpg 0']
  np.testing.assert_array_equal(file_lists.select_by_file_list(files, kang), [3, 1])
  assert file_lists.normalize_file_name('/data_256/a/apartment_building/outdoor/00000093.jpg') == \
      file_lists.normalize_file_name(kang[0].split()[0]) == 'apartment_building/outdoor/00000093.jpg'
  listing = tmp_path / 'Places_LT_train.txt'
  listing.write_text('\n'.join(entries))
  digest = hashlib.sha256(listing.read_bytes()).hexdigest()
  assert file_lists.read_file_list(str(listing), digest)[:2] == entries[:2]
  with pytest.raises(DatasetNotPreparedError, match='sha256'):
    file_lists.read_file_list(str(listing), '0' * 64)
  with pytest.raises(ConfigError, match='Places_LT_train.txt'):
    file_lists.read_file_list('')


def test_places_lt_on_mock_data(tmp_path):
  # The mock split's own file names as the list: the subset is exactly the listed records.
  c = mock_config('places_lt', examples=30)
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
    train = tfds.data_source('places365_small', split='train')
  names = [train[i]['filename'] for i in range(30)]
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  listing = tmp_path / 'list.txt'
  listing.write_text('\n'.join(f'{names[i]} 0' for i in (5, 1, 17)))
  c.data.file_list = str(listing)
  ds = registry.load(c)
  np.testing.assert_array_equal(ds.train_records, [5, 1, 17])
  assert ds.num_classes == 365 and len(ds.test_labels) == 30
  assert ds.val_labels is None
  # The validation images (OLTR's Places_LT_val.txt) are records of the training split too,
  # read only where a run validates.
  val_listing = tmp_path / 'val.txt'
  val_listing.write_text('\n'.join(f'{names[i]} 7' for i in (9, 3)))
  c.data.val_file_list = str(val_listing)
  assert registry.load(c).val_labels is None
  c.run.val_every_epochs = 1
  config_lib.validate(c)
  ds = registry.load(c)
  np.testing.assert_array_equal(ds.val_records, [9, 3])
  assert ds.val_source is ds.train_source
  np.testing.assert_array_equal(ds.val_labels, [int(ds.train_source[i]['label']) for i in (9, 3)])
  first = next(iter(ds.val_batches(4)))['images'][0]
  np.testing.assert_array_equal(first, host.center_crop(ds.train_source[9]['image'], ds.resize_size, ds.image_size))
  val_listing.write_text(f'{names[3]} 7\n{names[17]} 7')  # a training image
  with pytest.raises(DatasetNotPreparedError, match=r'1 of the 2 validation files are also in the training list'):
    registry.load(c)
  val_listing.write_text(f'{names[3]} 7\nnot/there.jpg 7')
  with pytest.raises(DatasetNotPreparedError, match=r'--config.data.val_file_list is the list .*Places_LT_val.txt'):
    registry.load(c)
  c.data.val_file_list = ''
  with pytest.raises(ConfigError, match=r'places_lt with data.val_file_list'):
    config_lib.validate(c)


def test_imagenet_lt_not_prepared_names_the_manual_download(tmp_path):
  c = mock_config()
  c.data.mock_examples = 0
  c.run.data_dir = str(tmp_path)
  with pytest.raises(DatasetNotPreparedError, match='ILSVRC2012_img_train.tar'):
    registry.load(c)


def small_run_config():
  c = mock_config(size=16)
  c.model.name = 'cifar_resnet'  # tiny and quick; the pipeline is what is tested
  c.model.depth = 8
  c.model.width = 4
  c.model.dtype = 'float32'
  c.train.epochs = 2  # 48 images, batch 16: 6 steps
  c.run.eval_batch_size = 16
  return c


@pytest.mark.slow
def test_host_phase_resumes_after_a_crash_with_the_same_batches(tmp_path, monkeypatch):
  from ltjax import pipeline

  whole = pipeline.run(small_run_config(), str(tmp_path / 'whole'))['ce']
  # The process dies right after its epoch-1 checkpoint, then resumes.
  resumed = crash_and_resume(monkeypatch, 3, lambda: pipeline.run(small_run_config(), str(tmp_path / 'crashed')))['ce']
  assert not (tmp_path / 'crashed/ce/checkpoints/3/data').exists()  # the state alone: batches follow the step
  assert resumed['timing']['steps_run'] == 3
  losses = lambda d: [json.loads(l)['train/loss'] for l in open(tmp_path / d / 'ce' / 'metrics.jsonl')]
  a, b = losses('whole'), losses('crashed')
  assert len(a) == 6 and b[-3:] == pytest.approx(a[-3:], rel=1e-6)
  assert resumed['per_class'] == whole['per_class'] and resumed['num_test'] == 48


def test_worker_processes_give_the_same_batches_and_resume(imagenet):
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; ltjax.main parses them
  s = sampler_for(imagenet)
  threads = list(host.train_iterator(imagenet, s, 0, 4))
  ds = host.HostDataset(**{**imagenet.__dict__, 'workers': 2})
  it = host.train_iterator(ds, s, 0, 4)
  first = next(it)
  it.close()
  resumed = host.train_iterator(ds, s, 0, 4, start=1)
  rest = list(resumed)
  assert len(rest) == 3
  for a, b in zip(threads, [first] + rest):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


class _Flaky:
  """A TFDS-like source whose first ``failures`` batched reads raise (storage that fails for
  a moment), or every read where ``failures`` is None."""

  def __init__(self, source, failures):
    self.source, self.failures, self.reads = source, failures, 0

  def __len__(self):
    return len(self.source)

  def __getitems__(self, keys):
    self.reads += 1
    if self.failures is None or self.reads <= self.failures:
      raise OSError(5, 'Input/output error', '/gcs/imagenet_lt/train.array_record-00003')
    return [self.source[k] for k in keys]


def test_a_read_that_fails_for_a_moment_is_tried_again(imagenet, monkeypatch):
  import time

  monkeypatch.setattr(host, 'READ_WAIT', 0.001)
  flaky = _Flaky(imagenet.train_source, failures=host.READ_TRIES - 1)
  start = time.perf_counter()
  got = host.read_records(flaky, [3, 1])
  assert flaky.reads == host.READ_TRIES and time.perf_counter() - start < 1.0  # waits of 1, 2, 4 ms
  want = [imagenet.train_source[k] for k in (3, 1)]
  assert all(np.array_equal(g['image'], w['image']) and g['label'] == w['label'] for g, w in zip(got, want))


def test_a_read_that_keeps_failing_names_the_records_and_the_cause(imagenet, monkeypatch):
  """Through grain's reader threads too, as a training run meets it: the error a user can
  act on (``ltjax.main`` prints it without a traceback), not the storage's traceback."""
  import dataclasses

  from ltjax.errors import DataReadError

  monkeypatch.setattr(host, 'READ_WAIT', 0.001)
  broken = dataclasses.replace(imagenet, train_source=_Flaky(imagenet.train_source, failures=None))
  with pytest.raises(DataReadError) as e:
    next(host.train_iterator(broken, sampler_for(broken), seed=0, total_steps=1))
  assert broken.train_source.reads == host.READ_TRIES
  text = str(e.value)
  assert text.startswith("could not read 8 records (")
  assert f'of the dataset after {host.READ_TRIES} tries (OSError: [Errno 5] Input/output error: ' in text
  assert 'Fix: check that the dataset\'s files are whole and that this host can read them' in text
