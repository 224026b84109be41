"""Errors a user can fix. ``python -m ltjax.main`` prints them without a traceback;
each message names the problem and the fix."""


def described(error: BaseException, limit: int = 200) -> str:
  """``Type: first line of its message`` (``Type`` alone for an empty message): an error
  of a library, quoted in one of ltjax's messages."""
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0][:limit]}' if text else type(error).__name__


class LtjaxError(Exception):
  """Base of every error caused by input a user can change."""


class ConfigError(LtjaxError, ValueError):
  """A config value or argument that cannot work (unknown name, impossible value)."""


class DataReadError(LtjaxError, OSError):
  """Records of a prepared dataset that cannot be read during a run (after retries)."""


class DatasetNotPreparedError(LtjaxError, RuntimeError):
  """A TFDS dataset that is not in data_dir while downloading is off or impossible."""


class WorkdirConflictError(LtjaxError, RuntimeError):
  """A workdir that holds a run of a different config."""


class NonFiniteLossError(LtjaxError, FloatingPointError):
  """The training loss became NaN or infinite."""


class MissingCheckpointError(LtjaxError, FileNotFoundError):
  """A phase needs an earlier phase's final checkpoint that is not there."""


class WorkdirInUseError(LtjaxError, RuntimeError):
  """Another ltjax run holds the workdir's lock."""


class Preempted(LtjaxError):
  """A SIGTERM or SIGINT stopped the run after saving a checkpoint at the agreed step: the
  same command resumes. ``python -m ltjax.main`` exits with ``EXIT_PREEMPTED``."""
  exit_code = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, try again


EXIT_PREEMPTED = Preempted.exit_code


class WorkdirWriteError(LtjaxError, OSError):
  """The workdir cannot be written (read-only, no permission, no space)."""


class PredictInputError(LtjaxError, ValueError):
  """A path given to ``ltjax.predict`` that holds no readable image, or a bad output name."""


class ProcessStopped(LtjaxError, RuntimeError):
  """Another process of a multi-process run stopped it (that process's message says why),
  or the processes disagree (loaded different data)."""
