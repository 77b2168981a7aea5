"""Checkpoints: an orbax CheckpointManager behind a small interface, and what keeps them safe.

A checkpoint holds the train state (step, params, EMA params, optimizer state), the config as
JSON and a little metadata (which tokenizer it was trained with). Saves are asynchronous and
keep the newest N; restores take an abstract target carrying the *current* mesh's shardings,
so a run saved on one mesh restores onto another.

What survives what (RELIABILITY.md lists the tests):
- A kill at any moment, mid-save included: orbax writes `<step>.orbax-checkpoint-tmp/` and
  renames it to `<step>/` only when every file is written, so a kill leaves at most an
  unfinished tmp directory. It is never a step; orbax replaces it when that step is saved again.
- Corruption after the fact (a truncated copy, a bad disk): every checkpoint carries
  `checksums.json` (size and sha256 of each file), written into the tmp directory just before
  the rename, so it is part of the atomic commit. `latest_valid_step()` verifies the newest
  checkpoint before it is used; a bad one is moved aside to `<step>.corrupt` with a warning
  naming it (never deleted, never loaded) and the next newest is tried. Orbax itself cannot
  see flipped bytes: a flipped data file restores "successfully" with garbage values.
- SIGTERM / a preemption notice: `preemption.PreemptionWatcher` tells the train loop to save at
  the current step and stop.

Example:
  >>> checkpointer = Checkpointer(workdir, keep=3)
  >>> checkpointer.save(step, state, config_dict, {"tokenizer_sha256": digest})
  >>> step = checkpointer.latest_valid_step()   # warns about and sets aside corrupt ones
  >>> state = checkpointer.restore(step, abstract_state)
"""

import contextlib
import hashlib
import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from diffusion_lm import lock, parallel

from diffusion_lm.errors import CheckpointError, CheckpointWriteError

