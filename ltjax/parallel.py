"""Mesh and shardings: data parallelism over every device of every process with ``jax.jit``.

One mesh axis, ``data``. Batches are sharded along it; parameters, optimizer state
and the small on-device datasets are replicated. BatchNorm statistics computed on a
sharded batch under ``jax.jit`` are over the global batch.

Multi-host (TPU pods, SLURM, several local processes): ``initialize`` starts
``jax.distributed`` before anything touches a device; the mesh then spans every
process's devices. Each process either holds the same small dataset (replicated:
the step draws the same global indices everywhere) or reads its own shard from a host
pipeline, whose process-local batches ``global_batch`` joins into one global array.
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ltjax.errors import ConfigError, ProcessStopped

DATA = 'data'


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> None:
  """Starts ``jax.distributed``: with an explicit coordinator (local multi-process runs), or
  with ``auto`` from what the launcher provides (TPU pod metadata, SLURM variables).
  Does nothing for a single-process run."""
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError(f'--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < '
                        f'num_processes (got {num_processes}, {process_id}).')
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
  elif auto:
    jax.distributed.initialize()


def is_main() -> bool:
  """Process 0 writes results, logs and figures, and shows progress."""
  return jax.process_index() == 0


def processes_named(ids: list[int]) -> str:
  """``process 1`` or ``processes 1, 3``: for messages."""
  return f'process {ids[0]}' if len(ids) == 1 else f'processes {", ".join(map(str, ids))}'


def on_main(fn, what: str):
  """Runs ``fn`` on process 0 alone and returns its value there (None on the others), and
  every process learns whether it failed: process 0 raises its own error, the others a
  ``ProcessStopped`` that points at it. Every process waits for it. Without this a refusal
  that only process 0 can make (the workdir's lock, a workdir it cannot write, a file
  only its results take) would leave the others waiting at the next barrier until JAX's
  heartbeat timeout."""
  error = value = None
  if is_main():
    try:
      value = fn()
    except BaseException as e:  # whatever stops process 0 (Ctrl-C too) must stop every process
      error = e
  failed = error is not None
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))
  if error is not None:
    raise error
  if failed:
    raise ProcessStopped(f'process 0 stopped the run ({what}); the message in its own output says why '
                         f'and how to fix it.')
  return value


def agreed(fn, what: str):
  """Runs ``fn`` on every process and returns its value; where it raises on any process,
  every process raises: that one its own error, the others a ``ProcessStopped`` that names
  it. For what each process checks or reads of its own view (a dataset, a checkpoint
  folder named in the config) before the next collective: without it, a refusal on one
  host alone would leave the others waiting there until JAX's heartbeat timeout."""
  if jax.process_count() == 1:
    return fn()
  error, value = None, None
  try:
    value = fn()
  except BaseException as e:  # whatever stops one process must stop every process
    error = e
  failed = failed_processes(error is not None)
  if error is not None:
    raise error
  if failed:
    their = 'its' if len(failed) == 1 else 'their'
    raise ProcessStopped(f'{processes_named(failed)} stopped the run ({what}); the message in {their} own output '
                         f'says why and how to fix it.')
  return value


def failed_processes(failed: bool) -> list[int]:
  """The processes where ``failed`` is true: every process calls it and learns all of them
  (e.g. which could not read a checkpoint, so that all set it aside alike)."""
  if jax.process_count() == 1:
    return [0] if failed else []
  import numpy as np
  from jax.experimental import multihost_utils

  flags = np.asarray(multihost_utils.process_allgather(np.int32(failed))).reshape(-1)
  return [int(i) for i in np.flatnonzero(flags)]


def of_process_0(values: list[int]) -> list[int]:
  """Process 0's list of ints (int32), on every process: all then go through the same
  items in the same order, whatever each one's own view (e.g. of a shared folder)."""
  if jax.process_count() == 1:
    return list(values)
  import numpy as np
  from jax.experimental import multihost_utils

  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  if n == 0:
    return []
  own = np.asarray(values, np.int32) if is_main() else np.zeros(n, np.int32)
  return [int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(own))]


def differ_from_process_0(values: list[int]) -> tuple[list[int], list[int]]:
  """Process 0's ``values`` (ints) and the processes whose own differ from them (e.g. a
  fingerprint of the data each one loaded), on every process."""
  reference = of_process_0(values)
  return reference, failed_processes(list(values) != reference)


def barrier(name: str) -> None:
  """All processes wait here (e.g. until process 0 has written a phase's results.json)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def local_rows(mesh, global_batch_size: int) -> slice:
  """The rows of a global batch that this process's devices hold (``global_batch`` then
  places this process's batch there): a contiguous block of ``B / process_count``."""
  index = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  lo = min(ix[0].start or 0 for ix in index.values())
  hi = max(global_batch_size if ix[0].stop is None else ix[0].stop for ix in index.values())
  per_process = global_batch_size // jax.process_count()
  if hi - lo != per_process:
    raise ValueError(f'the devices of process {jax.process_index()} do not hold one contiguous block '
                     f'of the batch ({lo}..{hi} of {global_batch_size}); build the mesh with each '
                     f'process\'s devices together.')
  return slice(lo, hi)


def global_batch(local: dict, mesh) -> dict:
  """Process-local batches (this process's rows, leading axis) -> global arrays sharded on
  ``data``; each process's batch lands on the rows ``local_rows`` names."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


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
  if n != len(devices) and jax.process_count() > 1:
    raise ConfigError(f'num_devices={n}: a multi-process run uses every device of every process '
                     f'({len(devices)}); leave --config.run.num_devices at 0.')
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh, what: str = 'train.batch_size') -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'{what}={batch_size} is not divisible by the {n} devices of the mesh; '
                     f'choose a multiple of {n} or set --config.run.num_devices.')
