"""Reading TFDS: opening a prepared split (with the error that says how to prepare it),
decoding a whole split into arrays, and scanning a few features of every record."""
from __future__ import annotations

import numpy as np

from ltjax.errors import DatasetNotPreparedError


def open_source(name: str, split: str, data_dir, download: bool, manual: str = '', decoders=None):
  """The random-access source (``tfds.data_source``) of a prepared split. Nothing is
  downloaded unless ``download``; a split that is not prepared is a
  ``DatasetNotPreparedError`` that says where ltjax looked and how to prepare it
  (``manual``: the dataset's own instructions, for data that needs an account)."""
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
  except Exception as e:  # TFDS raises several types for "not there"
    first_error = e
  if download:
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(file_format='array_record')  # needs internet and TensorFlow
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
  where = data_dir or '~/tensorflow_datasets'
  said = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
  raise DatasetNotPreparedError(
      f'TFDS dataset {name!r} ({split} split) is not prepared in {where}: ltjax reads '
      f'{where}/{name}/<version>/ in ArrayRecord format and downloads nothing unless asked.\n'
      f'Fix: point --config.run.data_dir at the folder that holds {name}/, or prepare it on a '
      f'machine with internet: `pip install tensorflow` and add --config.run.download=True '
      f'(or run `tfds build {name} --file_format=array_record --data_dir DIR`).\n'
      f'(TFDS said: {said})' + (f'\n{manual}' if manual else '')) from first_error


def class_names(source, num_classes: int) -> list[str]:
  """The label names a TFDS source declares (mocked sources may have none: '0', '1', ...)."""
  try:
    return list(source.dataset_info.features['label'].names)
  except Exception:
    return [str(c) for c in range(num_classes)]


def read_all(source, desc: str):
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


def scan(source, keys: tuple[str, ...], desc: str) -> dict[str, list]:
  """Reads ``keys`` of every record (labels, file names) with a progress bar; open the
  source with ``decoders={'image': tfds.decode.SkipDecoding()}`` to skip the images."""
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


def save_npz(path: str, compressed: bool = False, **arrays) -> None:
  """``np.savez`` written atomically (``files.write_atomic``)."""
  from ltjax import files

  files.write_atomic(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))
