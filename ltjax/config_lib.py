"""The machinery of the config files under ``configs/``: their argument string
(``file.py:key=value,flag``) and the one group of fields that may change between the runs
of one workdir. The fields themselves and every number of a recipe live in ``configs/``
(``configs/common.py`` has the fields every run has), none in the library.
"""
from __future__ import annotations

import ml_collections

from ltjax.errors import ConfigError  # noqa: F401 (configs raise it too)


def parse_args(arg: str | None, defaults: dict) -> ml_collections.ConfigDict:
  """Parses ``'dataset=cifar100,imb=100,smoke'`` against ``defaults`` (name -> default
  value, whose type the given value is converted to). A bare name sets a bool to True."""
  out = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r} in {arg!r}; valid arguments: '
                       f'{", ".join(sorted(defaults))} (e.g. configs/cifar_lt.py:dataset=cifar100,imb=100).')
    default = defaults[key]
    if isinstance(default, bool):
      if not sep:
        out[key] = True
      elif value.lower() in ('1', 'true', 'yes'):
        out[key] = True
      elif value.lower() in ('0', 'false', 'no'):
        out[key] = False
      else:
        raise ConfigError(f'config argument {key} takes true or false, got {value!r}.')
    elif not sep:
      raise ConfigError(f'config argument {key!r} needs a value, e.g. {key}={default}.')
    else:
      try:
        out[key] = type(default)(value) if default is not None else value
      except ValueError:
        raise ConfigError(f'config argument {key}={value!r} is not a {type(default).__name__}.') from None
  return ml_collections.ConfigDict(out)



# The config group that says how this run executes on this machine (where it reads its
# data, how many devices and readers, how often it logs, evaluates and checkpoints, which
# phases it runs) and never what it computes: the one group that may differ between the
# runs of one workdir (``pipeline.check_workdir``).
RUN_GROUP = 'run'
