"""Sampling speed: diffusion sampling at K steps vs autoregressive decoding with a KV cache.

Both models use the same backbone and size (`--config`, default configs/e2e.py: d_model 128,
4 layers, 64 tokens; the AR model is the same config with model.kind=autoregressive). For every
batch size and step count it compiles the sampler once (the whole reverse process is one jitted
`lax.scan`; AR decoding is one jitted scan over positions, see diffusion_lm/decoding.py), then
times whole calls (median of `--repeats`, 1 for calls over 10 s) and reports seconds per call,
milliseconds per sequence and generated tokens/s (batch × seq_len / time; every position of the
fixed-length row counts, PAD included, for both models).

Where diffusion matches AR: at `--match_batch`, the matching step count K* is interpolated
between the two measured step counts whose times bracket AR's (the small `--fit_steps` counts
are timed for this), or extrapolated from a least-squares line t(K) = a + b·K when none do; it
is checked by timing diffusion at round(K*) (at least 1). The line's slope b is reported as the
cost of one step.

Quality there: with `--diffusion_workdir` and `--judge_workdir` (an autoregressive workdir,
configs/e2e_ar.py), it draws `--quality_samples` samples at max(1, round(K*)) steps and at the
config's default steps, plus as many AR samples (temperature 1) from the judge workdir, and
scores them with diffusion_lm.evaluate's judge (generative perplexity, distinct-n, against real
validation sentences). Without trained workdirs the timing uses random weights (speed does not
depend on the weights) and the quality is reported as not measured.

Example:
  python benchmarks/sampling_speed.py --config=configs/e2e.py --steps=10,50,200,2000 --batch_sizes=1,64
  python benchmarks/sampling_speed.py --diffusion_workdir=runs/e2e --judge_workdir=runs/e2e_ar --json
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import flags

import bench_utils
from diffusion_lm import cli, decoding, kinds, parallel
from diffusion_lm.errors import UserError
from diffusion_lm.diffusion import samplers
from diffusion_lm.diffusion.model_fns import bind_denoiser

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/e2e.py", "PATH[:field=value,...] of the diffusion config (random weights).")
flags.DEFINE_string("diffusion_workdir", None, "A trained diffusion workdir: its weights and config instead.")
flags.DEFINE_string("judge_workdir", None, "A trained autoregressive workdir: the AR timed (if no random "
                    "weights are wanted) and the judge of sample quality.")
flags.DEFINE_list("steps", ["10", "50", "200", "2000"], "Diffusion step counts to time.")
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
flags.DEFINE_list("fit_steps", ["1", "2", "3", "4", "5", "6"], "Extra step counts timed at --match_batch to "
                  "bracket AR's time.")
flags.DEFINE_integer("match_batch", 64, "Batch size at which the matching step count is found.")
flags.DEFINE_integer("repeats", 3, "Timed calls per setting (the median is reported).")
flags.DEFINE_integer("quality_samples", 256, "Samples per model for the quality comparison.")
flags.DEFINE_bool("json", False, "Print one JSON object with every figure instead of tables.")
flags.DEFINE_string("output", None, "Also write the JSON report to this file.")
flags.DEFINE_float("wait_for_load", 0.0, "Wait until the 1-minute load average is below this before timing "
                   "(0: no wait); for shared machines.")
flags.DEFINE_integer("max_wait", 1800, "Longest wait for --wait_for_load, in seconds.")

LONG_CALL_SECONDS = 10.0  # One call longer than this is timed once.


def time_calls(compiled, args, repeats: int) -> dict:
  """Median wall time of `repeats` calls of an AOT-compiled function (one untimed call first if short)."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  first = time.perf_counter() - start
  if first > LONG_CALL_SECONDS:
    return {"seconds": first, "runs": 1, "load_average": bench_utils.load_average()}
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "runs": repeats, "load_average": bench_utils.load_average()}


def random_params(model, config):
  init = jax.jit(lambda key: parallel.strip_boxes(kinds.get(config.model.kind).init_variables(model, config, key)["params"]))
  return init(jax.random.key(0))


