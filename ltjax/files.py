"""Atomic file writes: a temporary file beside the target, then a rename. A write killed
half-way (a crash, a full disk) never leaves a half file under the final name."""
from __future__ import annotations

import io
import os
from typing import Callable


def write_atomic(path: str, data: str | bytes | Callable[[io.BufferedWriter], None]) -> None:
  """Writes ``data`` (text, bytes, or a function that writes to a binary file) to
  ``path`` atomically, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      if callable(data):
        data(f)
      else:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_writable(directory: str, what: str = '', fix: str = '') -> None:
  """Creates ``directory`` if needed and writes and removes a small file in it; a
  ``WorkdirWriteError`` that names ``what`` (default: the workdir), the cause and ``fix``
  when that fails."""
  from ltjax.errors import WorkdirWriteError

  probe = os.path.join(directory, f'.write_test{os.getpid()}')
  try:
    os.makedirs(directory, exist_ok=True)
    write_atomic(probe, b'\0' * 4096)
    os.remove(probe)
  except OSError as e:
    raise WorkdirWriteError(
        f'cannot write {what or f"the workdir {directory}"} ({e.strerror or e}). Fix: '
        f'{fix or "choose a --workdir on a disk with free space that this user can write"}.') from None
