"""ltjax entry point: flags -> config -> ``pipeline.run(config, workdir)``.

Exit status: 0 done; 1 an error the message explains (nothing lost: rerun after the
fix); 2 bad flags or config arguments; 75 (``errors.EXIT_PREEMPTED``) stopped by SIGTERM
or SIGINT after saving a checkpoint at the step it reached: the same command resumes.

  python -m ltjax.main --config configs/digits_lt.py --workdir runs/digits
  python -m ltjax.main --config configs/cifar_lt.py:dataset=cifar100,imb=100,method=bsce \
      --workdir runs/c100 --config.run.data_dir ~/tensorflow_datasets
"""
import errno
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and its arguments, e.g. configs/cifar_lt.py:dataset=cifar100,imb=100. '
    'Override any field with --config.a.b=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and results.json.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 8, 'How many XLA devices to split the CPU into (ignored on GPU/TPU). '
    'On a 2-core machine, 8 trained ResNet-32 faster than 1 (see bench/README.md).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'Multi-process run: host:port of process 0 (launch/local.sh sets it); '
    'with --num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Multi-process run: how many processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Multi-process run: this process, 0 .. num_processes-1.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() with the cluster the launcher provides '
    '(TPU pod workers, SLURM); see launch/.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show INFO logs (orbax, jax) and tracebacks.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str, code: int):
  sys.stderr.write(f'ltjax: error: {message}\n')
  sys.exit(code)


def _fail_disk(message: str):
  """A disk that cannot be written (full, read-only): the message, then exit at once.
  The libraries' exit handlers would try that disk again (tensorboardX's final flush)
  and bury the message under their tracebacks; what they hold was not written anyway, and
  every finished checkpoint is intact."""
  sys.stderr.write(f'ltjax: error: {message}\n')
  sys.stdout.flush()
  sys.stderr.flush()
  _leave_distributed()
  os._exit(1)


def _leave_distributed(seconds: float = 10):
  """Before the hard exit of a multi-process run's process: leave JAX's distributed
  service, waiting up to ``seconds`` for the others (told of the failure, they exit too).
  Process 0 holds the service: were it gone before the others' own shutdown, they would
  abort there (a C++ check failure) instead of exiting with their message."""
  import threading

  import jax

  if jax.process_count() > 1:
    leave = threading.Thread(target=jax.distributed.shutdown, daemon=True)
    leave.start()
    leave.join(seconds)


