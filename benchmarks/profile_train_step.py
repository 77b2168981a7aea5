"""Where a train step's time goes: a jax.profiler trace of the real step, summed by XLA op kind.

Runs `--steps` steps of the config's train step (diffusion_lm.train's, as benchmarks/
train_throughput.py builds it) under `jax.profiler.trace`, reads the trace back with
`jax.profiler.ProfileData`, and attributes every XLA thunk (one per HLO instruction of the
compiled step) to a kind, looked up in the compiled HLO:
  - matmul: dot / convolution instructions, and fusions that contain one (with their FLOPs);
  - elementwise/reduce fusions (layer norm, GELU, softmax, Adam, EMA, ...), copies/transposes,
    and the rest, by opcode.
Thunk times are summed over threads, so on a multi-core CPU the sum can exceed the wall time;
`busy` is their share of (threads × wall). Prints the top instructions too.

Example:
  python benchmarks/profile_train_step.py --config=configs/bench.py --steps=3
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

import jax
import numpy as np
from absl import flags

import bench_utils
from diffusion_lm import cli, kinds, parallel, train_state, trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/bench.py", "PATH[:field=value,...]")
flags.DEFINE_integer("steps", 3, "Profiled steps (after one untimed step).")
flags.DEFINE_integer("top", 15, "How many of the most expensive instructions to list.")

def _shape_size(shape_text: str) -> int:
  dims = re.search(r"\[([\d,]*)\]", shape_text).group(1)
  return int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1


def _dot_flops(line: str) -> int:
  """2 × output size × contracted size of one HLO dot line."""
  output = re.search(r"=\s*(\w+\[[\d,]*\])", line).group(1)
  operands = re.search(r"dot\((.*?)\)", line).group(1)
  lhs_name = operands.split(",")[0].strip().lstrip("%")
  contracting = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1).split(",") if d]
  return 2 * _shape_size(output) * int(np.prod([_SHAPES[lhs_name][d] for d in contracting]))


_SHAPES: dict[str, list[int]] = {}  # HLO value name → dims (filled by hlo_instructions).


def _label(line: str) -> str:
  """The jax op path of an instruction (its metadata op_name), with layer indices folded."""
  match = re.search(r'op_name="([^"]+)"', line)
  if not match:
    return "?"
  label = re.sub(r"block_\d+", "block_*", match.group(1).replace("jit(train_step)/", ""))
  return label.replace("transpose(jvp(", "bwd(").replace("jvp(", "fwd(")


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """Instruction name → {"kind", "flops", "label"} from the compiled HLO text."""
  _SHAPES.clear()
  for match in re.finditer(r"%?([\w.\-]+)(?:\s*=|:)\s*\w+\[([\d,]*)\]", hlo_text):
    _SHAPES[match.group(1)] = [int(d) for d in match.group(2).split(",") if d]
  computation_flops = collections.Counter()  # Fused computation → FLOPs of the dots inside.
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$", line)
    if header:
      current = header.group(1)
    elif current and re.search(r"\sdot\(", line):
      computation_flops[current] += _dot_flops(line)
  instructions = {}
  for line in hlo_text.splitlines():
    match = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(", line)
    if not match:
      continue
    name, opcode = match.groups()
    kind, flop_count = opcode, 0
    if opcode == "dot":
      kind, flop_count = "matmul", _dot_flops(line)
    elif opcode == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", line).group(1)
      flop_count = computation_flops.get(called, 0)
      kind = "matmul" if flop_count else "elementwise/reduce fusion"
    elif opcode in ("copy", "transpose"):
      kind = "copy/transpose"
    instructions[name] = {"kind": kind, "flops": flop_count, "label": _label(line)}
  return instructions


def profile(config, steps: int, top: int) -> str:
  """The markdown report of `steps` profiled train steps of `config`: op time by kind and the `top` op groups.

  Example:
    >>> config, _ = bench_utils.load_config_spec("configs/e2e.py")
    >>> print(profile(config, steps=5, top=15))
  """
  vocab_size = config.data.vocab_size
  mesh = parallel.make_mesh(config.mesh)
  model = kinds.get(config.model.kind).build_model(config, vocab_size)
  optimizer = train_state.make_optimizer(config.train)
  tokens_BL = np.random.default_rng(0).integers(4, vocab_size, (config.train.batch_size, config.data.seq_len),
                                                dtype=np.int32)
  with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
    init_fn, _, shardings = train_state.state_shapes_and_shardings(model, config, optimizer, mesh)
    state = init_fn(jax.random.key(0))
    batch = jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), tokens_BL)
    step_fn = jax.jit(trainer.make_train_step(model, config, optimizer), in_shardings=(shardings, None, None),
                      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    compiled = step_fn.lower(state, batch, jax.random.key(0)).compile()
    instructions = hlo_instructions(compiled.as_text())
    state, _ = compiled(state, batch, jax.random.key(0))
    jax.block_until_ready(state)
    peak = bench_utils.measure_matmul_peak(config.model.dtype)
    load_before = bench_utils.load_average()
    with tempfile.TemporaryDirectory(prefix="dlm_profile_") as trace_dir:  # Read back, then removed.
      with jax.profiler.trace(trace_dir):
        start = time.perf_counter()
        for _ in range(steps):
          state, _ = compiled(state, batch, jax.random.key(0))
        jax.block_until_ready(state)
        wall = (time.perf_counter() - start) / steps
      data = jax.profiler.ProfileData.from_file(
          sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
  seconds_by_name, threads = collections.Counter(), set()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in instructions and instructions[event.name]["kind"] != "while":
          seconds_by_name[event.name] += event.duration_ns / 1e9 / steps
          threads.add((plane.name, line.name))
  by_kind, by_label = collections.defaultdict(lambda: [0.0, 0]), collections.defaultdict(lambda: [0.0, 0])
  for name, seconds in seconds_by_name.items():
    info = instructions[name]
    for table, key in ((by_kind, info["kind"]), (by_label, (info["kind"], info["label"]))):
      table[key][0] += seconds
      table[key][1] += info["flops"]
  total = sum(seconds for seconds, _ in by_kind.values())
  model_flops = kinds.train_step_flops(config, vocab_size)
  peak_rate = peak["median_flops_per_s"]
  rate = lambda flop_count, seconds: f"{flop_count / seconds / 1e9:.1f}" if flop_count and seconds else "—"
  lines = [f"step wall time {wall * 1e3:.0f} ms (load average {load_before:.2f}→{bench_utils.load_average():.2f}); "
           f"op time summed over {len(threads)} thread(s): {total * 1e3:.0f} ms; model {model_flops / 1e9:.1f} GFLOP "
           f"→ {model_flops / wall / 1e9:.1f} GFLOP/s = {model_flops / wall / peak_rate:.1%} of the "
           f"{peak_rate / 1e9:.1f} GFLOP/s matmul peak measured just before",
           "| kind | ms / step | share of op time | GFLOP / step | GFLOP/s while running |", "|---|---|---|---|---|"]
  for kind, (seconds, flop_count) in sorted(by_kind.items(), key=lambda item: -item[1][0]):
    lines.append(f"| {kind} | {seconds * 1e3:.1f} | {seconds / total:.1%} | {flop_count / 1e9:.1f} | "
                 f"{rate(flop_count, seconds)} |")
  lines += ["", f"top {top} op groups (layers folded):", "| kind | jax op | ms / step | share | GFLOP/s |",
            "|---|---|---|---|---|"]
  for (kind, label), (seconds, flop_count) in sorted(by_label.items(), key=lambda item: -item[1][0])[:top]:
    lines.append(f"| {kind} | {label} | {seconds * 1e3:.1f} | {seconds / total:.1%} | {rate(flop_count, seconds)} |")
  return "\n".join(lines)


def main(argv):
  del argv
  config, label = bench_utils.load_config_spec(FLAGS.config)
  print(f"# {label}: {bench_utils.machine()}")
  print(profile(config, FLAGS.steps, FLAGS.top))


if __name__ == "__main__":
  cli.run(main)
