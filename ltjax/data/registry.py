"""Every dataset ltjax knows, one ``DatasetSpec`` each: where it comes from (TFDS name and
splits), its title, its fixed facts (classes, images in the largest class), what a user
must do by hand to prepare it, and the loader that builds it. ``load(config.data)`` is
the one entry point; adding a dataset is one entry here (and a loader if no existing one
fits).

- ``kind='arrays'``: an ``arrays.ArrayDataset`` that lives on the device (digits, CIFAR-LT).
- ``kind='host'``: a ``host.HostDataset`` read batch by batch by the host pipeline.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ltjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str  # config.data.name
  title: str  # in tables, logs and figures
  kind: str  # arrays | host
  loader: Callable  # loader(spec, config) -> ArrayDataset | HostDataset
  tfds_name: str = ''
  train_split: str = 'train'
  test_split: str = 'test'  # the balanced split that results are reported on
  # A balanced split held out of training, for choosing an epoch (run.val_every_epochs);
  # '' where the dataset has none (CIFAR-LT, iNaturalist 2018: its test is the validation split)
  val_split: str = ''
  # or the config field that names one: an image folder's data.val_dir, Places-LT's
  # data.val_file_list (a file list over the training split, as data.file_list)
  val_from: str = ''
  num_classes: int = 0  # fixed datasets; 0: read from the source
  images_per_class: int = 0  # CIFAR: n_max of the long-tailed profile
  file_key: str = ''  # the feature that names a record's file
  file_list: bool = False  # the training subset is a published file list (data.file_list)
  manual: str = ''  # how to prepare it when TFDS cannot download it alone


def _digits(spec, config):
  from ltjax.data import digits

  dc = config.data
  return digits.load_digits_lt(dc.imbalance_factor, dc.test_per_class, dc.split_seed, title=spec.title)


def _cifar(spec, config):
  from ltjax.data import cifar

  dc, rc = config.data, config.run
  return cifar.load_cifar_lt(spec, dc.imbalance_factor, rc.data_dir or None, rc.download, dc.split_seed,
                             rc.cache_dir or None)


def _large(spec, config):
  from ltjax.data import large

  return large.load_large(spec, config)


def _folder(spec, config):
  from ltjax.data import folder

  return folder.load_folder(spec, config)


_IMAGENET_MANUAL = (
    'ImageNet-LT is built from the ILSVRC2012 tars, which need an image-net.org account: put '
    'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual/, then (with '
    'TensorFlow installed) run `tfds build imagenet_lt --file_format=array_record --data_dir DATA_DIR`.')

DATASETS = {s.name: s for s in (
    # scikit-learn's 8x8 digits, shipped with the package: the offline default.
    DatasetSpec('digits', 'digits-LT', 'arrays', _digits, num_classes=10),
    DatasetSpec('cifar10', 'CIFAR-10-LT', 'arrays', _cifar, tfds_name='cifar10', num_classes=10,
                images_per_class=5000),
    DatasetSpec('cifar100', 'CIFAR-100-LT', 'arrays', _cifar, tfds_name='cifar100', num_classes=100,
                images_per_class=500),
    # test = the 50,000 ILSVRC validation images; validation = OLTR's 20 a class (from ILSVRC train)
    DatasetSpec('imagenet_lt', 'ImageNet-LT', 'host', _large, tfds_name='imagenet_lt',
                val_split='validation', file_key='file_name', manual=_IMAGENET_MANUAL),
    # test = the official validation split (24,426)
    DatasetSpec('inat18', 'iNaturalist 2018', 'host', _large, tfds_name='i_naturalist2018',
                test_split='validation', file_key='id'),
    # Places-LT: OLTR's file lists over places365_small's training split (train, and the
    # validation images of data.val_file_list); test = places365's validation split
    DatasetSpec('places_lt', 'Places-LT', 'host', _large, tfds_name='places365_small',
                test_split='validation', val_from='data.val_file_list', file_key='filename', file_list=True),
    # Your own images: data.train_dir (and data.test_dir, data.val_dir) of class subfolders.
    DatasetSpec('folder', 'image folder', 'host', _folder, val_from='data.val_dir'),
)}


def get(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ConfigError(f'unknown data.name {name!r}; choose one of {", ".join(DATASETS)}.')
  return DATASETS[name]


def load(config):
  """The dataset ``config.data.name`` names, as ``config.data`` and ``config.run`` (where
  to read it) say: an ``ArrayDataset`` (small, on the device) or a ``HostDataset``
  (large, read by the host pipeline)."""
  spec = get(config.data.name)
  return spec.loader(spec, config)
