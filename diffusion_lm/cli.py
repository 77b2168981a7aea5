"""Shared plumbing for the absl binaries: user errors become one line and exit status 2.

Example:
  >>> if __name__ == "__main__":
  ...   cli.run(main)
"""

import errno
import os
import sys

import jax
from absl import app, flags, logging

from diffusion_lm import parallel
from diffusion_lm.errors import CheckpointWriteError, TrainingDivergedError, UserError

# Compiled XLA programs are kept here across runs, so a second `sample` or `evaluate` of the same
# model compiles nothing. DIFFUSION_LM_COMPILATION_CACHE overrides the place; "" turns it off.
COMPILATION_CACHE_ENV = "DIFFUSION_LM_COMPILATION_CACHE"
DEFAULT_COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "diffusion_lm", "jax_compilation")
USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3  # The loss or gradients went NaN/Inf (see numerics.py).
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped on a preemption notice after a clean save.
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: Ctrl-C (training saves first; other binaries just stop).


def _one_line(error: Exception) -> str:
  text = str(error.args[0]) if error.args else str(error)
  return " ".join(text.replace("\\n", " ").replace("\\'", "").strip("'\"").split())


def _parse_flags(argv: list[str]) -> list[str]:
  """FLAGS(argv), with flag and config-override errors turned into one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    print(f"error: {_one_line(error)}", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    # ml_collections raises these for --config.<unknown field> or a value of the wrong type.
    print(f"error: bad --config override: {_one_line(error)}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def enable_compilation_cache() -> str | None:
  """Turns on jax's persistent compilation cache (see COMPILATION_CACHE_ENV); returns its directory.

  Example:
    >>> enable_compilation_cache()
    '/root/.cache/diffusion_lm/jax_compilation'
  """
  if jax.config.jax_compilation_cache_dir:  # Set by the user (JAX_COMPILATION_CACHE_DIR): theirs wins.
    return jax.config.jax_compilation_cache_dir
  directory = os.environ.get(COMPILATION_CACHE_ENV, DEFAULT_COMPILATION_CACHE)
  if not directory:
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # Small programs too: they add up.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def run(main) -> None:
  """`app.run(main)`, printing bad-input errors as `error: <message>` and exiting with 2."""
  def guarded_main(argv):
    parallel.keep_freed_host_memory()  # Before jax's threads: XLA's CPU buffers are reused, not re-faulted.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and tfds are chatty at INFO.
    enable_compilation_cache()
    try:
      return main(argv)
    except UserError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(USAGE_EXIT_CODE)
    except TrainingDivergedError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(DIVERGED_EXIT_CODE)
    except KeyboardInterrupt:
      print("\ninterrupted (Ctrl-C)", file=sys.stderr)
      sys.exit(INTERRUPTED_EXIT_CODE)
    except CheckpointWriteError as error:
      print(f"\nerror: {error}", file=sys.stderr)  # After orbax's own logging of the failure.
      sys.exit(1)
    except OSError as error:
      if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise
      print(f"\nerror: {error.strerror} writing {error.filename or 'the output'}; free space and run the same "
            "command again", file=sys.stderr)
      sys.exit(1)
    except Exception as error:
      if jax.process_count() > 1 and _is_peer_failure(error):
        exit_after_peer_failure(error)
      raise
  app.run(guarded_main, flags_parser=_parse_flags)


# What a collective or barrier raises when another process has died (gloo sees the socket close at
# once; the coordination service misses its heartbeats; orbax's barriers time out).
_PEER_FAILURE_MARKERS = ("Gloo", "Connection reset", "Connection refused", "heartbeat", "UNAVAILABLE",
                         "DEADLINE_EXCEEDED", "barrier")


def _is_peer_failure(error: Exception) -> bool:
  if not isinstance(error, (jax.errors.JaxRuntimeError, TimeoutError)):
    return False
  return any(marker.lower() in str(error).lower() for marker in _PEER_FAILURE_MARKERS)


def exit_after_peer_failure(error: Exception) -> None:
  """One line, then `os._exit(1)`: jax's exit handler would wait at a shutdown barrier for the
  dead process (until the heartbeat timeout) and then abort with a core dump."""
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  print(f"\nerror: process {jax.process_index()} of {jax.process_count()}: another process died or became "
        f"unreachable ({first_line[:200]}); stopping too. Run the same command on every host to resume "
        "from the last checkpoint", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


def config_from_flag(name: str = "config"):
  """The config a `DEFINE_config_file` flag loaded, or a UserError naming the file that failed."""
  try:
    config = flags.FLAGS[name].value
    config.keys()  # The flag loads lazily: touch it so a bad file fails here.
    return config
  except OSError as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raise UserError(f"--{name} could not be loaded: {lines[-1] if lines else error}") from None
