"""One trainer per workdir: the lock a trainer holds, and who holds it.

Example:
  >>> lock = TrainerLock("/tmp/run").acquire()   # UserError if another trainer holds it
  >>> running_trainer("/tmp/run")
  'pid 4242 on host1, since 2026-12-03 09:00:00'
  >>> lock.release()
"""

import fcntl
import os
import socket
import time

from diffusion_lm import parallel
from diffusion_lm.errors import UserError

LOCK_FILE = "trainer.lock"  # Held (flock) by the running trainer; says who it is.


class TrainerLock:
  """One trainer per workdir: an exclusive `flock` on WORKDIR/trainer.lock while it runs.

  The operating system drops the lock when its process dies, so a killed run never blocks the
  next one; the file only says who held it last. Only the chief process locks (the others of a
  multi-host run write nothing). Advisory, and only as good as the filesystem's flock (local
  disks yes; some network filesystems ignore it).

  Example:
    >>> lock = TrainerLock("/tmp/run").acquire()   # UserError if another trainer holds it
    >>> lock.release()
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self) -> "TrainerLock":
    if not parallel.is_chief():
      return self
    lock_file = open(self.path, "a+")
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      holder = lock_file.read().strip() or "a process"
      lock_file.close()
      raise UserError(f"another trainer is running in {os.path.dirname(self.path)} ({holder}); wait for it "
                      "to finish (or stop it: it saves and exits), or use another --workdir") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock_file.flush()
    self._file = lock_file
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def running_trainer(workdir: str) -> str | None:
  """Who holds the workdir's trainer lock ("pid N on HOST, since ..."), or None when no trainer runs.

  Example:
    >>> running_trainer("/tmp/run")
    'pid 4242 on host1, since 2026-12-03 09:00:00'
  """
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return lock_file.read().strip() or "a process"
    fcntl.flock(lock_file, fcntl.LOCK_UN)
  return None
