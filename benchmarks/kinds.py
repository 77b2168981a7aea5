"""Continuous vs masked vs autoregressive on the same tokens: one table from trained workdirs.

For each workdir (any kind, trained at the same budget with configs/e2e.py, configs/e2e_masked.py
and configs/e2e_ar.py, or their PTB twins): the likelihood on the first `--eval_sequences`
validation sentences (a bound for the diffusion kinds, exact for AR); for `--num_samples` samples
at each of `--sample_steps` (diffusion kinds; AR decodes token by token at temperature 1): the
judge's perplexity ÷ real sentences', unigram entropy (samples and real), distinct-2, and the
seconds to sample one batch of `--batch_size`; and infilling BLEU-4 (benchmarks/control.py's
infill section: the middle third of 64 test references blanked; not for AR, which continues a
prefix only). The judge is `--judge_workdir` (an AR workdir).

Example:
  python benchmarks/kinds.py --workdirs=continuous=runs/kinds/e2e,masked=runs/kinds/e2e_masked,ar=runs/kinds/e2e_ar \
      --judge_workdir=runs/kinds/e2e_ar --output=runs/kinds/table.json
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_utils  # noqa: E402
import diffusion_lm  # noqa: E402
from diffusion_lm import cli, config_utils, evaluation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "name=WORKDIR pairs, in table order.")
flags.DEFINE_string("judge_workdir", None, "An autoregressive workdir that judges every kind's samples.")
flags.DEFINE_list("sample_steps", ["20", "50", "200"], "Sampling steps of the diffusion kinds.")
flags.DEFINE_integer("num_samples", 200, "Samples per kind and step count.")
flags.DEFINE_integer("batch_size", 64, "Rows of the timed sampling batch.")
flags.DEFINE_integer("eval_sequences", 512, "Validation sentences for the likelihood.")
flags.DEFINE_integer("infill_steps", 50, "Sampling steps for infilling (0 skips it).")
flags.DEFINE_string("output", None, "Write the JSON rows here.")
flags.DEFINE_list("sample_settings", [], "FIELD=VALUE of config.sample for the diffusion kinds' samples (not the "
                  "infilling), e.g. warped_grid=false: an older workdir sampled as configs/e2e.py samples now.")


def judged(workdir: str, texts: list[str]) -> dict:
  """Judge perplexity ÷ real, unigram entropy and distinct-2 of `texts` and of as many real sentences."""
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(texts) + "\n")
  report = evaluation.evaluate_samples(workdir, f.name, FLAGS.judge_workdir, write=False, progress=False)
  os.remove(f.name)
  samples, real = report["samples"], report["reference"]
  return {"judge_ppl": samples["judge_perplexity"], "real_judge_ppl": real["judge_perplexity"],
          "ratio": report["perplexity_ratio"], "ratio_ci95": report["perplexity_ratio_ci95"],
          "unigram_entropy": samples["unigram_entropy"], "real_unigram_entropy": real["unigram_entropy"],
          "distinct_2": samples["distinct_2"], "examples": texts[:3]}


def timed_batch(pipe, steps) -> float:
  """Seconds for one batch of --batch_size samples, compiled beforehand."""
  pipe.sample(FLAGS.batch_size, steps=steps, seed=1)
  started = time.perf_counter()
  pipe.sample(FLAGS.batch_size, steps=steps, seed=2)
  return time.perf_counter() - started


def infill_bleu(workdir: str) -> float | None:
  """BLEU-4 of one infilled sample per template (benchmarks/control.py --sections=infill)."""
  if not FLAGS.infill_steps:
    return None
  with tempfile.TemporaryDirectory() as directory:
    output = os.path.join(directory, "control.json")
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "control.py"), f"--workdir={workdir}",
                    "--sections=infill", f"--steps={FLAGS.infill_steps}", "--mbr=0", f"--output={output}"],
                   check=True, capture_output=True)
    with open(output) as f:
      return json.load(f)["infill"]["sample"]["bleu4"]


def score_kind(name: str, workdir: str) -> dict:
  pipe = diffusion_lm.load(workdir)
  kind = pipe.config.model.kind
  if kind != "autoregressive":
    config_utils.override_fields(pipe.config, [f"sample.{item}" for item in FLAGS.sample_settings])
  likelihood = evaluation.evaluate(workdir, split="validation", max_sequences=FLAGS.eval_sequences, write=False,
                                   progress=False)
  row = {"name": name, "kind": kind, "workdir": workdir, "train_steps": pipe.step,
         "nll_nats_per_token": likelihood["nll_nats_per_token"], "stderr": likelihood["stderr"],
         "exact": likelihood["exact"], "by_steps": {}}
  for steps in ([None] if kind == "autoregressive" else [int(s) for s in FLAGS.sample_steps]):
    texts = pipe.sample(FLAGS.num_samples, steps=steps, seed=0)
    row["by_steps"][str(steps or "AR")] = judged(workdir, texts) | {"batch_seconds": timed_batch(pipe, steps)}
    print(name, steps, {k: v for k, v in row["by_steps"][str(steps or "AR")].items() if k != "examples"}, flush=True)
  row["infill_bleu4"] = None if kind == "autoregressive" else infill_bleu(workdir)
  return row


def markdown(rows: list[dict]) -> str:
  ar = next((r for r in rows if r["exact"]), None)
  lines = ["| kind | steps trained | NLL (nats/token) | × AR | sampling steps | judge ppl ÷ real | unigram entropy "
           "(real) | distinct-2 | s / batch | infill BLEU-4 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    nll = f"{row['nll_nats_per_token']:.3f}" + ("" if row["exact"] else f" ± {row['stderr']:.3f} (bound)")
    times = f"{row['nll_nats_per_token'] / ar['nll_nats_per_token']:.2f}" if ar else "–"
    for steps, figures in row["by_steps"].items():
      infill = row["infill_bleu4"]
      lines.append(f"| {row['name']} | {row['train_steps']} | {nll} | {times} | {steps} | {figures['ratio']:.2f} | "
                   f"{figures['unigram_entropy']:.2f} ({figures['real_unigram_entropy']:.2f}) | "
                   f"{figures['distinct_2']:.3f} | {figures['batch_seconds']:.2f} | "
                   f"{'–' if infill is None else f'{infill:.1f}'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if not FLAGS.workdirs or not FLAGS.judge_workdir:
    raise app.UsageError("give --workdirs=name=DIR,... and --judge_workdir=AR_DIR")
  rows = [score_kind(*spec.split("=", 1)) for spec in FLAGS.workdirs]
  print(markdown(rows))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"rows": rows, "judge_workdir": FLAGS.judge_workdir, "num_samples": FLAGS.num_samples,
                 "eval_sequences": FLAGS.eval_sequences}, f, indent=2)


if __name__ == "__main__":
  cli.run(main)  # Bad input (an unknown --sample_settings field) is one line and exit 2.