MANIFEST_FILE = "checksums.json"
CORRUPT_SUFFIX = ".corrupt"
# Orbax 0.12's name for a save in progress (orbax/checkpoint/_src/path/atomicity_types.py).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Written or rewritten by orbax after our manifest (the commit timestamp, the commit marker).
_UNHASHED_TOP_LEVEL = ("_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST_FILE)
_STEP_NAME = re.compile(r"^\d+$")


def file_sha256(path: str) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB chunks (hashlib releases the GIL on them).

  Example:
    >>> file_sha256("/tmp/run/tokenizer.model")[:8]
    '3f2a9c0d'
  """
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files_under(directory: str) -> list[str]:
  """Relative paths of the files under `directory`, sorted."""
  found = []
  for root, _, names in os.walk(directory):
    found.extend(os.path.relpath(os.path.join(root, name), directory) for name in names)
  return sorted(found)


def write_manifest(step_directory: str) -> None:
  """Writes `checksums.json` (size and sha256 of each file) into a checkpoint directory.

  Example:
    >>> write_manifest("/tmp/run/checkpoints/20.orbax-checkpoint-tmp")
  """
  files = {}
  for relative in _files_under(step_directory):
    if relative in _UNHASHED_TOP_LEVEL:
      continue
    path = os.path.join(step_directory, relative)
    files[relative] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
  temporary = os.path.join(step_directory, MANIFEST_FILE + ".partial")
  with open(temporary, "w") as f:
    json.dump({"format": 1, "files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, os.path.join(step_directory, MANIFEST_FILE))


def verify_manifest(step_directory: str) -> str | None:
  """None if every file `checksums.json` lists has its recorded size and hash, else the problem.

  A checkpoint without a manifest (written by an older version, or on remote storage where
  none is written) is accepted as it is.

  Example:
    >>> verify_manifest("/tmp/run/checkpoints/20")
    'state/d/91b6...: 1024 bytes, expected 2048 (truncated)'
  """
  manifest_path = os.path.join(step_directory, MANIFEST_FILE)
  if not os.path.exists(manifest_path):
    return None
  try:
    with open(manifest_path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    return f"{MANIFEST_FILE} is unreadable ({type(error).__name__})"
  for relative, expected in sorted(files.items()):
    path = os.path.join(step_directory, relative)
    if not os.path.isfile(path):
      return f"{relative} is missing"
    size = os.path.getsize(path)
    if size != expected["size"]:
      return f"{relative}: {size} bytes, expected {expected['size']} (truncated or overwritten)"
    if file_sha256(path) != expected["sha256"]:
      return f"{relative}: contents differ from their checksum (corrupted)"
  return None


class Checkpointer:
  """Saves and restores `{"state": pytree, "config": dict, "meta": dict}` under `workdir/checkpoints`.

  Example:
    >>> checkpointer = Checkpointer("/tmp/run", keep=3)
    >>> checkpointer.save(10, state, config_dict)
    >>> checkpointer.close()
  """

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.read_only = read_only
    self._saving_step: int | None = None  # The step whose async save is in flight.
    # Manifests are written only where we can read the files back cheaply.
    self._local = "://" not in self.directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, read_only=read_only, create=not read_only,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._before_commit))
    if read_only:  # Orbax warns that a read-only manager will not save: true, and noise to a reader.
      with _absl_verbosity(absl_logging.ERROR):
        self.manager = ocp.CheckpointManager(self.directory, options=options)
    else:
      self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _before_commit(self) -> None:
    """Orbax calls this on the primary process once every file of the save is written, before
    the rename that commits it: the manifest lands inside the atomic commit."""
    if self._saving_step is None or not self._local:
      return
    temporary = os.path.join(self.directory, f"{self._saving_step}{TMP_SUFFIX}")
    write_manifest(temporary if os.path.isdir(temporary) else
                   os.path.join(self.directory, str(self._saving_step)))

  def latest_step(self) -> int | None:
    """The newest committed step orbax sees, unverified (see `latest_valid_step`)."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def unfinished_saves(self) -> list[str]:
    """Paths of saves a killed run left unfinished (orbax tmp directories)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(os.path.join(self.directory, name) for name in os.listdir(self.directory)
                  if name.endswith(TMP_SUFFIX))

  def latest_valid_step(self) -> int | None:
    """The newest checkpoint whose files match their checksums and whose config reads back.

    Warns about unfinished saves (they are ignored) and about each corrupt checkpoint, which is
    moved aside to `<step>.corrupt` (kept for inspection, never loaded; in read-only mode it is
    only skipped). With several processes, process 0 decides and the others follow.

    Example:
      >>> Checkpointer("/tmp/run").latest_valid_step()
      warning: checkpoint /tmp/run/checkpoints/20 is corrupt (...); moved it to ... and using step 10
      10
    """
    chosen = -1
    if parallel.is_chief():
      trainer = lock.running_trainer(os.path.dirname(self.directory)) if self.read_only else None
      for path in self.unfinished_saves():
        if trainer:  # A live run's save in flight: nothing is wrong, and it is not read.
          parallel.warn(f"a trainer is running in {os.path.dirname(self.directory)} ({trainer}) and writing "
                        f"{os.path.basename(path)}; reading the newest complete checkpoint")
        else:
          parallel.warn(f"{path} is an unfinished save (the run stopped while writing it); it is ignored, and "
                        "orbax replaces it when that step is saved again")
      chosen = self._find_valid_step()
    if jax.process_count() > 1:
      chosen = int(multihost_utils.broadcast_one_to_all(np.int64(chosen)))
      self.manager.reload()  # Process 0 may have moved directories.
    return None if chosen < 0 else chosen

  def _find_valid_step(self) -> int:
    """Process 0's half of `latest_valid_step` (-1 when there is no valid checkpoint)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem = verify_manifest(self.step_directory(step)) if self._local else None
      if problem is None:
        try:
          if jax.process_count() == 1:
            self.restore_config(step)
          elif self._local:  # Orbax restores are collective and only process 0 is here: read the JSON.
            with open(os.path.join(self.step_directory(step), "config", "metadata")) as f:
              json.load(f)
        except CheckpointError as error:
          problem = str(error)
        except (OSError, ValueError) as error:
          problem = f"unreadable config ({_first_line(error)})"
      if problem is None:
        return step
      older = [s for s in self.manager.all_steps() if s < step]
      fallback = (f"using step {max(older)}" if older else "no older checkpoint is left" if self.read_only
                  else "no older checkpoint is left: starting afresh")
      if self.read_only or not self._local:  # Not ours to move (or not a local path to rename).
        parallel.warn(f"checkpoint {self.step_directory(step)} is corrupt ({problem}); skipping it, {fallback}")
      else:
        aside = self._move_aside(step)
        parallel.warn(f"checkpoint {self.step_directory(step)} is corrupt ({problem}); moved it to {aside} and "
             f"{fallback}")
    return -1

  def _move_aside(self, step: int) -> str:
    """Renames a corrupt step directory to `<step>.corrupt[.N]` so orbax no longer sees it."""
    source = self.step_directory(step)
    target, suffix = source + CORRUPT_SUFFIX, 1
    while os.path.exists(target):
      target, suffix = f"{source}{CORRUPT_SUFFIX}.{suffix}", suffix + 1
    os.rename(source, target)
    self.manager.reload()
    return target

  def save(self, step: int, state, config_dict: dict, metadata: dict | None = None) -> None:
    """Starts an async save of `state`, `config_dict` and `metadata` at `step` (no-op if it exists).

    Waits for the previous save first (orbax allows one in flight).
    """
    if step in self.manager.all_steps():
      return
    self.wait()
    self._saving_step = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_dict),
          meta=ocp.args.JsonSave(metadata or {})), force=True)
    except Exception as error:
      raise self._write_failed(error) from error

  def restore_config(self, step: int) -> dict:
    """The config dict saved with `step`."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    except Exception as error:  # Orbax raises many types for unreadable files.
      raise CheckpointError(f"checkpoint {self.directory}/{step} has no readable config "
                            f"({_first_line(error)}); it may be corrupt or from another program") from error

  def restore_metadata(self, step: int) -> dict:
    """The metadata dict saved with `step` ({} for checkpoints written before it existed)."""
    if not os.path.isdir(os.path.join(self.step_directory(step), "meta")):
      return {}
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}
    except Exception as error:
      raise CheckpointError(f"checkpoint {self.directory}/{step} has unreadable metadata "
                            f"({_first_line(error)}); it may be corrupt") from error

  def restore_newest(self, step: int, abstract_state) -> tuple[int | None, object]:
    """(step, state) of `step` or, when a checkpoint without `checksums.json` fails to restore, of
    the next older one that does (the unverifiable one is set aside like a corrupt one).

    A checkpoint with a manifest passed `latest_valid_step`'s checks, so its failure is a real
    mismatch with the model and is raised. (None, None) when no checkpoint is left.

    Example:
      >>> step, state = checkpointer.restore_newest(checkpointer.latest_valid_step(), abstract_state)
    """
    while step is not None:
      try:
        return step, self.restore(step, abstract_state)
      except CheckpointError as error:
        if not self._local or os.path.exists(os.path.join(self.step_directory(step), MANIFEST_FILE)):
          raise
        older = [s for s in self.manager.all_steps() if s < step]
        fallback = f"using step {max(older)}" if older else "no older checkpoint is left"
        where = "skipping it" if self.read_only else f"moved it to {self._move_aside(step)}"
        parallel.warn(f"checkpoint {self.step_directory(step)} has no {MANIFEST_FILE} and does not restore "
                      f"({str(error.__cause__ or error).splitlines()[0][:120]}); {where}, {fallback}")
        step = max(older) if older else None
    return None, None

  def restore(self, step: int, abstract_state):
    """Restores the state at `step` onto the shardings carried by `abstract_state`."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as error:
      raise CheckpointError(f"cannot restore checkpoint {self.directory}/{step}: {_first_line(error)}"
                            " — it does not match this model; use the config it was trained with "
                            "or a new --workdir") from error

  def check_tokenizer(self, step: int, tokenizer_file: str) -> None:
    """Raises CheckpointError if `tokenizer_file` is not the tokenizer `step` was trained with.

    Example:
      >>> checkpointer.check_tokenizer(20, "/tmp/run/tokenizer.model")
    """
    expected = self.restore_metadata(step).get("tokenizer_sha256")
    if expected and file_sha256(tokenizer_file) != expected:
      raise CheckpointError(f"{tokenizer_file} is not the tokenizer checkpoint {self.step_directory(step)} "
                            "was trained with (its sha256 differs); put the original back or use a new "
                            "--workdir")

  def wait(self) -> None:
    """Blocks until pending async saves are on disk; CheckpointWriteError if one failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # Orbax re-raises the background save's error here.
      raise self._write_failed(error) from error

  def close(self) -> None:
    self.wait()
    self.manager.close()

  def _write_failed(self, error: Exception) -> CheckpointWriteError:
    """One line for a save that failed (a full disk, lost permissions): what, and what is left."""
    committed = sorted(int(name) for name in os.listdir(self.directory) if _STEP_NAME.match(name)) \
        if self._local and os.path.isdir(self.directory) else []
    left = f"the newest complete one is step {committed[-1]}" if committed else "no complete checkpoint is left"
    cause = "no space left on device" if "No space left" in str(error) else _first_line(error)[:300]
    return CheckpointWriteError(
        f"could not write the checkpoint of step {self._saving_step} in {self.directory} ({cause}); {left}. "
        "Free space (or fix the directory) and run the same command again to resume")


@contextlib.contextmanager
def _absl_verbosity(level: int):
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(min(previous, level))  # Lower is quieter.
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
