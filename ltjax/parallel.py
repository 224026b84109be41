"""Mesh and shardings: data parallelism over every device with ``jax.jit``.

One mesh axis, ``data``. Batches are sharded along it; parameters, optimizer state
and the small on-device datasets are replicated. BatchNorm statistics computed on a
sharded batch under ``jax.jit`` are over the global batch.
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ltjax.errors import ConfigError

DATA = 'data'


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (0: all of them).

  Axis type Auto: the step leaves it to the compiler to propagate shardings from the
  few constraints it states (batch on ``data``), rather than annotating every gather.
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ConfigError(f'num_devices={n} but only {len(devices)} {devices[0].platform} devices '
                     f'are visible; on CPU, start with --cpu_devices={n}.')
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh, what: str = 'train.batch_size') -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'{what}={batch_size} is not divisible by the {n} devices of the mesh; '
                     f'choose a multiple of {n} or set --config.num_devices.')
