"""ltjax entry point:

  python -m ltjax.main --config configs/digits_lt.py --workdir runs/digits
  python -m ltjax.main --config configs/cifar_lt.py:dataset=cifar100,imb=100,method=bsce \
      --workdir runs/c100 --config.data.data_dir ~/tensorflow_datasets
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and its arguments, e.g. configs/cifar_lt.py:dataset=cifar100,imb=100. '
    'Override any field with --config.a.b=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and results.json.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 8, 'How many XLA devices to split the CPU into (ignored on GPU/TPU). '
    'On a 2-core machine, 8 trained ResNet-32 faster than 1 (see bench/README.md).')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show INFO logs (orbax, jax).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _VERBOSE.value:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax

  # Before any backend starts: only the CPU backend reads it.
  jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from ltjax import pipeline

  pipeline.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
