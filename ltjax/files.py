"""Atomic file writes: a temporary file beside the target, then a rename. A write killed
half-way (a crash, a full disk) never leaves a half file under the final name."""
from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from typing import Callable


def _fsync_folder(folder: str) -> None:
  """Makes a rename in ``folder`` durable (where the system lets a folder be opened)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_atomic(path: str, data: str | bytes | Callable[[io.BufferedWriter], None]) -> None:
  """Writes ``data`` (text, bytes, or a function that writes to a binary file) to
  ``path`` atomically, creating its folder: a temporary file, flushed to the disk
  (fsync: after a host crash the new name never points at blocks not yet written), then
  renamed over ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Unique to this write: processes on several hosts (with the same pid in containers)
  # may write the same file of a shared folder (a dataset's cache) at once.
  tmp = f'{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'wb') as f:
      if callable(data):
        data(f)
      else:
        f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_folder(folder)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_writable(directory: str, what: str = '', fix: str = '') -> None:
  """Creates ``directory`` if needed and writes and removes a small file in it; a
  ``WorkdirWriteError`` that names ``what`` (default: the workdir), the cause and ``fix``
  when that fails."""
  from ltjax.errors import WorkdirWriteError

  probe = os.path.join(directory, f'.write_test{os.getpid()}-{uuid.uuid4().hex[:8]}')
  try:
    os.makedirs(directory, exist_ok=True)
    write_atomic(probe, b'\0' * 4096)
    os.remove(probe)
  except OSError as e:
    raise WorkdirWriteError(
        f'cannot write {what or f"the workdir {directory}"} ({e.strerror or e}). Fix: '
        f'{fix or "choose a --workdir on a disk with free space that this user can write"}.') from None


URL_SCHEMES = ('http://', 'https://', 'file://')


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def fetch(location: str, sha256: str = '', cache_dir: str = '', what: str = '', error=None) -> str:
  """A local path of ``location``: a path (``~`` expanded), or a URL downloaded once
  (atomically) into ``cache_dir`` (default ``~/.cache/ltjax``, a folder per URL). Checked against ``sha256``
  where given; a download whose name carries the start of its sha256, as torchvision's do
  (``resnet152-394f9c45.pth``), is checked against that, as torch.hub checks them. Errors
  are ``error`` (default ``ConfigError``) naming ``what`` (default the location) and the fix."""
  from ltjax.errors import ConfigError

  error, what = error or ConfigError, what or location
  downloaded = location.startswith(URL_SCHEMES)
  if downloaded:
    import urllib.request

    cache_dir = cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'ltjax')
    # One folder per URL: two lists of the same file name from two places never meet.
    key = hashlib.sha256(location.encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, key, os.path.basename(location.split('?')[0]))
    if not os.path.exists(path):
      try:
        with urllib.request.urlopen(location, timeout=60) as f:
          data = f.read()
      except Exception as e:  # OSError, http.client's IncompleteRead, ...
        raise error(f'{what}: download failed ({type(e).__name__}: {e}). Fix: download it yourself and give its '
                    f'path.') from None
      write_atomic(path, data)
  else:
    path = os.path.expanduser(location)
    if not os.path.exists(path):
      raise error(f'{what}: no such file. Fix: give the path (or URL) of the file.')
  prefix = re.search(r'-([0-9a-f]{8,})\.', os.path.basename(path)) if downloaded else None
  if sha256 or prefix:
    digest = sha256_of(path)
    again = f'delete {path} and run again to download it anew' if downloaded else 'fetch it again'
    if sha256 and digest != sha256.lower():
      raise error(f'{what} has sha256 {digest}, not the expected {sha256}: a different or damaged file. '
                  f'Fix: {again}, or correct the checksum.')
    if not sha256 and not digest.startswith(prefix.group(1)):
      raise error(f'{what} has sha256 {digest}, which does not start with the {prefix.group(1)} its name gives: '
                  f'a damaged or partial download. Fix: {again}.')
  return path
