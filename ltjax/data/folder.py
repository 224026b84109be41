"""Your own data: a folder of class subfolders (the layout of torchvision's and TFDS's
``ImageFolder``), read by the host pipeline like the large datasets.

  DIR/<class name>/<image>    any common format and mode (JPEG, PNG, grayscale, RGBA, ...)

Class names are the subfolder names (sorted); counts and shot groups come from the
training folder. Every image is decoded once when the dataset is loaded, so an image
that cannot be read stops the run before training with its path
(``data.skip_bad_images``: skip and count them instead). Without a test folder a stated,
seeded, class-balanced share of the training images is held out; ``data.imbalance_factor``
> 1 draws a long-tailed subset of the (rest of the) training folder with the CIFAR-LT
profile.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ltjax.data import longtail
from ltjax.errors import DatasetNotPreparedError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


def list_images(directory: str) -> list[str]:
  """The image files under ``directory`` (by extension, hidden ones left out), recursively,
  in sorted order."""
  found = []
  for root, dirs, names in os.walk(directory):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(names)
              if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
  return found


def scan(directory: str, role: str) -> tuple[list[str], list[str], np.ndarray]:
  """``(class_names, files, labels)`` of a folder of class subfolders, in sorted order."""
  if not directory or not os.path.isdir(directory):
    raise DatasetNotPreparedError(
        f'the {role} folder {directory!r} does not exist. Fix: give a folder with one subfolder '
        f'per class (DIR/<class>/<image>), e.g. configs/folder_lt.py:train=DIR.')
  classes = sorted(d for d in os.listdir(directory)
                   if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))
  if not classes:
    raise DatasetNotPreparedError(
        f'the {role} folder {directory} holds no class subfolders. Fix: put each class\'s images in '
        f'a subfolder named after the class: {directory}/<class>/<image>.')
  files, labels, empty = [], [], []
  for label, name in enumerate(classes):
    found = list_images(os.path.join(directory, name))
    if not found:
      empty.append(name)
    files += found
    labels += [label] * len(found)
  if empty:
    raise DatasetNotPreparedError(
        f'{len(empty)} class folder(s) of {directory} hold no image ({", ".join(empty[:5])}'
        f'{", ..." if len(empty) > 5 else ""}); images end in {", ".join(IMAGE_EXTENSIONS)}. Fix: add '
        f'images or remove the empty folders.')
  return classes, files, np.asarray(labels, np.int64)


def decode(path: str) -> np.ndarray:
  """An image file as uint8 RGB, whatever its format and mode."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def check_images(files: list[str], skip_bad: bool, threads: int, role: str) -> np.ndarray:
  """Decodes every file once; returns the mask of readable ones. A bad file is an error
  naming it unless ``skip_bad``."""
  from tqdm.auto import tqdm

  def readable(path):
    try:
      decode(path)  # exactly what the pipeline will do with it
      return True
    except Exception:  # PIL raises several types for broken files
      return False

  with ThreadPoolExecutor(max(threads, 1)) as pool:
    ok = np.fromiter(tqdm(pool.map(readable, files), total=len(files), desc=f'checking {role} images',
                          unit='img', leave=False), bool, len(files))
  bad = [f for f, good in zip(files, ok) if not good]
  if bad and not skip_bad:
    raise DatasetNotPreparedError(
        f'{len(bad)} {role} image(s) cannot be decoded (first: {bad[0]}). Fix: remove or replace '
        f'them, or pass --config.data.skip_bad_images=True to skip them (the run reports how many).')
  return ok


class FolderSource:
  """Random access to decoded images, as a TFDS data source gives (``host.read_records``)."""

  def __init__(self, files: list[str], labels: np.ndarray):
    self.files, self.labels = list(files), np.asarray(labels)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    return {'image': decode(self.files[int(index)]), 'label': int(self.labels[int(index)])}


