"""Shared test setup: one tfds data dir per session, and the tiny config."""

import os
import sys
import tempfile

# Prepared datasets go to a per-session directory (tfds reads TFDS_DATA_DIR when
# config.data.tfds_data_dir is empty), so tests never touch ~/tensorflow_datasets.
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="dlm_tfds_"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from diffusion_lm import parallel  # noqa: E402

parallel.keep_freed_host_memory()  # As the binaries do, before jax starts its threads: the suite runs faster.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # For `from configs import tiny`.


def tiny_config(**overrides):
  """configs/tiny.py with dotted overrides, e.g. tiny_config(**{"train.num_steps": 4})."""
  from configs import tiny
  from diffusion_lm.config_utils import apply_overrides
  return apply_overrides(tiny.get_config(), overrides)
