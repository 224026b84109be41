"""Datasets as in-memory arrays: TFDS CIFAR-10/100 and the embedded 8x8 digits.

Each loader returns an ``ArrayDataset``: the long-tailed training subset and the
balanced test split as uint8 NHWC images with int32 labels, small enough to live
on the device, where the jitted step samples and augments them.
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
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.train_labels, minlength=self.num_classes)


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

  n = len(source)
  images, labels, ids = None, np.empty(n, np.int64), []
  chunk = 2048
  bar = tqdm(total=n, desc=desc, unit='img', leave=False)
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    try:
      batch = source.__getitems__(keys)  # batched reads: about 2x faster than one by one
    except TypeError:  # tfds.testing.mock_data's random source breaks __getitems__
      batch = [source[k] for k in keys]
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


def load(data_config) -> ArrayDataset:
  """The dataset a config names (``config.data``)."""
  name = data_config.name
  if name == 'digits':
    return load_digits_lt(data_config.imbalance_factor, data_config.test_per_class,
                          data_config.split_seed)
  if name in CIFAR:
    return load_cifar_lt(name, data_config.imbalance_factor, data_config.data_dir or None,
                         data_config.download, data_config.split_seed, data_config.cache_dir or None)
  raise ConfigError(f'unknown data.name {name!r}; choose digits, cifar10 or cifar100.')
