"""Subsets given as a published list of files (Places-LT: OLTR's ``Places_LT_train.txt``
and ``Places_LT_val.txt`` over TFDS ``places365_small``'s training split): reading a list
(path or URL, checked by its sha256) and finding its files among a split's records."""
from __future__ import annotations

import numpy as np

from ltjax import files
from ltjax.errors import ConfigError, DatasetNotPreparedError


# The config field of each list, and the OLTR file it names.
_LISTS = {'data.file_list': 'Places_LT_train.txt', 'data.val_file_list': 'Places_LT_val.txt'}


def normalize_file_name(name: str) -> str:
  """A Places image path as OLTR's lists, TFDS, and Kang et al.'s and BALMS's copies of the
  lists write it, as one key: no leading slash, ``data_256/`` or ``train/`` folder, no
  one-letter folder, a category's parts joined by ``/`` (Kang's copies join them by
  ``-``): ``/data_256/a/apartment_building/outdoor/00000093.jpg`` and
  ``train/apartment_building-outdoor/00000093.jpg`` are both
  ``apartment_building/outdoor/00000093.jpg``."""
  name = name.strip().lstrip('/')
  for prefix in ('data_256/', 'train/'):
    if name.startswith(prefix):
      name = name[len(prefix):]
      break
  parts = name.split('/')
  if len(parts) < 2:
    return name
  if len(parts) > 2 and len(parts[0]) == 1:  # OLTR's and TFDS's first-letter folder
    parts = parts[1:]
  return '/'.join([*(p.replace('-', '/') for p in parts[:-1]), parts[-1]])


def select_by_file_list(file_names, entries, field: str = 'data.file_list') -> np.ndarray:
  """Record indices of the listed files, in list order: ``entries`` are lines ``path label``
  (Places-LT's ``Places_LT_train.txt``, or the list of config ``field``). A listed file that
  the split lacks is an error."""
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
        f'split (first: {missing[0]!r}). Fix: check that --config.{field} is the list of this '
        f'dataset (Places-LT: {_LISTS[field]} of OLTR) and that the split is fully prepared.')
  return np.asarray(records, np.int64)


def read_file_list(location: str, sha256: str = '', field: str = 'data.file_list') -> list[str]:
  """The lines of a file list from a path or URL (downloaded once into ~/.cache/ltjax, never
  stored in the project), checked against ``sha256`` when given; ``field``
  (``data.file_list``, the training list, or ``data.val_file_list``) names the config
  field in errors."""
  if not location:
    raise ConfigError(f'places_lt needs --config.{field}: the path or URL of OLTR\'s {_LISTS[field]} '
                      f'(https://github.com/zhmiao/OpenLongTailRecognition-OLTR, "Places_LT_v2" lists), '
                      f'and --config.{field}_sha256 to pin it.')
  path = files.fetch(location, sha256, what=f'the file list {location} (--config.{field})',
                     error=DatasetNotPreparedError)
  with open(path, 'rb') as f:
    data = f.read()
  return data.decode().splitlines()
