"""Metric writing: TensorBoard (tensorboardX) plus a JSONL file, from the chief process only.

Example:
  >>> writer = MetricWriter(workdir)
  >>> writer.write(step, {"train/loss": 1.5})
  >>> writer.close()
"""

import json
import os

import numpy as np

from diffusion_lm import parallel


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = parallel.is_chief() if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # Imported lazily: only the chief writes.
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {name: float(np.asarray(value)) for name, value in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()