def _config_argument(argv) -> str | None:
  """The value of ``--config`` (``configs/x.py:args``) on the command line."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_package_on_path(argv):
  """Config files import their shared parts as ``from configs import common``: the folder
  that holds the config's ``configs/`` goes first on ``sys.path``, so that a config file
  runs from any working directory."""
  value = _config_argument(argv)
  if value:
    folder = os.path.dirname(os.path.abspath(value.split(':', 1)[0]))
    if os.path.basename(folder) == 'configs':
      sys.path.insert(0, os.path.dirname(folder))


def _refuse_method_override(argv):
  """``--config.method=X`` would change the recipe but keep the numbers the config file
  chose for its own method when it was built (schedule, weight decay, the classifier
  stage's sampler turns): the method belongs in the config string."""
  if 'method' not in config_flags.get_override_values(flags.FLAGS['config']):
    return
  value = _config_argument(argv) or 'CONFIG.py'
  path, _, args = value.partition(':')
  args = ','.join([a for a in args.split(',') if a and not a.startswith('method=')]
                  + [f'method={_CONFIG.value.method}'])
  _fail(f'--config.method={_CONFIG.value.method} would keep the numbers {path} chose for its own method '
        f'(schedule, weight decay, sampler) when it was built. Fix: name the method in the config string: '
        f'--config {path}:{args}', 2)


def _config_fields_hint(argv) -> str:
  """How to see the fields of the config that ``argv`` names."""
  path = (_config_argument(argv) or 'CONFIG.py').split(':', 1)[0]
  return f'print them with: python -c "import runpy; print(runpy.run_path(\'{path}\')[\'get_config\']())"'


def _no_config_file(argv, why: str):
  """``--config`` names no loadable config file: what is wrong, and the config files there are."""
  import difflib
  import glob

  value = _config_argument(argv) or ''
  path = value.split(':', 1)[0]
  shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  here = []
  for f in sorted(glob.glob(os.path.join(shipped, '*.py'))):
    with open(f) as source:
      if 'def get_config(' in source.read():
        here.append(os.path.relpath(f))
  names = {os.path.splitext(os.path.basename(f))[0]: f for f in here}
  near = [names[n] for n in difflib.get_close_matches(os.path.splitext(os.path.basename(path))[0], names, n=1,
                                                      cutoff=0.75)]
  _fail(f'--config {value}: {why}. Fix: give a config file (a path, then :arguments if any)'
        + (f', e.g. {near[0]}' if near else '') + (f'; ltjax\'s own: {", ".join(here)}' if here else '') + '.', 2)


def _parse_flags(argv):
  _config_package_on_path(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text:  # the config file raised: its message, no traceback
      raised = [l.strip() for l in text.splitlines() if l.strip().startswith(('ltjax.errors.', 'ConfigError'))]
      if raised:
        _fail(f'{raised[-1].split(": ", 1)[-1]} (in {text.split(": Error whilst")[0].removeprefix("flag ")})', 2)
    if text.startswith('flag --config.'):  # a value of the wrong type for its field
      _fail(f'{text.removeprefix("flag ").rstrip(".")}. Fix: give the field a value of its type '
            f'({_config_fields_hint(argv)}).', 2)
    _fail(f'{e}\nPass --helpshort to see the flags.', 2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e.args[0] if e.args else e)
    if "has no attribute 'get_config" in message:
      _no_config_file(argv, 'the file has no get_config(): it is not a config file')
    # A --config.a.b=value override naming a field the locked config does not have.
    # ml_collections' KeyError text, at times quoted twice: 'name'\nDid you mean "..." instead of "name"?
    message = message.replace('\\n', '\n').replace("\\'", "'")
    key, _, hint = message.strip('\'" ').partition('\n')
    key = key.strip('\'" ')
    given = next((a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')
                  and key in a.split('=', 1)[0].split('.')), None)
    if given is None:  # no override names it: the config file itself raised
      path = (_config_argument(argv) or '').split(':', 1)[0]
      _fail(f'--config {_config_argument(argv)}: building the config raised {type(e).__name__}: {message.strip()}. '
            f'Fix: correct the config file or its :arguments (its traceback: python -c "import runpy; '
            f'runpy.run_path(\'{path}\')[\'get_config\']()").', 2)
    _fail(f'{given}: the config has no field {key!r}.' + (f' {hint.strip()}' if hint.strip() else '')
          + f' The config is locked: only its own fields can be set ({_config_fields_hint(argv)}).', 2)
  try:
    _CONFIG.value.keys()  # ml_collections keeps a config file's load error until the config is used
  except OSError as e:
    said = [l.strip() for l in str(e).splitlines() if l.strip()]
    _no_config_file(argv, said[-1] if said else 'it cannot be loaded')
  _refuse_method_override(argv)
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _VERBOSE.value:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    # A failed background write (a full disk) is logged with its traceback by orbax's
    # threads (absl) and asyncio; ltjax reports it once, as a WorkdirWriteError.
    for name in ('absl', 'asyncio'):
      std_logging.getLogger(name).setLevel(std_logging.CRITICAL)
  import jax

  # Before any backend starts: only the CPU backend reads it.
  jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from ltjax import parallel, pipeline, preemption
  from ltjax.errors import LtjaxError, Preempted, WorkdirWriteError

  try:
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    with preemption.watch():
      pipeline.run(_CONFIG.value, _WORKDIR.value)
  except Preempted as e:  # not a failure: every process saved; process 0 says where
    if parallel.is_main():
      sys.stderr.write(f'ltjax: {e}\n')
    sys.exit(e.exit_code)
  except LtjaxError as e:
    if _VERBOSE.value:
      raise
    if isinstance(e, WorkdirWriteError):
      _fail_disk(str(e))
    _fail(str(e), 1)
  except OSError as e:  # a full disk outside a checkpoint (logs, results): no traceback
    if _VERBOSE.value or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
      raise
    _fail_disk(f'cannot write {e.filename or "a file"} ({e.strerror}). Fix: free space on that disk, then '
               f'rerun the same command to resume (the checkpoints written before are intact).')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