class Models:
  """The diffusion model and the AR model of the same backbone, trained or random."""

  def __init__(self, config_spec: str, diffusion_workdir: str | None, judge_workdir: str | None):
    from diffusion_lm import pipeline
    self.diffusion_pipe = self.ar_pipe = None
    if diffusion_workdir:
      self.diffusion_pipe = pipeline.load(diffusion_workdir)
      self.config, self.model, self.params = (self.diffusion_pipe.config, self.diffusion_pipe.model,
                                              self.diffusion_pipe.params)
      vocab_size = self.diffusion_pipe.tokenizer.vocab_size
    else:
      self.config, _ = bench_utils.load_config_spec(config_spec)
      vocab_size = self.config.data.vocab_size
      self.model = kinds.get(self.config.model.kind).build_model(self.config, vocab_size)
      self.params = random_params(self.model, self.config)
    self.weights = "trained" if diffusion_workdir else "random"
    if judge_workdir:
      self.ar_pipe = pipeline.load(judge_workdir)
      if self.ar_pipe.config.model.kind != "autoregressive":
        raise UserError(f"--judge_workdir={judge_workdir} is not an autoregressive workdir")
    ar_config = self.config.copy_and_resolve_references()
    with ar_config.unlocked():
      ar_config.model.kind = "autoregressive"
    if self.ar_pipe is not None and _same_backbone(self.ar_pipe.config, self.config):
      self.ar_model, self.ar_params, self.ar_weights = self.ar_pipe.model, self.ar_pipe.params, "trained"
    else:  # Random weights of the same backbone: decoding time does not depend on them.
      self.ar_model = kinds.get(ar_config.model.kind).build_model(ar_config, vocab_size)
      self.ar_params, self.ar_weights = random_params(self.ar_model, ar_config), "random"
    self.seq_len = self.config.data.seq_len

  def diffusion_sampler(self, batch_size: int, num_steps: int):
    config = self.config
    log_snr_fn = lambda t: bind_denoiser(self.model, self.params).log_snr(t)
    time_warp = self.diffusion_pipe.time_warp_table if self.diffusion_pipe is not None else None

    def run(params, rng):
      return samplers.sample(bind_denoiser(self.model, params), rng, (batch_size, self.seq_len), num_steps,
                             log_snr_fn, sampler=config.sample.sampler, clamp=config.sample.clamp,
                             temperature=config.sample.temperature, time_warp_table=time_warp)
    return jax.jit(run).lower(self.params, jax.random.key(0)).compile(), (self.params, jax.random.key(0))

  def ar_decoder(self, batch_size: int):
    def run(params, rng):
      return decoding.decode_tokens(self.ar_model, params, rng, batch_size, self.seq_len, temperature=1.0)
    return jax.jit(run).lower(self.ar_params, jax.random.key(0)).compile(), (self.ar_params, jax.random.key(0))


def _same_backbone(a, b) -> bool:
  fields = ("d_model", "num_layers", "num_heads", "mlp_dim")
  return all(a.model[f] == b.model[f] for f in fields) and a.data.seq_len == b.data.seq_len


def _row(kind: str, steps, batch_size: int, seq_len: int, timing: dict) -> dict:
  seconds = timing["seconds"]
  return {"model": kind, "steps": steps, "batch_size": batch_size, "seconds_per_call": seconds,
          "ms_per_sequence": 1e3 * seconds / batch_size, "tokens_per_second": batch_size * seq_len / seconds,
          "runs": timing["runs"], "load_average": timing["load_average"]}


