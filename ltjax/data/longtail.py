"""Long-tailed profiles, the exact LDAM-DRW subset, and shot groups (METHODS.md section 1)."""
from __future__ import annotations

import math

import numpy as np

from ltjax.errors import ConfigError


def check_imbalance_factor(imbalance_factor) -> float:
  """Validates an imbalance factor IF = n_max / n_min and returns it as a float."""
  try:
    value = float(imbalance_factor)
  except (TypeError, ValueError):
    raise ConfigError(f'imbalance factor must be a number >= 1, got {imbalance_factor!r}.') from None
  if not math.isfinite(value) or value < 1:
    hint = ''
    if 0 < value < 1:
      hint = (f' ltjax uses IF = n_max / n_min (the literature\'s 10, 50, 100); '
              f'LDAM-DRW\'s --imb_factor {value:g} is IF = {1 / value:g}.')
    raise ConfigError(f'imbalance factor (data.imbalance_factor) must be a finite number >= 1 for a split that '
                      f'ltjax draws (1 = balanced), got {imbalance_factor!r}.{hint}')
  return value


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
  """Images kept per class: ``n_i = int(n_max * (1/IF) ** (i / (C - 1)))``.

  This is the exponential profile of LDAM-DRW (``get_img_num_per_cls``, 'exp').
  """
  imbalance_factor = check_imbalance_factor(imbalance_factor)
  if num_classes < 2:
    return [int(n_max)] * num_classes
  counts = [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1.0)))
            for i in range(num_classes)]
  if min(counts) < 1:
    raise ConfigError(
        f'imbalance factor {imbalance_factor:g} leaves class {counts.index(min(counts))} '
        f'with no training image (n_max = {n_max}); use an IF of at most {n_max:g}.')
  return counts


def ldam_subset(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
  """Indices of the LDAM-DRW long-tailed subset, in LDAM's order.

  ``labels`` must be in the original training order of the dataset. As in the
  reference code: seed numpy's legacy generator once, then for each class in order,
  shuffle the indices of that class and keep the first ``counts[c]``.
  """
  labels = np.asarray(labels)
  state = np.random.RandomState(seed)  # same stream as np.random.seed(seed)
  keep = []
  for c, n in enumerate(counts):
    idx = np.where(labels == c)[0]
    if len(idx) < n:
      raise ValueError(f'class {c} has {len(idx)} images, the profile asks for {n}.')
    state.shuffle(idx)
    keep.append(idx[:n])
  return np.concatenate(keep)


SHOT_GROUPS = ('many', 'medium', 'few')


def shot_groups(class_counts, many_above: int = 100, few_below: int = 20) -> dict[str, np.ndarray]:
  """Class ids per shot group: many (> many_above), medium, few (< few_below)."""
  counts = np.asarray(class_counts)
  return {
      'many': np.where(counts > many_above)[0],
      'medium': np.where((counts <= many_above) & (counts >= few_below))[0],
      'few': np.where(counts < few_below)[0],
  }
