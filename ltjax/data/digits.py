"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (shipped inside
the package, so it needs no download) as a long-tailed problem."""
from __future__ import annotations

import numpy as np

from ltjax.data import longtail
from ltjax.data.arrays import ArrayDataset


def load_digits_lt(imbalance_factor: float, test_per_class: int = 50, seed: int = 0,
                   title: str = 'digits-LT') -> ArrayDataset:
  """1,797 images, about 180 a class: per class (numpy legacy generator seeded once with
  ``seed``, classes in order 0..9) shuffle its images, hold out the first
  ``test_per_class`` as a balanced test set, and keep ``n_i`` of the rest with the LDAM
  profile (``n_max`` = the smallest number left in any class, 124 with 50 held out)."""
  from sklearn.datasets import load_digits

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
      class_names=[str(c) for c in range(num_classes)], title=title, pixel_scale=16.0,
      train_index=train_idx, test_index=test_idx)
