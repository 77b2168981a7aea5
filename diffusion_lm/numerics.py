"""Numerics of the jitted step: NaN/Inf found inside it and reported by the host at boundaries, and
an argmax that XLA:CPU runs fast.

The train step computes a bitmask of what went non-finite (`nonfinite_code`) and, with
`config.train.skip_nonfinite_steps`, drops that update on device (`keep_finite_update`). The
host keeps the per-step masks as unread device scalars and looks at them only where it syncs
anyway (log, eval and checkpoint steps, the end, a preemption), so watching costs no extra
host round trip per step, and no checkpoint is written before the steps since the last look
were checked.

Example:
  >>> monitor = NonFiniteMonitor()
  >>> monitor.record(step, step_metrics.pop("nonfinite"))   # every step, no sync
  >>> report = monitor.poll()                               # at a boundary: syncs once
  >>> if report: print(report.describe())
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

LOSS, GRAD_NORM, PARAM_NORM = 1, 2, 4
QUANTITY_NAMES = {LOSS: "loss", GRAD_NORM: "gradient norm", PARAM_NORM: "parameter norm after the update"}


def first_argmax(x_BV: jax.Array) -> jax.Array:
  """`jnp.argmax(x, -1)` (the first maximum) as two plain reductions, for finite x.

  XLA:CPU lowers argmax to a (value, index) pair reduction that is several times slower than a
  max and a min: per decoding step over a [64, 1000] vocabulary that was a tenth of the time, and
  the train step's token-accuracy metric over [64, 48, V] cost 4–8 % of the E2E step (BENCHMARKS.md).

  Example:
    >>> int(first_argmax(jnp.array([1.0, 3.0, 3.0])))
    1
  """
  max_B1 = jnp.max(x_BV, axis=-1, keepdims=True)
  positions_V = jnp.arange(x_BV.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(x_BV == max_B1, positions_V, x_BV.shape[-1]), axis=-1).astype(jnp.int32)


def nonfinite_code(loss: jax.Array, grad_norm: jax.Array, param_norm: jax.Array) -> jax.Array:
  """int32 bitmask: LOSS | GRAD_NORM | PARAM_NORM for each of them that is NaN or ±Inf (0 = fine).

  A NaN or Inf in any gradient (parameter) makes the gradient (parameter) norm non-finite, so
  three scalars cover the whole update.

  Example:
    >>> int(nonfinite_code(jnp.nan, 1.0, 1.0))
    1
  """
  flags = [(~jnp.isfinite(value)).astype(jnp.int32) * bit
           for value, bit in ((loss, LOSS), (grad_norm, GRAD_NORM), (param_norm, PARAM_NORM))]
  return flags[0] | flags[1] | flags[2]


def keep_finite_update(code: jax.Array, new_state, old_state):
  """`new_state` if `code` is 0, else `old_state` (leaf by leaf, on device, no host sync).

  Example:
    >>> state = keep_finite_update(code, new_state, state)
  """
  return jax.tree.map(lambda new, old: jnp.where(code == 0, new, old), new_state, old_state)


def describe_code(code: int) -> str:
  """The quantities a code names.

  Example:
    >>> describe_code(LOSS | GRAD_NORM)
    'loss and gradient norm'
  """
  names = [name for bit, name in QUANTITY_NAMES.items() if code & bit]
  return " and ".join(names) if names else "nothing"


@dataclasses.dataclass
class NonFiniteReport:
  """What the host found at a boundary: the first bad step since the last look, and counts."""

  first_step: int  # 1-based, as logged: the state after that update was the first bad one.
  first_code: int
  new_bad_steps: int  # Bad steps since the previous report.
  total_bad_steps: int

  def describe(self) -> str:
    return f"the {describe_code(self.first_code)} became NaN or Inf at step {self.first_step}"


class NonFiniteMonitor:
  """Collects each step's non-finite code without syncing; `poll()` reads them all at once."""

  def __init__(self):
    self._pending: list[tuple[int, jax.Array]] = []
    self.total_bad_steps = 0

  def record(self, step: int, code: jax.Array) -> None:
    """Keeps `code` (a device scalar) for step `step`; does not wait for it."""
    self._pending.append((step, code))

  def poll(self) -> NonFiniteReport | None:
    """Reads the codes recorded since the last poll; a report if any step was non-finite."""
    if not self._pending:
      return None
    steps = [step for step, _ in self._pending]
    codes = np.asarray(jax.device_get([code for _, code in self._pending])).reshape(-1)
    self._pending.clear()
    bad = np.flatnonzero(codes)
    if not len(bad):
      return None
    self.total_bad_steps += len(bad)
    return NonFiniteReport(steps[bad[0]], int(codes[bad[0]]), len(bad), self.total_bad_steps)
