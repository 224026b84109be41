"""The on-device dataset: a long-tailed training subset and a balanced test split as
uint8 NHWC arrays, small enough to live on the device, where the jitted step samples and
augments them (``ltjax/feeds.py`` ``DeviceFeed``). CIFAR-LT and the embedded digits load
into it; the large datasets are ``host.HostDataset`` instead."""
from __future__ import annotations

import dataclasses

import numpy as np


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
  title: str = ''  # for tables and logs ('' = the name)
  pixel_scale: float = 255.0  # what the uint8 pixels are divided by before normalising
  # Position of each image in the source's original order (for checks and provenance).
  train_index: np.ndarray | None = None
  test_index: np.ndarray | None = None
  skipped_images: int = 0  # images left out as unreadable (never, for these datasets)
  # A validation split held out of training (run.val_every_epochs); None: none.
  val_images: np.ndarray | None = None
  val_labels: np.ndarray | None = None

  def __post_init__(self):
    self.title = self.title or self.name

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.train_labels, minlength=self.num_classes)

  def example_images(self, n: int = 2) -> np.ndarray:
    """A few training images, for initialising a model."""
    return self.train_images[:n]

  def preprocessing(self) -> dict:
    """How an image file becomes an input like these (``data/saved.py``): resized whole."""
    h, w, c = self.train_images.shape[1:]
    return {'kind': 'resize', 'height': int(h), 'width': int(w), 'channels': int(c)}

  def test_batches(self, global_batch: int, rows: slice | None = None):
    """This process's ``rows`` of every global batch of the test images, the last padded
    (``evaluate.predict`` reads them)."""
    from ltjax import evaluate

    return evaluate.array_batches(self.test_images, global_batch, rows)

  def val_batches(self, global_batch: int, rows: slice | None = None):
    """``test_batches`` of the validation images."""
    from ltjax import evaluate

    return evaluate.array_batches(self.val_images, global_batch, rows)
