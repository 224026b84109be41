"""CIFAR-10/100-LT: the exact LDAM-DRW subsets of TFDS ``cifar10`` / ``cifar100`` and
their full balanced test splits, as an ``ArrayDataset``, with an optional ``.npz`` cache."""
from __future__ import annotations

import os
import re

import numpy as np

from ltjax.data import longtail, tfds_io
from ltjax.data.arrays import ArrayDataset

_ID = re.compile(r'^(train|test)_(\d+)$')


def original_order(ids: list[str], name: str) -> np.ndarray:
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


def cache_path(cache_dir, name, imbalance_factor, seed):
  return os.path.join(cache_dir, f'{name}_lt_if{imbalance_factor:g}_seed{seed}.npz')


def _read_cache(path, name, imbalance_factor, title) -> ArrayDataset:
  with np.load(path) as z:
    return ArrayDataset(
        name=name, train_images=z['train_images'], train_labels=z['train_labels'],
        test_images=z['test_images'], test_labels=z['test_labels'],
        num_classes=int(z['num_classes']), imbalance_factor=float(imbalance_factor),
        class_names=[str(s) for s in z['class_names']], title=title, train_index=z['train_index'])


def load_cifar_lt(spec, imbalance_factor: float, data_dir=None, download: bool = False,
                  seed: int = 0, cache_dir: str | None = None) -> ArrayDataset:
  """The LDAM-DRW subset (METHODS.md section 1) of the TFDS training split of ``spec``
  (a ``registry.DatasetSpec``: ``spec.tfds_name``, put back in CIFAR's original order by
  the TFDS ids; ``spec.images_per_class`` in the largest class) and the full balanced
  test split.

  With ``cache_dir``, the decoded subset is kept there as one compressed ``.npz``
  (about 50 MB for CIFAR-10-LT IF 100 with its test split): later runs skip TFDS,
  and a machine without the TFDS folder (a lent accelerator) can train from it."""
  name, num_classes, title = spec.name, spec.num_classes, spec.title
  if cache_dir:
    path = cache_path(cache_dir, name, imbalance_factor, seed)
    if os.path.exists(path):
      return _read_cache(path, name, imbalance_factor, title)
    ds = load_cifar_lt(spec, imbalance_factor, data_dir, download, seed)
    tfds_io.save_npz(path, compressed=True, train_images=ds.train_images, train_labels=ds.train_labels,
                     test_images=ds.test_images, test_labels=ds.test_labels, num_classes=ds.num_classes,
                     class_names=np.array(ds.class_names), train_index=ds.train_index)
    return ds
  counts = longtail.longtail_counts(spec.images_per_class, num_classes, imbalance_factor)
  train = tfds_io.open_source(spec.tfds_name, spec.train_split, data_dir, download)
  test = tfds_io.open_source(spec.tfds_name, spec.test_split, data_dir, download)
  tr_images, tr_labels, tr_ids = tfds_io.read_all(train, f'{name} train')
  order = original_order(tr_ids, name)
  tr_images, tr_labels = tr_images[order], tr_labels[order]
  keep = longtail.ldam_subset(tr_labels, counts, seed=seed)
  te_images, te_labels, _ = tfds_io.read_all(test, f'{name} test')
  return ArrayDataset(
      name=name, train_images=tr_images[keep], train_labels=tr_labels[keep].astype(np.int32),
      test_images=te_images, test_labels=te_labels.astype(np.int32), num_classes=num_classes,
      imbalance_factor=float(imbalance_factor), class_names=tfds_io.class_names(train, num_classes),
      title=title, train_index=keep)
