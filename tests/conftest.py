"""Shared test setup: one tfds data dir and one compilation cache per session, unoptimised XLA, the tiny config."""

import atexit
import os
import shutil
import sys
import tempfile


def session_directory(variable: str, prefix: str) -> None:
  """A temporary directory in $variable for the whole run: made by the first process (pytest's controller),
  inherited by the workers and the binaries the tests start, removed when the process that made it exits."""
  if variable not in os.environ:
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)


# Prepared datasets go to a per-session directory (tfds reads TFDS_DATA_DIR when
# config.data.tfds_data_dir is empty), so tests never touch ~/tensorflow_datasets.
session_directory("TFDS_DATA_DIR", "dlm_tfds_")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from diffusion_lm import parallel  # noqa: E402

parallel.keep_freed_host_memory()  # As the binaries do, before jax starts its threads: the suite runs faster.

# One persistent compilation cache for the run (set before the workers start, so both share it, and the
# binaries the tests start find it in their environment): a program that many tests build, such as the tiny
# config's train step, is compiled once and then loaded. It starts empty, so no run depends on an earlier one.
session_directory("DIFFUSION_LM_COMPILATION_CACHE", "dlm_jax_cache_")
from diffusion_lm import cli  # noqa: E402

cli.enable_compilation_cache()

# Tests compile without LLVM's optimisation passes: on a 2-core CPU compilation is most of the suite's time,
# and this halves it. The numbers agree with the optimised build's to ~1e-6, as another CPU's do;
# tests/test_golden.py runs its recipes with XLA's default optimisation, so what users run stays pinned.
UNOPTIMIZED_XLA_FLAG = "--xla_backend_optimization_level=0"
OPTIMIZED_XLA_FLAGS = os.environ.get("XLA_FLAGS", "").replace(UNOPTIMIZED_XLA_FLAG, "").strip()
TEST_XLA_FLAGS = f"{OPTIMIZED_XLA_FLAGS} {UNOPTIMIZED_XLA_FLAG}".strip()


def pytest_configure(config):
  """Under pytest only (before any test starts jax's backend), so `python tests/test_golden.py` keeps the default."""
  del config
  os.environ["XLA_FLAGS"] = TEST_XLA_FLAGS


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # For `from configs import tiny`.


def tiny_config(**overrides):
  """configs/tiny.py with dotted overrides, e.g. tiny_config(**{"train.num_steps": 4})."""
  from configs import tiny
  from diffusion_lm.config_utils import apply_overrides
  return apply_overrides(tiny.get_config(), overrides)