def measure_speed(models: Models, steps: list[int], batch_sizes: list[int], fit_steps: list[int],
                  match_batch: int, repeats: int) -> dict:
  """Every timing row, the linear fit at `match_batch` and the matching step count."""
  rows = []
  for batch_size in batch_sizes:
    compiled, args = models.ar_decoder(batch_size)
    rows.append(_row("autoregressive (KV cache)", None, batch_size, models.seq_len, time_calls(compiled, args, repeats)))
    counts = sorted(set(steps) | (set(fit_steps) if batch_size == match_batch else set()))
    for num_steps in counts:
      compiled, args = models.diffusion_sampler(batch_size, num_steps)
      rows.append(_row("diffusion", num_steps, batch_size, models.seq_len, time_calls(compiled, args, repeats)))
  result = {"rows": rows}
  fit_rows = [r for r in rows if r["model"] == "diffusion" and r["batch_size"] == match_batch]
  ar_rows = [r for r in rows if r["model"] != "diffusion" and r["batch_size"] == match_batch]
  if len(fit_rows) >= 2 and ar_rows:
    slope, intercept = np.polyfit([r["steps"] for r in fit_rows], [r["seconds_per_call"] for r in fit_rows], 1)
    ar_seconds = ar_rows[0]["seconds_per_call"]
    matching = _bracketed_steps(fit_rows, ar_seconds)
    if matching is None:  # AR is faster or slower than every measured count: extrapolate the fit.
      matching = (ar_seconds - intercept) / slope
    check_steps = max(1, int(round(matching)))
    compiled, args = models.diffusion_sampler(match_batch, check_steps)
    check = _row("diffusion", check_steps, match_batch, models.seq_len, time_calls(compiled, args, repeats))
    result["match"] = {
        "batch_size": match_batch, "ar_seconds_per_call": ar_seconds, "fit_seconds_per_step": float(slope),
        "fit_intercept_seconds": float(intercept), "matching_steps": float(matching), "checked_steps": check_steps,
        "checked_seconds_per_call": check["seconds_per_call"],
        "diffusion_over_ar_at_200_steps": _ratio(rows, 200, match_batch, ar_seconds)}
  return result


def _bracketed_steps(rows: list[dict], target_seconds: float) -> float | None:
  """The step count at `target_seconds`, interpolated between the two measured counts around it."""
  points = sorted((r["steps"], r["seconds_per_call"]) for r in rows)
  for (steps_low, seconds_low), (steps_high, seconds_high) in zip(points, points[1:]):
    if seconds_low <= target_seconds <= seconds_high and seconds_high > seconds_low:
      return steps_low + (target_seconds - seconds_low) / (seconds_high - seconds_low) * (steps_high - steps_low)
  return None


def _ratio(rows, steps, batch_size, ar_seconds):
  for r in rows:
    if r["model"] == "diffusion" and r["steps"] == steps and r["batch_size"] == batch_size:
      return r["seconds_per_call"] / ar_seconds
  return None


def measure_quality(models: Models, judge_workdir: str, diffusion_workdir: str, steps_list: list[int],
                    num_samples: int) -> dict:
  """The judge's perplexity and distinct-n of diffusion samples at each step count and of AR samples."""
  from diffusion_lm import evaluate
  results = {}
  with tempfile.TemporaryDirectory() as scratch:
    def judge(name, lines):
      path = os.path.join(scratch, f"{name}.txt")
      with open(path, "w") as f:
        f.write("\n".join(line.replace("\n", " ") for line in lines) + "\n")
      report = evaluate.evaluate_samples(diffusion_workdir, path, judge_workdir, write=False, progress=False)
      return {"samples": report["samples"], "reference": report["reference"]}
    for num_steps in steps_list:
      lines = models.diffusion_pipe.sample(num_samples, steps=num_steps, seed=0)
      results[f"diffusion_{num_steps}_steps"] = judge(f"diffusion_{num_steps}", lines) | {"examples": lines[:5]}
    lines = models.ar_pipe.sample(num_samples, seed=0, temperature=1.0)
    results["autoregressive"] = judge("autoregressive", lines) | {"examples": lines[:5]}
  return results


