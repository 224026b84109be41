"""The host input pipeline for datasets too large for device memory (ImageNet-LT,
iNaturalist 2018, Places-LT): grain over a TFDS random-access source.

Each element of the grain dataset is one *step*: the record indices of this process's
rows of the global batch at that step (``Sampler.host_indices``, a pure function of seed
and step, the same on every process), read from TFDS (JPEG decode included), cropped
and flipped on the host to fixed-size uint8 images. The device does the rest inside the
jitted step (colour jitter, normalisation). Because an element is a function of its
step alone, a resumed run starts the dataset at its checkpoint's step (``start``) and
reads the very batches it would have read; nothing of the pipeline is checkpointed, so a
run may resume on another number of processes, threads or workers.

Per process: each process reads the rows of every global batch that its devices hold
(``parallel.local_rows``: ``[p*b, (p+1)*b)`` for process ``p`` on a CPU or GPU cluster),
and the random crop of a row is drawn from its global position, so the global batch does
not depend on how many processes read it.

Evaluation: the resize-to-256 and centre-crop-224 of the decoupling code, the split in
contiguous per-process blocks of each global evaluation batch, padded at the end.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
from PIL import Image

from ltjax.data.samplers import Sampler
from ltjax.errors import DataReadError, described

# Random resized crop of torchvision (Inception-style), as every ImageNet-LT recipe uses.
CROP_SCALE = (0.08, 1.0)
MOCO_KEY_SCALE = (0.2, 1.0)  # MoCo v2's key view
CROP_RATIO = (3 / 4, 4 / 3)


@dataclasses.dataclass
class HostDataset:
  """A long-tailed training split and a test split, read from TFDS on the host.

  ``train_records`` / ``test_records`` are indices into the TFDS sources (the LT subset:
  all of ``imagenet_lt``'s train split, or the Places-LT file list's records of
  ``places365_small``); ``train_labels`` / ``test_labels`` are their labels."""
  name: str
  title: str
  train_source: Any
  train_records: np.ndarray
  train_labels: np.ndarray
  test_source: Any
  test_records: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  imbalance_factor: float
  class_names: list[str]
  image_size: int = 224
  resize_size: int = 256
  pixel_scale: float = 255.0
  threads: int = 16  # grain reader threads (PIL decodes and resizes outside the GIL)
  workers: int = 0  # grain worker processes on top (0: threads only)
  skipped_images: int = 0  # unreadable images left out (an image folder with data.skip_bad_images)
  # A validation split (ImageNet-LT's 20 a class), read as the test split; None: none.
  val_source: Any = None
  val_records: np.ndarray | None = None
  val_labels: np.ndarray | None = None

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.train_labels, minlength=self.num_classes)

  def example_images(self, n: int = 2) -> np.ndarray:
    """Zeros of the training input shape, for initialising a model."""
    return np.zeros((n, self.image_size, self.image_size, 3), np.uint8)

  def preprocessing(self) -> dict:
    """How an image file becomes an input (``data/saved.py``): as the test images are."""
    return {'kind': 'centre_crop', 'resize': int(self.resize_size), 'crop': int(self.image_size)}

  def test_batches(self, global_batch: int, rows: slice | None = None):
    """This process's ``rows`` of every global evaluation batch, read, resized and
    centre-cropped on the host (``test_batches``)."""
    return test_batches(self, global_batch, rows)

  def val_batches(self, global_batch: int, rows: slice | None = None):
    """``test_batches`` of the validation split."""
    return test_batches(self, global_batch, rows, split='val')


# A read that fails is tried again: READ_TRIES in all, after waits doubling from READ_WAIT s.
READ_TRIES = 4
READ_WAIT = 0.5


def read_records(source, records, tries: int | None = None, wait: float | None = None) -> list[dict]:
  """The examples at ``records`` of a TFDS random-access source (or a ``folder.FolderSource``),
  in one batched read. Network storage (GCS, NFS) fails now and then for a moment, and a
  long run reads millions of records: a failed read is tried again (``tries`` in all,
  after 0.5, 1, 2 s by default), and then a ``DataReadError`` names the records and why."""
  tries, wait = tries or READ_TRIES, READ_WAIT if wait is None else wait
  keys = [int(r) for r in records]
  for attempt in range(tries):
    try:
      return _read_once(source, keys)
    except Exception as e:  # TFDS, ArrayRecord, PIL and the file systems raise many types
      if attempt + 1 == tries:
        what = f'record {keys[0]}' if len(keys) == 1 else f'{len(keys)} records ({", ".join(map(str, keys[:3]))}, ...)'
        raise DataReadError(
            f'could not read {what} of the dataset after {tries} tries ({described(e, 300)}). '
            f'Fix: check that the dataset\'s files are whole and that this host can read them, then rerun the '
            f'same command (a run that trained resumes from its last checkpoint).') from e
      time.sleep(wait * 2 ** attempt)


def _read_once(source, keys: list[int]) -> list[dict]:
  try:
    read = source.__getitems__  # ArrayRecord batched reads
  except AttributeError:  # a source without it (folder.FolderSource)
    return [source[k] for k in keys]
  try:
    return read(keys)
  except (AttributeError, TypeError):  # tfds.testing.mock_data's source breaks __getitems__
    return [source[k] for k in keys]


def _rgb(image: np.ndarray) -> Image.Image:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return Image.fromarray(image).convert('RGB')


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int,
                        scale=CROP_SCALE, ratio=CROP_RATIO, flip: bool = True) -> np.ndarray:
  """torchvision's ``RandomResizedCrop(size, scale, ratio)`` then ``RandomHorizontalFlip``:
  up to 10 tries for a box of ``scale`` of the area and aspect ``ratio`` (log-uniform),
  else the central crop clamped to ``ratio``; bilinear resize to ``size x size``."""
  pil = _rgb(image)
  w, h = pil.size
  area = w * h
  box = None
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
      box = (x0, y0, x0 + cw, y0 + ch)
      break
  if box is None:  # fallback: the whole image, cut to the nearest allowed aspect
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
      cw, ch = int(round(h * ratio[1])), h
    else:
      cw, ch = w, h
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
  out = pil.resize((size, size), Image.BILINEAR, box=box)
  if flip and rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def center_crop(image: np.ndarray, resize: int, size: int) -> np.ndarray:
  """Evaluation: shorter side to ``resize`` (bilinear), then the central ``size x size``."""
  pil = _rgb(image)
  w, h = pil.size
  s = resize / min(w, h)
  nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
  pil = pil.resize((nw, nh), Image.BILINEAR)
  x0, y0 = (nw - size) // 2, (nh - size) // 2
  return np.asarray(pil.crop((x0, y0, x0 + size, y0 + size)), np.uint8)


class _TrainBatch:
  """step -> this process's batch (a picklable callable for grain's workers)."""

  def __init__(self, ds: HostDataset, sampler: Sampler, seed: int, rows: slice, two_views: bool):
    self.ds, self.sampler, self.seed, self.rows, self.two_views = ds, sampler, seed, rows, two_views
    self.arrays = Sampler.arrays(ds.train_labels, ds.num_classes)

  def __call__(self, step: int) -> dict:
    ds, rows = self.ds, self.rows
    positions = self.sampler.host_indices(self.arrays, self.seed, int(step))[rows]
    records = ds.train_records[positions]
    examples = read_records(ds.train_source, records)
    images, keys = [], []
    for row, ex in zip(range(rows.start, rows.stop), examples):
      # The crop of a row depends on its global position only: any process count
      # produces the same global batch.
      rng = np.random.default_rng([self.seed, 1, int(step), row])
      images.append(random_resized_crop(rng, ex['image'], ds.image_size))
      if self.two_views:
        keys.append(random_resized_crop(rng, ex['image'], ds.image_size, scale=MOCO_KEY_SCALE))
    out = {'images': np.stack(images), 'labels': ds.train_labels[positions].astype(np.int32)}
    if self.two_views:
      out['key_images'] = np.stack(keys)
    return out


def train_iterator(ds: HostDataset, sampler: Sampler, seed: int, total_steps: int,
                   rows: slice | None = None, two_views: bool = False, start: int = 0):
  """A grain iterator over this process's ``rows`` (default: all) of the global batches of
  steps ``start .. total_steps - 1``. A step's batch depends on the seed and the step
  alone (``_TrainBatch``), so a run resumed at step ``start`` reads the very batches an
  unbroken run reads from there, on any number of processes, threads or workers."""
  import grain

  rows = rows or slice(0, sampler.batch_size)
  dataset = grain.MapDataset.range(start, total_steps).map(_TrainBatch(ds, sampler, seed, rows, two_views))
  it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=ds.threads, prefetch_buffer_size=2 * ds.threads))
  if ds.workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=ds.workers))
  return iter(it_ds)


class _EvalBatch:
  def __init__(self, ds: HostDataset, global_batch: int, rows: slice, split: str):
    self.ds, self.global_batch, self.rows = ds, global_batch, rows
    self.source, self.records = getattr(ds, f'{split}_source'), getattr(ds, f'{split}_records')

  def __call__(self, index: int) -> dict:
    ds = self.ds
    n = len(self.records)
    start = index * self.global_batch
    positions = np.arange(start + self.rows.start, start + self.rows.stop)
    valid = positions < n
    examples = read_records(self.source, self.records[positions[valid]])
    images = np.zeros((len(positions), ds.image_size, ds.image_size, 3), np.uint8)  # padding rows
    for i, ex in enumerate(examples):
      images[i] = center_crop(ex['image'], ds.resize_size, ds.image_size)
    return {'images': images}


def test_batches(ds: HostDataset, global_batch: int, rows: slice | None = None, split: str = 'test'):
  """This process's ``rows`` (default: all) of every global evaluation batch of ``split``
  (``test`` or ``val``; the last batch padded with zeros); the caller keeps the first
  ``len(records)`` predictions."""
  import grain

  rows = rows or slice(0, global_batch)
  num_batches = math.ceil(len(getattr(ds, f'{split}_records')) / global_batch)
  dataset = grain.MapDataset.range(num_batches).map(_EvalBatch(ds, global_batch, rows, split))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=ds.threads, prefetch_buffer_size=2 * ds.threads)))
