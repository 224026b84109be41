"""The large datasets (ImageNet-LT, iNaturalist 2018, Places-LT) as a ``host.HostDataset``
read by the host pipeline. Only labels (and Places' file names) are read here, without
decoding an image (cached as ``.npz`` in ``run.cache_dir`` when set)."""
from __future__ import annotations

import contextlib
import os

import numpy as np

from ltjax.data import file_lists, tfds_io
from ltjax.errors import DatasetNotPreparedError


def load_large(spec, config):
  """``spec``: a ``registry.DatasetSpec`` with ``kind == 'host'``; ``config``: the run's
  config (``data``: mock_examples, the image sizes, for a file-list subset the list and
  its checksum; ``run``: data_dir, download, cache_dir, the reader counts)."""
  import tensorflow_datasets as tfds

  from ltjax.data.host import HostDataset

  name, data_config, rc = spec.name, config.data, config.run
  data_dir = rc.data_dir or None
  mock = data_config.mock_examples
  context = (tfds.testing.mock_data(num_examples=mock, policy=tfds.testing.MockPolicy.USE_CODE)
             if mock else contextlib.nullcontext())
  skip = None if mock else {'image': tfds.decode.SkipDecoding()}
  with context:
    open_split = lambda split, decoders=None: tfds_io.open_source(
        spec.tfds_name, split, data_dir, rc.download, spec.manual, decoders)
    train, test = open_split(spec.train_split), open_split(spec.test_split)
    scan_train = open_split(spec.train_split, skip) if skip else train
    scan_test = open_split(spec.test_split, skip) if skip else test
    # The validation split is opened only when a run evaluates it (run.val_every_epochs): a
    # folder prepared without it still trains.
    val = open_split(spec.val_split) if spec.val_split and rc.val_every_epochs else None
    scan_val = (open_split(spec.val_split, skip) if skip else val) if val is not None else None
  cache = (os.path.join(rc.cache_dir, f'{name}_labels{"_mock" if mock else ""}.npz')
           if rc.cache_dir else '')
  cached = {}
  if cache and os.path.exists(cache):
    with np.load(cache) as z:
      cached = {k: z[k] for k in z.files}
  if cached:
    tr_labels, te_labels, names = cached['train_labels'], cached['test_labels'], list(cached['train_files'])
  else:
    keys = ('label', spec.file_key) if spec.file_list else ('label',)
    tr = tfds_io.scan(scan_train, keys, f'{name} train labels')
    te = tfds_io.scan(scan_test, ('label',), f'{name} test labels')
    tr_labels, te_labels = np.asarray(tr['label'], np.int64), np.asarray(te['label'], np.int64)
    names = tr.get(spec.file_key, [])
  va_labels = cached.get('val_labels')
  if val is not None and va_labels is None:
    va_labels = np.asarray(tfds_io.scan(scan_val, ('label',), f'{name} validation labels')['label'], np.int64)
  if cache and (not cached or (val is not None and 'val_labels' not in cached)):
    extra = {} if va_labels is None else {'val_labels': va_labels}
    tfds_io.save_npz(cache, train_labels=tr_labels, test_labels=te_labels, train_files=np.array(names), **extra)
  num_classes = train.dataset_info.features['label'].num_classes
  if spec.file_list:
    records = file_lists.select_by_file_list(
        names, file_lists.read_file_list(data_config.file_list, data_config.file_list_sha256))
  else:
    records = np.arange(len(tr_labels))
  if spec.file_list and rc.val_every_epochs:
    # Places-LT's validation images are training-split records too (OLTR's Places_LT_val.txt),
    # read only where a run validates, as the validation splits above.
    field = 'data.val_file_list'
    val_records = file_lists.select_by_file_list(names, file_lists.read_file_list(
        data_config.val_file_list, data_config.val_file_list_sha256, field), field)
    shared = np.intersect1d(records, val_records)
    if len(shared):
      raise DatasetNotPreparedError(
          f'{name}: {len(shared)} of the {len(val_records)} validation files are also in the training list '
          f'(first: {names[shared[0]]!r}). Fix: check that --config.data.val_file_list is the validation '
          f'list (Places-LT: Places_LT_val.txt) and --config.data.file_list the training list.')
    val, va_labels = train, tr_labels[val_records]
  else:
    val_records = None if va_labels is None else np.arange(len(va_labels))
  labels = tr_labels[records].astype(np.int32)
  counts = np.bincount(labels, minlength=num_classes)
  if not mock and counts.min() == 0:
    raise DatasetNotPreparedError(
        f'{name}: {int((counts == 0).sum())} of {num_classes} classes have no training image; the '
        f'TFDS split or the file list is incomplete. Fix: prepare the dataset again.')
  present = counts[counts > 0]
  return HostDataset(
      name=name, title=spec.title, train_source=train, train_records=records, train_labels=labels,
      test_source=test, test_records=np.arange(len(te_labels)), test_labels=te_labels.astype(np.int32),
      **({} if val is None else dict(val_source=val, val_records=val_records,
                                     val_labels=va_labels.astype(np.int32))),
      num_classes=num_classes, imbalance_factor=float(present.max() / present.min()),
      class_names=tfds_io.class_names(train, num_classes), image_size=data_config.image_size,
      resize_size=data_config.resize_size, threads=rc.host_threads, workers=rc.host_workers)
