"""Preemption: when the train loop should save a checkpoint at the current step and stop.

Example:
  >>> with PreemptionWatcher() as preemption:
  ...   if preemption.should_stop(step):
  ...     checkpointer.save(step, state, config_dict)
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Says when the train loop should save and stop: after SIGTERM, or at jax's preemption point.

  One process: a SIGTERM handler sets a flag (installed only from the main thread; the previous
  handler comes back on exit). Several processes (jax.distributed initialised): jax's preemption
  service owns SIGTERM and `reached_preemption_sync_point(step)` turns a notice on any host into
  the same stop step on every host, so all of them take part in the save. It must then be asked
  at every step, by every process.

  Example:
    >>> with PreemptionWatcher() as preemption:
    ...   while step < num_steps:
    ...     ...
    ...     if preemption.should_stop(step):
    ...       break
  """

  def __init__(self):
    # Once jax.distributed is up (even with one process, e.g. a single TPU host), its preemption
    # service is the one that hears SIGTERM and the scheduler's notices.
    self.distributed = jax.distributed.is_initialized()
    self._received = threading.Event()
    self._previous = None

  def __enter__(self) -> "PreemptionWatcher":
    if not self.distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._received.set()

  def should_stop(self, step: int) -> bool:
    """Whether to save at `step` and stop (call once per step, on every process)."""
    if self.distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received.is_set()
