"""What a workdir records of its dataset, ``dataset.json``: the class names and counts and
how an image file becomes the model's input. ``ltjax.predict`` builds the recipe's models
and prepares new images from it and ``config.json`` alone, so a finished workdir copied to
another machine still predicts without the training data.

Two ways to prepare an image, as the datasets evaluate theirs:

- ``centre_crop`` (the host pipeline's datasets: ImageNet-LT, iNat, Places-LT, image
  folders): shorter side resized to ``resize``, the central ``crop x crop``, RGB.
- ``resize`` (the on-device arrays: CIFAR, digits): the whole image resized to
  ``height x width`` with ``channels`` (1: grayscale), its 0..255 values scaled to the
  dataset's 0..``pixel_scale`` (digits: 0..16).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from ltjax import files

FILE = 'dataset.json'


def describe(dataset) -> dict:
  """The ``dataset.json`` record of a loaded dataset (``ArrayDataset`` or ``HostDataset``)."""
  return {'name': dataset.name, 'title': dataset.title, 'class_names': [str(c) for c in dataset.class_names],
          'class_counts': [int(c) for c in dataset.class_counts],
          'pixel_scale': float(dataset.pixel_scale), 'preprocessing': dataset.preprocessing()}


def write(workdir: str, dataset) -> None:
  """Writes ``workdir/dataset.json`` (atomically) for a new workdir. In a workdir that has
  one, the dataset must be the one it describes: the same config can load other data (an
  image folder whose classes or images changed), and its checkpoints, counts and class
  names would no longer fit together."""
  from ltjax.errors import WorkdirConflictError

  path = os.path.join(workdir, FILE)
  record = describe(dataset)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    diff = sorted(k for k in set(before) | set(record) if k != 'title' and before.get(k) != record.get(k))
    if diff:
      raise WorkdirConflictError(
          f'{workdir} was trained on other data than this run loads ({", ".join(diff)} differ from '
          f'{path}; e.g. class folders or images added, removed or renamed). Fix: choose a new '
          f'--workdir for the new data, or restore the data the workdir was trained on; nothing '
          f'was changed in {workdir}.')
    return
  files.write_atomic(path, json.dumps(record, indent=1))


@dataclasses.dataclass
class SavedDataset:
  """A dataset as ``dataset.json`` describes it: what a recipe needs to build its phases
  (``num_classes``, ``class_counts``, ``pixel_scale``, ``example_images``) and
  ``prepare`` for new images; no training or test data."""
  name: str
  title: str
  class_names: list[str]
  class_counts: np.ndarray
  pixel_scale: float
  preprocessing: dict

  @classmethod
  def read(cls, path: str) -> 'SavedDataset':
    with open(path) as f:
      record = json.load(f)
    record['class_counts'] = np.asarray(record['class_counts'], np.int64)
    return cls(**record)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    p = self.preprocessing
    if p['kind'] == 'centre_crop':
      return (p['crop'], p['crop'], 3)
    return (p['height'], p['width'], p['channels'])

  def example_images(self, n: int = 2) -> np.ndarray:
    """Zeros of the model's input shape, for initialising a model."""
    return np.zeros((n,) + self.input_shape, np.uint8)

  def prepare(self, path: str) -> np.ndarray:
    """The image file at ``path`` as the model's uint8 input, the way the dataset's own
    test images were prepared (PIL opens any common format and mode)."""
    from ltjax.data import folder, host

    p = self.preprocessing
    if p['kind'] == 'centre_crop':  # as an image folder's test images: decoded, then cropped
      return host.center_crop(folder.decode(path), p['resize'], p['crop'])
    with Image.open(path) as image:
      if p['kind'] != 'resize':
        raise ValueError(f'unknown preprocessing {p["kind"]!r} in {FILE}')
      image = image.convert('L' if p['channels'] == 1 else 'RGB').resize((p['width'], p['height']),
                                                                         Image.BILINEAR)
      x = np.asarray(image, np.float64).reshape(self.input_shape)
    return np.round(x * self.pixel_scale / 255.0).astype(np.uint8)
