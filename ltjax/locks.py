"""One run per workdir: an OS file lock (``fcntl.flock``) on ``workdir/.lock``, held by
process 0 for the whole run. The operating system releases it when the process ends,
however it ends (SIGKILL, a crash), so a lock left by a killed run never blocks the next
one. The file keeps who holds it (host, process id, start time) for the message a second
run prints."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

from ltjax.errors import WorkdirInUseError

LOCK_FILE = '.lock'


class WorkdirLock:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock or raises ``WorkdirInUseError`` naming the run that holds it."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      who = (f'process {holder.get("pid")} on {holder.get("host")}, started {holder.get("started")}'
             if holder else 'another process')
      raise WorkdirInUseError(
          f'{os.path.dirname(self.path)} is in use by another ltjax run ({who}). Fix: wait for it '
          f'to finish or stop it (a stopped run resumes with its own command), or choose another '
          f'--workdir.') from None
    info = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read(fd) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (OSError, ValueError):
    return {}
