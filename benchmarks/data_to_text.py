"""Data-to-text on the E2E test set: diffusion vs its AR twin vs AR-draft → diffusion-refine.

Rows (each one output per test MR, 630 MRs, scored against all ~7 references of each):
  - the diffusion workdir (configs/e2e_cond.py) at each of `--steps`, with `--mbr` k (the
    minimum-Bayes-risk output of k samples), `--source_guidance` w, `--model_time_floor` c,
    `--predicted_length` and `--source_coverage` b when given;
  - the AR twin (configs/e2e_cond_ar.py), greedy;
  - AR drafts refined by the diffusion workdir at each of `--strengths` (`--refine_steps` for a full run);
  - AR drafts kept and completed by the diffusion workdir (`Pipeline.complete`) at each of `--steps`;
and for the two models the conditional likelihood of every (MR, reference) test pair: the diffusion
bound on −log p(reference | MR) and the AR exact NLL, on the same reference tokens. Time per MR is
wall-clock on this machine, batches of 64 compiled beforehand (a first call of each shape warms up).

Example:
  python benchmarks/data_to_text.py --diffusion_workdir=runs/cond/e2e_cond --ar_workdir=runs/cond/e2e_cond_ar \
      --output=runs/cond/table.json
  python benchmarks/data_to_text.py --diffusion_workdir=runs/cond/e2e_cond --ar_workdir=runs/cond/e2e_cond_ar \
      --sections=diffusion --steps=20 --mbr=5 --source_guidance=0.5
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_lm import cli, evaluation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("diffusion_workdir", None, "A conditional diffusion workdir (configs/e2e_cond.py).")
flags.DEFINE_string("ar_workdir", None, "Its conditional AR twin (configs/e2e_cond_ar.py), same tokenizer.")
flags.DEFINE_list("steps", ["20", "500"], "Diffusion sampling steps (500: configs/e2e_cond.py's default).")
flags.DEFINE_list("strengths", ["0.2", "0.5"], "Refine strengths for the AR drafts.")
flags.DEFINE_integer("refine_steps", 200, "Steps of a full-strength refine (a strength s runs s × this).")
flags.DEFINE_integer("max_sources", 0, "Only the first N test MRs (0 = all 630).")
flags.DEFINE_integer("eval_sequences", 0, "Test pairs for the likelihood (0 = all).")
flags.DEFINE_integer("mbr", None, "Diffusion rows: keep the minimum-Bayes-risk output of this many samples per MR.")
flags.DEFINE_float("source_guidance", 0.0, "Diffusion rows: classifier-free guidance weight on the MR.")
flags.DEFINE_float("model_time_floor", None, "Diffusion rows: tell the denoiser noise level max(t, c) (default: the "
                   "workdir's sample.model_time_floor).")
flags.DEFINE_bool("predicted_length", None, "Diffusion rows: pin each target's length to the model's expected length "
                  "(--nopredicted_length: the model chooses; default: the workdir's sample.predicted_length).")
flags.DEFINE_float("source_coverage", None, "Diffusion rows: b > 0 nudges each source word in and keeps it from "
                   "repeating (0: off; default: the workdir's sample.source_coverage).")
flags.DEFINE_list("sections", ["diffusion", "ar", "refine", "complete", "likelihood"], "Which rows to measure.")
flags.DEFINE_string("output", None, "Write the JSON rows here.")

TGEN = {"bleu": 65.93, "nist": 8.61, "meteor": 44.83, "rouge_l": 68.50, "cider": 2.23}  # Dušek et al. 2020, test.


def warm(run) -> None:
  """Compiles a row's shapes on 64 MRs into the persistent cache, so its timed run loads them (< 1 s)."""
  run(64)


def row(name: str, report: dict) -> dict:
  keep = ("bleu", "chrf", "slot_error_rate", "missing_rate", "added_rate", "human_slot_error_rate",
          "seconds_per_source", "num_sources")
  result = {"name": name, **{key: report.get(key) for key in keep}}
  print(json.dumps(result), flush=True)
  return result


def main(argv):
  del argv
  cli.enable_compilation_cache()
  rows, sources = [], FLAGS.max_sources
  diffusion, ar = FLAGS.diffusion_workdir, FLAGS.ar_workdir
  coverage = f", coverage {FLAGS.source_coverage:g}" if FLAGS.source_coverage is not None else ""
  generate = lambda workdir, **kwargs: lambda n: evaluation.evaluate_generation(
      workdir, "test", max_sources=n, write=False, **kwargs)
  for steps in map(int, FLAGS.steps if "diffusion" in FLAGS.sections else []):
    run = generate(diffusion, steps=steps, mbr=FLAGS.mbr, source_guidance=FLAGS.source_guidance,
                   model_time_floor=FLAGS.model_time_floor, predicted_length=FLAGS.predicted_length,
                   source_coverage=FLAGS.source_coverage)
    warm(run)
    options = ((f", MBR of {FLAGS.mbr}" if FLAGS.mbr else "") + (f", w = {FLAGS.source_guidance:g}"
                                                                  if FLAGS.source_guidance else "")
               + (f", floor {FLAGS.model_time_floor:g}" if FLAGS.model_time_floor is not None else "")
               + {True: ", predicted length", False: ", free length"}.get(FLAGS.predicted_length, "")
               + coverage)
    rows.append(row(f"diffusion, {steps} steps{options}", run(sources)))
  if "ar" in FLAGS.sections:
    run = generate(diffusion, draft_workdir=ar)
    warm(run)
    rows.append(row("AR (greedy)", run(sources)))
  for strength in map(float, FLAGS.strengths if "refine" in FLAGS.sections else []):
    run = generate(diffusion, draft_workdir=ar, strength=strength, steps=FLAGS.refine_steps,
                   source_coverage=FLAGS.source_coverage)
    warm(run)
    rows.append(row(f"AR draft + refine s={strength} ({round(strength * FLAGS.refine_steps)} steps){coverage}",
                    run(sources)))
  for steps in map(int, FLAGS.steps if "complete" in FLAGS.sections else []):
    run = generate(diffusion, draft_workdir=ar, complete=True, steps=steps, model_time_floor=FLAGS.model_time_floor,
                   source_coverage=FLAGS.source_coverage)
    warm(run)
    rows.append(row(f"AR draft + diffusion completion ({steps} steps){coverage}", run(sources)))
  likelihood = {}
  for name, workdir in (("diffusion", diffusion), ("ar", ar)) if "likelihood" in FLAGS.sections else ():
    report = evaluation.evaluate(workdir, "test", max_sequences=FLAGS.eval_sequences, write=False, progress=False)
    likelihood[name] = {"nll_nats_per_token": report["nll_nats_per_token"], "stderr": report["stderr"],
                        "num_tokens": report["num_tokens"], "exact": report["exact"]}
    print(name, json.dumps(likelihood[name]), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"rows": rows, "likelihood": likelihood, "tgen": TGEN}, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["diffusion_workdir", "ar_workdir"])
  cli.run(main)
