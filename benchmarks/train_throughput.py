"""Training throughput and MFU of the real train step (diffusion_lm.train's), one table row per config.

For each `--config=PATH[:field=value,...]` it builds the train state on the config's mesh, jits
`trainer.make_train_step` exactly as `train.py` does (state shardings, donated state), feeds a fixed
synthetic batch of token ids (the data pipeline is not timed; its host work overlaps the step in
`train.py`), and reports:
  - step time: the median of `--steps` steps after `--warmup` steps (each step waited for);
  - tokens/s = batch × seq_len / median step time;
  - MFU = model FLOPs per step / median step time / peak matmul FLOP/s, where
      model FLOPs per step = batch · (3 · forward FLOPs of the passes that get gradients
                             + forward FLOPs of forward-only passes)
      forward FLOPs per sequence = N · (8·L·D² + 4·L²·D + 4·L·D·F) + heads and projections
    (2 FLOPs per multiply-add, matmuls and attention only; backward = 2 × forward; see
    diffusion_lm/flops.py for every term), and the peak is a [2048, 2048] matmul in the config's
    compute dtype timed in this process, on the same devices, right before the step timing;
  - memory: XLA's static plan of the compiled step (arguments + outputs − donated aliases +
    temporaries; the table's column), the allocator's peak on GPU/TPU (JSON only: it is the
    process's peak so far, i.e. the largest config timed yet), and the process's peak RSS;
  - the same MFU in this process's CPU time (step CPU-seconds against the matmul's FLOPs per
    CPU-second), which other processes on a shared machine disturb much less than wall time;
  - the 1-minute load average before and after the timing (the CPU machine is shared).

Example:
  python benchmarks/train_throughput.py --config=configs/bench.py
  python benchmarks/train_throughput.py --config=configs/bench.py \
      --config=configs/bench.py:model.remat=True --config=configs/bench.py:model.dtype=bfloat16 --json
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
from diffusion_lm import cli, kinds, parallel, train_state, trainer
from diffusion_lm.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("config", ["configs/bench.py"], "PATH[:field=value,...]; repeat for more rows.")
flags.DEFINE_integer("steps", 10, "Timed steps per config (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("peak_size", 2048, "Side of the square matmul that measures the peak.")
flags.DEFINE_bool("json", False, "Print one JSON object per config instead of the table.")
flags.DEFINE_string("output", None, "Also append the JSON rows to this file (JSON lines).")
flags.DEFINE_float("wait_for_load", 0.0, "Before each config, wait until the 1-minute load average is below "
                   "this (0: no wait); for shared machines.")
flags.DEFINE_integer("max_wait", 1800, "Longest wait for --wait_for_load, in seconds.")


def benchmark_config(config, label: str, steps: int, warmup: int, peak_size: int) -> dict:
  """Times `steps` train steps of `config` and returns the row (see the module doc).

  Example:
    >>> config, label = bench_utils.load_config_spec("configs/bench.py")
    >>> row = benchmark_config(config, label, steps=10, warmup=2, peak_size=2048)
  """
  if steps < 1 or warmup < 0:
    raise UserError("--steps must be >= 1 and --warmup >= 0")
  vocab_size = config.data.vocab_size  # Synthetic ids: the configured size (an upper bound for "word").
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(config.train.batch_size, mesh)
  model = kinds.get(config.model.kind).build_model(config, vocab_size)
  optimizer = train_state.make_optimizer(config.train)
  batch_sharding = parallel.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  tokens_BL = rng.integers(4, vocab_size, (config.train.batch_size, config.data.seq_len), dtype=np.int32)
  with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
    init_fn, _, state_shardings = train_state.state_shapes_and_shardings(model, config, optimizer, mesh)
    state = init_fn(jax.random.key(0))
    batch = jax.make_array_from_process_local_data(batch_sharding, tokens_BL)
    root_key = jax.random.key(config.seed)
    step_fn = jax.jit(trainer.make_train_step(model, config, optimizer),
                      in_shardings=(state_shardings, batch_sharding, None),
                      out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    compile_start = time.perf_counter()
    compiled = step_fn.lower(state, batch, root_key).compile()
    compile_seconds = time.perf_counter() - compile_start
    for _ in range(warmup):
      state, metrics = compiled(state, batch, root_key)
    jax.block_until_ready(state)
    peak = bench_utils.measure_matmul_peak(config.model.dtype, peak_size)
    load_before = bench_utils.load_average()
    times, dispatch_times, cpu_times = [], [], []
    for _ in range(steps):
      start, cpu_start = time.perf_counter(), time.process_time()
      state, metrics = compiled(state, batch, root_key)
      dispatch_times.append(time.perf_counter() - start)  # ≪ the step time: dispatch is asynchronous.
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
      cpu_times.append(time.process_time() - cpu_start)
    load_after = bench_utils.load_average()
  step_seconds = statistics.median(times)
  cpu_seconds = statistics.median(cpu_times)
  model_flops = kinds.train_step_flops(config, vocab_size)
  xla_flops = bench_utils.compiled_flops(compiled)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  tokens = config.train.batch_size * config.data.seq_len
  achieved = model_flops / step_seconds
  return {
      "config": label, "params_millions": round(num_params / 1e6, 2), "dtype": config.model.dtype,
      "remat": bool(config.model.remat), "batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
      "step_seconds_median": step_seconds, "step_seconds_min": min(times), "step_seconds_max": max(times),
      "tokens_per_second": tokens / step_seconds, "model_flops_per_step": model_flops,
      "xla_flops_per_step": xla_flops, "achieved_flops_per_s": achieved,
      "peak_matmul_flops_per_s": peak["median_flops_per_s"], "peak_matmul_best_flops_per_s": peak["best_flops_per_s"],
      "peak_matmul": f"{peak_size}x{peak_size} {config.model.dtype} matmul, median of {peak['repeats']}",
      "mfu": achieved / peak["median_flops_per_s"], "compile_seconds": compile_seconds,
      "dispatch_seconds_median": statistics.median(dispatch_times), "cpu_seconds_per_step": cpu_seconds,
      # The same ratio in this process's CPU time (step and peak alike): robust to a shared machine.
      "mfu_cpu_time": model_flops / cpu_seconds / peak["median_flops_per_cpu_s"],
      "timed_steps": steps, "warmup_steps": warmup, "final_loss": float(metrics["loss"]),
      **bench_utils.compiled_memory(compiled), "device_peak_bytes": bench_utils.device_peak_bytes(),
      "host_peak_rss_bytes": bench_utils.host_peak_rss_bytes(),
      "load_average_before": load_before, "load_average_after": load_after, **bench_utils.machine()}


HEADER = ("| config | params | tokens/s | step (median) | model GFLOP/step | achieved GFLOP/s | "
          "peak GFLOP/s | MFU | MFU (CPU time) | XLA memory plan | RSS | load avg |")


def format_row(row: dict) -> str:
  """One markdown table row."""
  # XLA's static plan, not the allocator's peak: that peak is the process's, so every config
  # timed after a bigger one would show the bigger one's figure.
  memory = row.get("peak_bytes_estimate") or row.get("device_peak_bytes")
  memory_text = f"{memory / 2**20:,.0f} MiB" if memory else "n/a"
  return (f"| {row['config']} | {row['params_millions']:.1f}M | {row['tokens_per_second']:,.0f} | "
          f"{row['step_seconds_median'] * 1e3:,.0f} ms | {row['model_flops_per_step'] / 1e9:,.1f} | "
          f"{row['achieved_flops_per_s'] / 1e9:,.1f} | {row['peak_matmul_flops_per_s'] / 1e9:,.1f} | "
          f"{row['mfu']:.1%} | {row['mfu_cpu_time']:.1%} | {memory_text} | {row['host_peak_rss_bytes'] / 2**20:,.0f} MiB | "
          f"{row['load_average_before']:.2f}→{row['load_average_after']:.2f} |")


def main(argv):
  del argv
  configs = [bench_utils.load_config_spec(spec) for spec in FLAGS.config]
  # One process has one device count: the train binary's split of a CPU host (config.mesh.cpu_devices).
  cpu_devices = {config.mesh.cpu_devices for config, _ in configs}
  if len(cpu_devices) > 1:
    raise UserError(f"the rows ask for different --config.mesh.cpu_devices {sorted(cpu_devices)}; one process "
                    "has one device count, so time them in separate runs")
  parallel.use_cpu_devices(cpu_devices.pop())
  if not FLAGS.json:
    facts = bench_utils.machine()
    print(f"# {facts['date']}, jax {facts['jax_version']}, {facts['platform']} ({facts['device_kind']}, "
          f"{facts['num_devices']} device(s)), {facts['cpu_model']}, {facts['cpu_count']} CPUs")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
  for config, label in configs:
    bench_utils.wait_for_quiet(FLAGS.wait_for_load, FLAGS.max_wait)
    row = benchmark_config(config, label, FLAGS.steps, FLAGS.warmup, FLAGS.peak_size)
    print(json.dumps(row) if FLAGS.json else format_row(row), flush=True)
    if FLAGS.output:
      with open(FLAGS.output, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  cli.run(main)
