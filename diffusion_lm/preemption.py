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
  """Says when the train loop should save and stop: after SIGTERM or Ctrl-C, or at jax's preemption point.

  One process: SIGTERM and SIGINT (Ctrl-C) handlers set a flag (installed only from the main
  thread; the previous handlers come back on exit). After a first Ctrl-C the default handler is
  back, so a second one interrupts at once (the save of the first may then be lost, never an
  older checkpoint). `stop_signal` names the signal that stopped the run. Several processes (jax.distributed initialised): jax's preemption
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
    self._previous = {}
    self.stop_signal: str | None = None  # "SIGTERM" or "SIGINT" once one arrived.

  def __enter__(self) -> "PreemptionWatcher":
    if not self.distributed and threading.current_thread() is threading.main_thread():
      self._previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:
    del frame
    self.stop_signal = signal.Signals(signum).name
    if signum == signal.SIGINT:  # A second Ctrl-C interrupts at once.
      signal.signal(signal.SIGINT, signal.default_int_handler)
    self._received.set()

  def should_stop(self, step: int) -> bool:
    """Whether to save at `step` and stop (call once per step, on every process)."""
    if self.distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received.is_set()
