"""Test setup: 8 simulated CPU devices (before JAX starts), paths to real data."""
import os
import pathlib

import jax

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def real_tfds_dir():
  """Prepared TFDS data (real CIFAR-10): $LTJAX_TFDS_DIR, else ../shared/tfds beside the repo."""
  path = os.environ.get('LTJAX_TFDS_DIR') or str(REPO.parent / 'shared' / 'tfds')
  return path if os.path.isdir(os.path.join(path, 'cifar10')) else None


@pytest.fixture(scope='session')
def cifar10_dir():
  path = real_tfds_dir()
  if path is None:
    pytest.skip('real CIFAR-10 not found (set LTJAX_TFDS_DIR or put it in ../shared/tfds)')
  return path