def holdout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(train, test)`` indices: per class (NumPy generator seeded with ``seed``) the same
  number of images, ``share`` of the smallest class (at least 1), held out for testing."""
  rng = np.random.default_rng(seed)
  counts = np.bincount(labels)
  per_class = max(1, int(round(share * counts.min())))
  if per_class >= counts.min():
    raise DatasetNotPreparedError(
        f'holding out {per_class} image(s) a class leaves none to train on in the smallest class '
        f'({counts.min()} images). Fix: give a test folder (test=DIR) or lower --config.data.holdout.')
  test = np.concatenate([rng.permutation(np.where(labels == c)[0])[:per_class] for c in range(len(counts))])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, np.sort(test)


def folder_title(directory: str) -> str:
  """A table title for a training folder: its name, or its parent's where the folder is
  named for its role (``.../birds/train`` -> ``birds``)."""
  path = os.path.normpath(os.path.abspath(directory))
  name = os.path.basename(path)
  if name.lower() in ('train', 'training', 'train_set', 'trainset') and os.path.basename(os.path.dirname(path)):
    return os.path.basename(os.path.dirname(path))
  return name


def load_folder(spec, config):
  """``spec``: the registry's ``folder`` entry; ``config.data``: train_dir, test_dir,
  val_dir (a validation folder, '' for none), holdout, imbalance_factor, split_seed,
  skip_bad_images and the host pipeline's sizes."""
  from ltjax.data.host import HostDataset

  dc, rc = config.data, config.run
  classes, files, labels = scan(dc.train_dir, 'training')
  ok = check_images(files, dc.skip_bad_images, rc.host_threads, 'training')
  skipped = int((~ok).sum())
  files, labels = [f for f, good in zip(files, ok) if good], labels[ok]

  def other_folder(directory, role):
    """The test or validation folder: the training folder's classes, its images checked."""
    nonlocal skipped
    other_classes, other_files, other_labels = scan(directory, role)
    if other_classes != classes:
      only_train = sorted(set(classes) - set(other_classes))
      only_other = sorted(set(other_classes) - set(classes))
      raise DatasetNotPreparedError(
          f'the {role} folder {directory} has other classes than the training folder {dc.train_dir} '
          f'(only in training: {only_train[:5]}; only in {role}: {only_other[:5]}). Fix: give both the '
          f'same class subfolders.')
    other_ok = check_images(other_files, dc.skip_bad_images, rc.host_threads, role)
    skipped += int((~other_ok).sum())
    return [f for f, good in zip(other_files, other_ok) if good], other_labels[other_ok]

  val = {}
  if dc.val_dir and rc.val_every_epochs:  # read only where a run validates, as data/large.py
    val_files, val_labels = other_folder(dc.val_dir, 'validation')
    val = dict(val_source=FolderSource(val_files, val_labels), val_records=np.arange(len(val_files)),
               val_labels=np.asarray(val_labels, np.int32))
  if dc.test_dir:
    test_files, test_labels = other_folder(dc.test_dir, 'test')
    train_idx, title_note = np.arange(len(files)), ''
  else:
    train_idx, test_idx = holdout_split(labels, dc.holdout, dc.split_seed)
    test_files, test_labels = [files[i] for i in test_idx], labels[test_idx]
    title_note = (f' (test: {len(test_idx) // len(classes)} held-out training images a class, '
                  f'split_seed {dc.split_seed})')
  if dc.imbalance_factor > 1:  # a long tail drawn from a (roughly balanced) folder
    counts = np.bincount(labels[train_idx], minlength=len(classes))
    want = longtail.longtail_counts(int(counts.min()), len(classes), dc.imbalance_factor)
    rng = np.random.default_rng(dc.split_seed)
    train_idx = np.sort(np.concatenate([rng.permutation(train_idx[labels[train_idx] == c])[:n]
                                        for c, n in enumerate(want)]))
  train_files, train_labels = [files[i] for i in train_idx], labels[train_idx]
  counts = np.bincount(train_labels, minlength=len(classes))
  source = FolderSource(train_files, train_labels)
  test_source = FolderSource(test_files, test_labels)
  ds = HostDataset(
      name='folder', title=f'{folder_title(dc.train_dir)}{title_note}',
      train_source=source, train_records=np.arange(len(train_files)), train_labels=train_labels.astype(np.int32),
      test_source=test_source, test_records=np.arange(len(test_files)), test_labels=np.asarray(test_labels, np.int32),
      num_classes=len(classes), imbalance_factor=float(counts.max() / max(counts.min(), 1)), class_names=classes,
      image_size=dc.image_size, resize_size=dc.resize_size, threads=rc.host_threads, workers=rc.host_workers,
      skipped_images=skipped, **val)
  return ds
