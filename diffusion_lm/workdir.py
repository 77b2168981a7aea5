"""A workdir's files: the tokenizer, the checkpoints as a loaded model, samples and reports.

WORKDIR/tokenizer.model (SentencePiece), WORKDIR/checkpoints/ (checkpoint.py),
WORKDIR/samples/step_N.txt and WORKDIR/eval/<name>.json; metrics.py writes metrics.jsonl and
tensorboard/. Everything that reads or writes them by name does it here.

Example:
  >>> loaded = load_checkpoint("/tmp/e2e")
  >>> loaded.config.model.kind, loaded.step
"""

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections

from diffusion_lm import checkpoint, config_utils, kinds, parallel, train_state
from diffusion_lm.data.tokenizer import Tokenizer
from diffusion_lm.errors import CheckpointError, UserError

TOKENIZER_FILE = "tokenizer.model"


def load_or_train_tokenizer(workdir: str, data_config, train_texts: list[str]) -> Tokenizer:
  """The workdir's tokenizer, trained on the training split the first time."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  # Only process 0 looks and trains, and every process meets at the barrier: a process that saw
  # the file appear and skipped the barrier would desynchronise the collectives that follow.
  if parallel.is_chief() and not os.path.exists(path):
    Tokenizer.train(train_texts, path[: -len(".model")], data_config.tokenizer, data_config.vocab_size)
  parallel.sync_processes("tokenizer")
  try:
    return Tokenizer.load(path)
  except (RuntimeError, OSError, ValueError) as error:  # sentencepiece raises RuntimeError.
    raise UserError(f"{path} is not a readable tokenizer ({str(error).strip().splitlines()[0]}); "
                    "restore the file the checkpoints were trained with, or use a new --workdir") from None


def check_writable(directory: str, what: str | None = None) -> None:
  """A UserError unless this process can create files in `directory` (made if missing).

  Checked before the work that writes there, so a long run never ends in a failed write.
  `what` names the directory in the message (default: `--workdir=DIRECTORY`).
  """
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise UserError(f"{what or f'--workdir={directory}'} is not writable ({error.strerror}); choose another "
                    "directory") from None


def check_output_file(path: str, flag: str) -> None:
  """A UserError unless `path` can be written as a file (checked before the work that makes it).

  Example:
    >>> check_output_file("/tmp", "--output")   # UserError: --output=/tmp is a directory; ...
  """
  if os.path.isdir(path):
    raise UserError(f"{flag}={path} is a directory; give a file path, e.g. {os.path.join(path, 'samples.txt')}")
  existed = os.path.exists(path)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a"):
      pass
  except OSError as error:
    raise UserError(f"{flag}={path} cannot be written ({error.strerror}); choose another path") from None
  if not existed:
    os.remove(path)


def write_samples(workdir: str, step: int, lines: list[str]) -> None:
  """WORKDIR/samples/step_N.txt, one sample per line (chief process only)."""
  if not parallel.is_chief():
    return
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  with open(os.path.join(workdir, "samples", f"step_{step}.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def write_report(workdir: str, name: str, report: dict) -> str:
  """Writes WORKDIR/eval/<name>.json from the chief process; returns the path."""
  path = os.path.join(workdir, "eval", f"{name}.json")
  if parallel.is_chief():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  return path


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved with the latest checkpoint of `workdir` (no weights restored)."""
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  latest = checkpointer.latest_step()
  if latest is None:
    raise CheckpointError(f"no checkpoint in {checkpointer.directory}; train one first with "
                          f"python -m diffusion_lm.train --config=configs/e2e.py --workdir={workdir}")
  config = config_utils.from_dict(checkpointer.restore_config(latest))
  checkpointer.close()
  return config


class LoadedCheckpoint(NamedTuple):
  """A restored workdir: its config, model, EMA params, tokenizer, step, mesh and full train state."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  tokenizer: Tokenizer
  step: int
  mesh: jax.sharding.Mesh
  state: dict


def load_checkpoint(workdir: str, step: int | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> LoadedCheckpoint:
  """Restores the (latest or given) checkpoint of `workdir` onto `mesh` (default: all local devices).

  Shared by `pipeline.load` (sampling), the eval binary and the classifier trainer.

  Example:
    >>> config, model, params, tokenizer, step, mesh, state = load_checkpoint("/tmp/e2e")
  """
  if not isinstance(workdir, (str, os.PathLike)):
    raise UserError(f"the workdir must be a path (a directory written by diffusion_lm.train), not {workdir!r}")
  if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
    raise UserError(f"step must be an int (a checkpoint step), not {step!r}")
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  available = checkpointer.all_steps()
  if not available:
    raise CheckpointError(f"no checkpoint in {checkpointer.directory}; train one first with "
                          f"python -m diffusion_lm.train --config=configs/e2e.py --workdir={workdir}")
  newest = step is None
  if newest:
    step = checkpointer.latest_valid_step()  # Skips corrupt checkpoints, with a warning naming each.
    if step is None:
      raise CheckpointError(f"every checkpoint in {checkpointer.directory} is corrupt (see the warnings); "
                            "train again or restore a good copy")
  if step not in available:
    raise CheckpointError(f"no checkpoint at step {step} in {checkpointer.directory}; available: {available}")
  config = config_utils.from_dict(checkpointer.restore_config(step))
  tokenizer_path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.exists(tokenizer_path):
    raise CheckpointError(f"{tokenizer_path} is missing; the workdir is incomplete (copy the tokenizer "
                          "file that was trained with this checkpoint)")
  checkpointer.check_tokenizer(step, tokenizer_path)
  tokenizer = Tokenizer.load(tokenizer_path)
  mesh = mesh or parallel.local_mesh()
  model = kinds.get(config.model.kind).build_model(config, tokenizer.vocab_size)
  with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
    optimizer = train_state.make_optimizer(config.train)
    _, abstract_state, _ = train_state.state_shapes_and_shardings(model, config, optimizer, mesh)
    if newest:  # An unverifiable newest checkpoint that fails to restore falls back to an older one.
      step, state = checkpointer.restore_newest(step, abstract_state)
      if step is None:
        raise CheckpointError(f"no checkpoint in {checkpointer.directory} restores (see the warnings); "
                              "train again or restore a good copy")
    else:
      state = checkpointer.restore(step, abstract_state)
  checkpointer.close()
  return LoadedCheckpoint(config, model, state["ema_params"], tokenizer, step, mesh, state)