def format_tables(report: dict) -> str:
  out = [f"# {report['machine']['date']}, jax {report['machine']['jax_version']}, "
         f"{report['machine']['platform']} ({report['machine']['device_kind']}), {report['machine']['cpu_model']}, "
         f"{report['machine']['cpu_count']} CPUs; weights: diffusion {report['weights']['diffusion']}, "
         f"AR {report['weights']['autoregressive']}; seq_len {report['seq_len']}",
         "| model | steps | batch | s / call | ms / sequence | tokens/s | load avg |", "|---|---|---|---|---|---|---|"]
  for r in report["speed"]["rows"]:
    out.append(f"| {r['model']} | {r['steps'] or '—'} | {r['batch_size']} | {r['seconds_per_call']:.3f} | "
               f"{r['ms_per_sequence']:.2f} | {r['tokens_per_second']:,.0f} | {r['load_average']:.2f} |")
  match = report["speed"].get("match")
  if match:
    out.append(f"\nAt batch {match['batch_size']}: AR decodes a batch in {match['ar_seconds_per_call']:.3f} s; "
               f"diffusion costs {match['fit_intercept_seconds']:.3f} s + {match['fit_seconds_per_step'] * 1e3:.1f} ms "
               f"per step (least squares); interpolating the measured counts, it matches AR at "
               f"{match['matching_steps']:.2f} steps (measured at "
               f"{match['checked_steps']} steps: {match['checked_seconds_per_call']:.3f} s).")
    if match["diffusion_over_ar_at_200_steps"]:
      out.append(f"200 diffusion steps take {match['diffusion_over_ar_at_200_steps']:.1f}x AR's time.")
  quality = report.get("quality")
  if quality is None:
    out.append("\nSample quality: not measured (give --diffusion_workdir and --judge_workdir).")
  else:
    out.append("\n| samples | judge perplexity | distinct-1/2/3 | mean words |\n|---|---|---|---|")
    for name, part in quality.items():
      s = part["samples"]
      out.append(f"| {name} | {s['judge_perplexity']:.2f} | {s['distinct_1']:.3f}/{s['distinct_2']:.3f}/"
                 f"{s['distinct_3']:.3f} | {s['mean_words']:.1f} |")
    ref = next(iter(quality.values()))["reference"]
    out.append(f"| real validation sentences | {ref['judge_perplexity']:.2f} | {ref['distinct_1']:.3f}/"
               f"{ref['distinct_2']:.3f}/{ref['distinct_3']:.3f} | {ref['mean_words']:.1f} |")
  return "\n".join(out)


def main(argv):
  del argv
  steps = [int(s) for s in FLAGS.steps]
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  fit_steps = [int(s) for s in FLAGS.fit_steps]
  if min(steps + fit_steps) < 1 or min(batch_sizes) < 1 or FLAGS.repeats < 1:
    raise UserError("--steps, --fit_steps, --batch_sizes and --repeats must be >= 1")
  if FLAGS.diffusion_workdir and FLAGS.judge_workdir is None:
    print("note: no --judge_workdir, so sample quality is not measured")
  models = Models(FLAGS.config, FLAGS.diffusion_workdir, FLAGS.judge_workdir)
  mesh = parallel.make_mesh(models.config.mesh)
  bench_utils.wait_for_quiet(FLAGS.wait_for_load, FLAGS.max_wait)
  report = {"machine": bench_utils.machine(), "seq_len": models.seq_len,
            "weights": {"diffusion": models.weights, "autoregressive": models.ar_weights},
            "sampler": {"sampler": models.config.sample.sampler, "clamp": models.config.sample.clamp},
            "load_average_start": bench_utils.load_average()}
  with parallel.activate(mesh, parallel.logical_rules(models.config.mesh)):
    report["speed"] = measure_speed(models, steps, batch_sizes, fit_steps, FLAGS.match_batch, FLAGS.repeats)
  report["quality"] = None
  if FLAGS.diffusion_workdir and FLAGS.judge_workdir and "match" in report["speed"]:
    quality_steps = sorted({report["speed"]["match"]["checked_steps"], models.config.sample.steps})
    report["quality"] = measure_quality(models, FLAGS.judge_workdir, FLAGS.diffusion_workdir, quality_steps,
                                        FLAGS.quality_samples)
  report["load_average_end"] = bench_utils.load_average()
  print(json.dumps(report) if FLAGS.json else format_tables(report), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
