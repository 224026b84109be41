"""Datasets: TFDS CIFAR-10/100 and the embedded 8x8 digits as in-memory arrays, and
ImageNet-LT, iNaturalist 2018 and Places-LT as host datasets.

The small loaders return an ``ArrayDataset``: the long-tailed training subset and the
balanced test split as uint8 NHWC images with int32 labels, small enough to live
on the device, where the jitted step samples and augments them. ``load_large`` returns
a ``host.HostDataset``: TFDS sources, the records of the LT training subset and the
labels, read batch by batch by the host pipeline (``ltjax/data/host.py``).
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from ltjax.data import longtail
from ltjax.errors import ConfigError, DatasetNotPreparedError


@dataclasses.dataclass
class ArrayDataset:
  name: str
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  imbalance_factor: float
  class_names: list[str]
  pixel_scale: float = 255.0  # what the uint8 pixels are divided by before normalising
  # Position of each image in the source's original order (for checks and provenance).
  train_index: np.ndarray | None = None
  test_index: np.ndarray | None = None

  @property
  def title(self) -> str:
    return f'{self.name}-LT'

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.train_labels, minlength=self.num_classes)

  def example_images(self, n: int = 2) -> np.ndarray:
    """A few training images, for initialising a model."""
    return self.train_images[:n]


# ---------------------------------------------------------------- embedded digits
def load_digits_lt(imbalance_factor: float, test_per_class: int = 50, seed: int = 0) -> ArrayDataset:
  """scikit-learn's 8x8 handwritten digits (1,797 images, about 180 a class) as a
  long-tailed problem: per class (numpy legacy generator seeded once with ``seed``,
  classes in order 0..9) shuffle its images, hold out the first ``test_per_class``
  as a balanced test set, and keep ``n_i`` of the rest with the LDAM profile
  (``n_max`` = the smallest number left in any class, 124 with 50 held out)."""
  from sklearn.datasets import load_digits  # ships its data inside the package

  digits = load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # values 0..16
  labels = digits.target.astype(np.int64)
  num_classes = 10
  state = np.random.RandomState(seed)
  pools, test_idx = [], []
  for c in range(num_classes):
    idx = np.where(labels == c)[0]
    state.shuffle(idx)
    test_idx.append(idx[:test_per_class])
    pools.append(idx[test_per_class:])
  n_max = min(len(p) for p in pools)
  counts = longtail.longtail_counts(n_max, num_classes, imbalance_factor)
  train_idx = np.concatenate([p[:n] for p, n in zip(pools, counts)])
  test_idx = np.concatenate(test_idx)
  return ArrayDataset(
      name='digits', train_images=images[train_idx], train_labels=labels[train_idx].astype(np.int32),
      test_images=images[test_idx], test_labels=labels[test_idx].astype(np.int32),
      num_classes=num_classes, imbalance_factor=float(imbalance_factor),
      class_names=[str(c) for c in range(num_classes)], pixel_scale=16.0,
      train_index=train_idx, test_index=test_idx)


# ---------------------------------------------------------------- TFDS CIFAR
CIFAR = {'cifar10': (10, 5000), 'cifar100': (100, 500)}
_ID = re.compile(r'^(train|test)_(\d+)$')


def _tfds_source(name: str, split: str, data_dir, download: bool):
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not there"
    first_error = e
  if download:
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(file_format='array_record')  # needs internet and TensorFlow
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  where = data_dir or '~/tensorflow_datasets'
  said = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
  raise DatasetNotPreparedError(
      f'TFDS dataset {name!r} ({split} split) is not prepared in {where}: ltjax reads '
      f'{where}/{name}/<version>/ in ArrayRecord format and downloads nothing unless asked.\n'
      f'Fix: point --config.data.data_dir at the folder that holds {name}/, or prepare it on a '
      f'machine with internet: `pip install tensorflow` and add --config.data.download=True '
      f'(or run `tfds build {name} --file_format=array_record --data_dir DIR`).\n'
      f'(TFDS said: {said})') from first_error


def _read_all(source, desc: str):
  """Decodes a whole TFDS random-access split into (images, labels, ids)."""
  from tqdm.auto import tqdm

  from ltjax.data.host import read_records

  n = len(source)
  images, labels, ids = None, np.empty(n, np.int64), []
  chunk = 2048
  bar = tqdm(total=n, desc=desc, unit='img', leave=False)
  for start in range(0, n, chunk):
    batch = read_records(source, range(start, min(start + chunk, n)))  # batched: about 2x faster
    bar.update(len(batch))
    for j, ex in enumerate(batch):
      if images is None:
        images = np.empty((n,) + ex['image'].shape, np.uint8)
      images[start + j] = ex['image']
      labels[start + j] = ex['label']
      ids.append(ex['id'].decode() if isinstance(ex['id'], bytes) else str(ex['id']))
  bar.close()
  return images, labels, ids


def _original_order(ids: list[str], name: str) -> np.ndarray:
  """Permutation that puts TFDS records in the original CIFAR training order."""
  positions = []
  for i in ids:
    m = _ID.match(i)
    if m is None:
      raise ValueError(f'{name}: TFDS id {i!r} is not of the form train_NNNNN; the exact '
                       f'LDAM-DRW subset needs the original training order.')
    positions.append(int(m.group(2)))
  positions = np.asarray(positions)
  if len(np.unique(positions)) != len(positions):
    raise ValueError(f'{name}: duplicate TFDS ids; cannot recover the original order.')
  return np.argsort(positions, kind='stable')


def _cache_path(cache_dir, name, imbalance_factor, seed):
  return os.path.join(cache_dir, f'{name}_lt_if{imbalance_factor:g}_seed{seed}.npz')


def _read_cache(path, name, imbalance_factor) -> ArrayDataset:
  with np.load(path) as z:
    return ArrayDataset(
        name=name, train_images=z['train_images'], train_labels=z['train_labels'],
        test_images=z['test_images'], test_labels=z['test_labels'],
        num_classes=int(z['num_classes']), imbalance_factor=float(imbalance_factor),
        class_names=[str(s) for s in z['class_names']], train_index=z['train_index'])


def _write_cache(path, ds: ArrayDataset) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.savez_compressed(f, train_images=ds.train_images, train_labels=ds.train_labels,
                        test_images=ds.test_images, test_labels=ds.test_labels,
                        num_classes=ds.num_classes, class_names=np.array(ds.class_names),
                        train_index=ds.train_index)
  os.replace(tmp, path)  # atomic: a killed write never leaves a half cache


def load_cifar_lt(name: str, imbalance_factor: float, data_dir=None, download: bool = False,
                  seed: int = 0, cache_dir: str | None = None) -> ArrayDataset:
  """CIFAR-10/100-LT: the exact LDAM-DRW subset of the TFDS training split
  (METHODS.md section 1) and the full balanced test split.

  With ``cache_dir``, the decoded subset is kept there as one compressed ``.npz``
  (about 50 MB for CIFAR-10-LT IF 100 with its test split): later runs skip TFDS,
  and a machine without the TFDS folder (a lent accelerator) can train from it."""
  num_classes, n_max = CIFAR[name]
  counts = longtail.longtail_counts(n_max, num_classes, imbalance_factor)
  if cache_dir:
    path = _cache_path(cache_dir, name, imbalance_factor, seed)
    if os.path.exists(path):
      return _read_cache(path, name, imbalance_factor)
    ds = load_cifar_lt(name, imbalance_factor, data_dir, download, seed)
    _write_cache(path, ds)
    return ds
  train = _tfds_source(name, 'train', data_dir, download)
  test = _tfds_source(name, 'test', data_dir, download)
  tr_images, tr_labels, tr_ids = _read_all(train, f'{name} train')
  order = _original_order(tr_ids, name)
  tr_images, tr_labels = tr_images[order], tr_labels[order]
  keep = longtail.ldam_subset(tr_labels, counts, seed=seed)
  te_images, te_labels, _ = _read_all(test, f'{name} test')
  try:
    names = list(train.dataset_info.features['label'].names)
  except Exception:  # mocked sources may lack names
    names = [str(c) for c in range(num_classes)]
  return ArrayDataset(
      name=name, train_images=tr_images[keep], train_labels=tr_labels[keep].astype(np.int32),
      test_images=te_images, test_labels=te_labels.astype(np.int32), num_classes=num_classes,
      imbalance_factor=float(imbalance_factor), class_names=names, train_index=keep)


# ---------------------------------------------------------------- large datasets (host pipeline)
# config name -> TFDS name, training split, test split, file-name feature
LARGE = {
    'imagenet_lt': ('imagenet_lt', 'train', 'test', 'file_name'),  # test = the 50,000 ILSVRC val images
    'inat18': ('i_naturalist2018', 'train', 'validation', 'id'),  # test = the official val (24,426)
    'places_lt': ('places365_small', 'train', 'validation', 'filename'),  # Places-LT: a file list of train
}
MANUAL = {
    'imagenet_lt': (
        'ImageNet-LT is built from the ILSVRC2012 tars, which need an image-net.org account: put '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual/, then (with '
        'TensorFlow installed) run `tfds build imagenet_lt --file_format=array_record --data_dir DATA_DIR`.'),
}


def normalize_file_name(name: str) -> str:
  """A Places image path as both the OLTR list and TFDS write it: no leading slash or
  ``data_256/`` folder (``/data_256/a/airfield/00000129.jpg`` -> ``a/airfield/00000129.jpg``)."""
  name = name.strip().lstrip('/')
  return name[len('data_256/'):] if name.startswith('data_256/') else name


def select_by_file_list(file_names, entries) -> np.ndarray:
  """Record indices of the listed files, in list order: ``entries`` are lines ``path label``
  (Places-LT's ``Places_LT_train.txt``). A listed file that the split lacks is an error."""
  position = {normalize_file_name(f): i for i, f in enumerate(file_names)}
  records, missing = [], []
  for line in entries:
    if not line.strip():
      continue
    parts = line.rsplit(None, 1)  # 'path label'; a path may hold spaces
    path = normalize_file_name(parts[0] if len(parts) == 2 and parts[1].isdigit() else line)
    if path in position:
      records.append(position[path])
    else:
      missing.append(path)
  if missing:
    raise DatasetNotPreparedError(
        f'{len(missing)} of the {len(records) + len(missing)} files of the list are not in the TFDS '
        f'split (first: {missing[0]!r}). Fix: check that --config.data.file_list is the list of this '
        f'dataset (Places-LT: Places_LT_train.txt of OLTR) and that the split is fully prepared.')
  return np.asarray(records, np.int64)


def read_file_list(location: str, sha256: str = '') -> list[str]:
  """The lines of a file list from a path or URL (fetched, never stored in the project),
  checked against ``sha256`` when given."""
  import hashlib
  import urllib.request

  if not location:
    raise ConfigError('places_lt needs --config.data.file_list: the path or URL of OLTR\'s '
                      'Places_LT_train.txt (https://github.com/zhmiao/OpenLongTailRecognition-OLTR, '
                      '"Places_LT_v2" lists), and --config.data.file_list_sha256 to pin it.')
  if '://' in location:
    with urllib.request.urlopen(location, timeout=60) as f:
      data = f.read()
  else:
    with open(os.path.expanduser(location), 'rb') as f:
      data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if sha256 and digest != sha256:
    raise DatasetNotPreparedError(f'the file list {location} has sha256 {digest}, not the expected '
                                  f'{sha256}: a different or damaged list. Fix: fetch the published list again.')
  return data.decode().splitlines()


def _scan(source, keys: tuple[str, ...], desc: str) -> dict[str, list]:
  """Reads ``keys`` of every record (labels, file names) with a progress bar."""
  from tqdm.auto import tqdm

  from ltjax.data.host import read_records

  n, out = len(source), {k: [] for k in keys}
  chunk = 4096
  for start in tqdm(range(0, n, chunk), desc=desc, unit='chunk', leave=False):
    for ex in read_records(source, range(start, min(start + chunk, n))):
      for k in keys:
        v = ex[k]
        out[k].append(v.decode() if isinstance(v, bytes) else (str(v) if k != 'label' else int(v)))
  return out


def load_large(data_config):
  """ImageNet-LT, iNaturalist 2018 or Places-LT as a ``HostDataset`` read by the host
  pipeline. Only labels (and Places' file names) are read here, without decoding images
  (cached as ``.npz`` in ``data.cache_dir`` when set)."""
  import contextlib

  import tensorflow_datasets as tfds

  from ltjax.data.host import HostDataset

  name = data_config.name
  tfds_name, train_split, test_split, file_key = LARGE[name]
  data_dir = data_config.data_dir or None
  mock = data_config.mock_examples
  context = (tfds.testing.mock_data(num_examples=mock, policy=tfds.testing.MockPolicy.USE_CODE)
             if mock else contextlib.nullcontext())
  skip = {'image': tfds.decode.SkipDecoding()}
  with context:
    try:
      train = _tfds_source(tfds_name, train_split, data_dir, data_config.download)
      test = _tfds_source(tfds_name, test_split, data_dir, data_config.download)
    except DatasetNotPreparedError as e:
      if name in MANUAL:
        raise DatasetNotPreparedError(f'{e}\n{MANUAL[name]}') from e
      raise
    scan_train = train if mock else tfds.data_source(tfds_name, split=train_split, data_dir=data_dir,
                                                     download=False, decoders=skip)
    scan_test = test if mock else tfds.data_source(tfds_name, split=test_split, data_dir=data_dir,
                                                   download=False, decoders=skip)
  cache = (os.path.join(data_config.cache_dir, f'{name}_labels{"_mock" if mock else ""}.npz')
           if data_config.cache_dir else '')
  if cache and os.path.exists(cache):
    with np.load(cache) as z:
      tr_labels, te_labels, names = z['train_labels'], z['test_labels'], list(z['train_files'])
  else:
    keys = ('label', file_key) if name == 'places_lt' else ('label',)
    tr = _scan(scan_train, keys, f'{name} train labels')
    te = _scan(scan_test, ('label',), f'{name} test labels')
    tr_labels, te_labels = np.asarray(tr['label'], np.int64), np.asarray(te['label'], np.int64)
    names = tr.get(file_key, [])
    if cache:
      os.makedirs(data_config.cache_dir, exist_ok=True)
      tmp = f'{cache}.tmp{os.getpid()}'
      with open(tmp, 'wb') as f:
        np.savez(f, train_labels=tr_labels, test_labels=te_labels, train_files=np.array(names))
      os.replace(tmp, cache)
  num_classes = train.dataset_info.features['label'].num_classes
  if name == 'places_lt':
    records = select_by_file_list(names, read_file_list(data_config.file_list, data_config.file_list_sha256))
  else:
    records = np.arange(len(tr_labels))
  labels = tr_labels[records].astype(np.int32)
  counts = np.bincount(labels, minlength=num_classes)
  if not mock and counts.min() == 0:
    raise DatasetNotPreparedError(
        f'{name}: {int((counts == 0).sum())} of {num_classes} classes have no training image; the '
        f'TFDS split or the file list is incomplete. Fix: prepare the dataset again.')
  try:
    class_names = list(train.dataset_info.features['label'].names)
  except Exception:
    class_names = [str(c) for c in range(num_classes)]
  present = counts[counts > 0]
  return HostDataset(
      name=name, train_source=train, train_records=records, train_labels=labels, test_source=test,
      test_records=np.arange(len(te_labels)), test_labels=te_labels.astype(np.int32),
      num_classes=num_classes, imbalance_factor=float(present.max() / present.min()),
      class_names=class_names, image_size=data_config.image_size, resize_size=data_config.resize_size,
      threads=data_config.host_threads, workers=data_config.host_workers)


def load(data_config):
  """The dataset a config names (``config.data``): an ``ArrayDataset`` (small, on the
  device) or a ``HostDataset`` (large, read by the host pipeline)."""
  name = data_config.name
  if name in LARGE:
    return load_large(data_config)
  if name == 'digits':
    return load_digits_lt(data_config.imbalance_factor, data_config.test_per_class,
                          data_config.split_seed)
  if name in CIFAR:
    return load_cifar_lt(name, data_config.imbalance_factor, data_config.data_dir or None,
                         data_config.download, data_config.split_seed, data_config.cache_dir or None)
  raise ConfigError(f'unknown data.name {name!r}; choose digits, cifar10, cifar100, {", ".join(LARGE)}.')
