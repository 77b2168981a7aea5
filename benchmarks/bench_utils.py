"""Shared pieces of the benchmarks: config specs with overrides, the matmul peak, machine facts,
a trained denoiser on validation rows.

Example:
  >>> config, label = load_config_spec("configs/bench.py:model.dtype=bfloat16,model.remat=True")
  >>> peak = measure_matmul_peak("float32")   # {"median_flops_per_s": ..., "best_flops_per_s": ...}
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # For `from configs import ...` inside config files.

from diffusion_lm import config_utils  # noqa: E402
from diffusion_lm import workdir as workdir_lib  # noqa: E402
from diffusion_lm.data import batching, datasets  # noqa: E402
from diffusion_lm.data.layout import source_mask  # noqa: E402
from diffusion_lm.diffusion.model_fns import bind_denoiser, with_clean_positions  # noqa: E402
from diffusion_lm.errors import UserError  # noqa: E402


def load_config_spec(spec: str) -> tuple[ml_collections.ConfigDict, str]:
  """(validated config, label) from "PATH[:field=value,field=value...]".

  Example:
    >>> config, label = load_config_spec("configs/bench.py:train.batch_size=16")
  """
  path, _, overrides = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config={path} does not exist; give a config file such as configs/bench.py")
  module_spec = importlib.util.spec_from_file_location(f"_bench_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config()
  config_utils.override_fields(config, filter(None, overrides.split(",")), spec)
  config_utils.validate(config)
  label = os.path.splitext(os.path.basename(path))[0] + (f" [{overrides}]" if overrides else "")
  return config, label


def measure_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> dict:
  """Matmul FLOP/s of one [size, size] @ [size, size] product over all devices, timed `repeats` times.

  The denominator of MFU: measured in the same process, on the same devices, just before the
  measurement it divides, so machine load affects both alike. With several devices (a CPU host
  split by `config.mesh.cpu_devices`), the rows of the product are split over them, as the step's batch is.
  """
  keys = jax.random.split(jax.random.key(0), 2)
  devices = jax.devices()
  rows = jax.sharding.NamedSharding(jax.make_mesh((len(devices),), ("rows",), axis_types=(
      jax.sharding.AxisType.Auto,), devices=devices), jax.sharding.PartitionSpec("rows"))
  a = jax.device_put(jax.random.normal(keys[0], (size, size), jnp.dtype(dtype)), rows)
  b = jax.random.normal(keys[1], (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()  # Compile and warm up.
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  flops = 2.0 * size ** 3
  return {"dtype": dtype, "size": size, "repeats": repeats, "median_flops_per_s": flops / statistics.median(times),
          "best_flops_per_s": flops / min(times),
          # Per CPU-second of this process (all its threads): less sensitive to other processes' load.
          "median_flops_per_cpu_s": flops / statistics.median(cpu_times)}


def load_average() -> float:
  """The 1-minute load average (the machine is shared: every figure is reported with it)."""
  return round(os.getloadavg()[0], 2)


def wait_for_quiet(threshold: float, max_seconds: float, poll_seconds: float = 15.0) -> float:
  """Waits until the 1-minute load average is below `threshold` (at most `max_seconds`); returns it.

  On a shared machine other processes' work inflates wall-clock times; 0 disables the wait.
  """
  deadline = time.monotonic() + max_seconds
  while threshold > 0 and load_average() >= threshold and time.monotonic() < deadline:
    time.sleep(poll_seconds)
  return load_average()


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine() -> dict:
  """What the figures were measured on."""
  device = jax.devices()[0]
  return {"platform": jax.default_backend(), "device_kind": device.device_kind, "num_devices": jax.device_count(),
          "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
          "python": platform.python_version(),
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def host_peak_rss_bytes() -> int:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes() -> int | None:
  """The allocator's peak bytes on device 0 (GPU/TPU); None where it keeps no statistics (CPU)."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> dict:
  """XLA's static memory plan of a compiled step: arguments, outputs, temporaries (activations)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  args, outs = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
  alias, temp = analysis.alias_size_in_bytes, analysis.temp_size_in_bytes
  return {"argument_bytes": args, "output_bytes": outs, "alias_bytes": alias, "temp_bytes": temp,
          "peak_bytes_estimate": args + outs - alias + temp}


def compiled_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled computation (all ops, not just matmuls)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return None if not analysis else analysis.get("flops")


def denoiser_on_validation(workdir: str, num_rows: int):
  """(loaded workdir, tokens [B, L], DenoiserFns, scored [B, L]) for a diffusion workdir's first
  `num_rows` validation rows; a conditional model sees its source clean and only the target is scored.

  Example:
    >>> loaded, tokens_BL, fns, scored_BL = denoiser_on_validation("runs/e2e", 256)
  """
  if num_rows < 1:
    raise UserError(f"--num_rows={num_rows} must be at least 1")
  loaded = workdir_lib.load_checkpoint(workdir)
  config = loaded.config
  if config.model.kind != "diffusion":
    raise UserError(f"{workdir} holds a model of kind {config.model.kind!r}; this benchmark needs a diffusion workdir")
  rows = batching.encode_corpus(datasets.load_texts(config.data, "validation")[:num_rows], loaded.tokenizer,
                                config.data.seq_len, "pad", config.data.conditional)
  tokens_BL = jnp.asarray(rows)
  fns, scored_BL = bind_denoiser(loaded.model, loaded.params), jnp.ones_like(tokens_BL, bool)
  if config.data.conditional:
    fns, scored_BL = with_clean_positions(fns, tokens_BL, source_mask(tokens_BL)), ~source_mask(tokens_BL)
  return loaded, tokens_BL, fns, scored_BL
