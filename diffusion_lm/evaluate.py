"""The evaluation binary: a likelihood bound (diffusion), exact perplexity (autoregressive), and
sample quality judged by an autoregressive model.

Loads a workdir's EMA weights onto the local devices, scores every sequence of a split (or of a
text file, one example per line), prints a summary and writes `WORKDIR/eval/<split>.json`.
  - Diffusion workdirs: the continuous-time variational bound of diffusion/likelihood.py, in nats
    and bits per token and as a perplexity upper bound, with its three terms and a Monte Carlo
    standard error. By default it is a bound on the *unclamped* model (the sampler's clamping is
    not in it); the report's `bound_on` names the model.
  - Autoregressive workdirs: exact perplexity, exp(Σ NLL / Σ tokens), over the same tokens.
Tokens counted: every non-PAD position of the encoded rows, EOS included; the diffusion bound's
numerator also includes what the model pays for the PAD positions it generates (see
likelihood.py), so both kinds divide the probability of the same sentences by the same count.

`--generate` (conditional workdirs) writes one output per source of the split and scores them
against all of that source's references: BLEU (sacrebleu) and chrF, and for E2E the slot error rate
next to the human references'; `--draft_workdir=AR_DIR [--strength=s | --complete]` scores AR
drafts, their refinement by this workdir, or the drafts kept and completed with the source words
they lack; `--mbr=k` keeps the minimum-Bayes-risk output of k samples per source,
`--source_guidance=w` guides them on the source, `--model_time_floor=c` tells the denoiser
noise level max(t, c) (DINOISER's condition-enhanced sampling) and `--predicted_length` (or
`--nopredicted_length`) pins each target's length to the one the model expects for its source;
`--source_coverage=b` nudges each source word into the target once (0 turns it off).
Written to `WORKDIR/eval/generate_<split>[...].json` and `.txt`.

`--samples=FILE --judge_workdir=AR_DIR` scores generated text instead: the judge's perplexity
(generative perplexity) and distinct-n, next to the same figures on as many real validation
sentences (drawn with --seed), the reference the sample figures are read against. Written to
`WORKDIR/eval/samples_<file stem>.json`.

Diffusion options: `--num_t_samples=K` (even; the standard error comes from two replicates of
K/2), `--time_sampling=log_snr|uniform`, `--discrete_steps=T` (the discrete-T bound),
`--x0_estimate=rounding` (the soft-clamped model), `--[no]embedding_noise` (default: on exactly
for `e2e`-trained models), `--max_sequences=N` (the first N sequences only).

Examples:
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e --split=test --num_t_samples=8
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_ar --split=test
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e --text_file=my_sentences.txt
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_cond --generate --steps=200
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_cond --generate --steps=20 --mbr=5 --source_guidance=0.5
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_cond --generate --draft_workdir=/tmp/e2e_cond_ar --strength=0.3
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_cond --generate --draft_workdir=/tmp/e2e_cond_ar --complete
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e --samples=/tmp/e2e/samples.txt \
      --judge_workdir=/tmp/e2e_ar
"""

import os

from absl import flags

from diffusion_lm import cli, parallel
from diffusion_lm.diffusion import likelihood
from diffusion_lm.errors import UserError
from diffusion_lm.evaluation import evaluate, evaluate_generation, evaluate_samples, format_report

FLAGS = flags.FLAGS


def main(argv):
  del argv
  for name in ("source_guidance", "mbr", "model_time_floor", "predicted_length", "source_coverage", "complete"):
    if getattr(FLAGS, name) and not FLAGS.generate:
      raise UserError(f"--{name} applies to --generate (a conditional model's outputs for the test sources)")
  if FLAGS.generate:
    if FLAGS.strength is not None and not FLAGS.draft_workdir:
      raise UserError("--strength refines AR drafts: give --draft_workdir=AR_WORKDIR too")
    report = evaluate_generation(FLAGS.workdir, FLAGS.split, FLAGS.steps, FLAGS.seed, FLAGS.max_sequences,
                                 FLAGS.draft_workdir, FLAGS.strength, source_guidance=FLAGS.source_guidance,
                                 mbr=FLAGS.mbr, model_time_floor=FLAGS.model_time_floor,
                                 predicted_length=FLAGS.predicted_length, source_coverage=FLAGS.source_coverage,
                                 complete=FLAGS.complete)
    name = report["settings"]["report_name"]
  elif FLAGS.samples:
    if not FLAGS.judge_workdir:
      raise UserError("--samples needs --judge_workdir=DIR, an autoregressive workdir (configs/e2e_ar.py)")
    report = evaluate_samples(FLAGS.workdir, FLAGS.samples, FLAGS.judge_workdir, FLAGS.seed, FLAGS.batch_size)
    name = f"samples_{os.path.splitext(os.path.basename(FLAGS.samples))[0]}"
  else:
    report = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.text_file, FLAGS.num_t_samples, FLAGS.seed,
                      FLAGS.batch_size, FLAGS.embedding_noise, FLAGS.discrete_steps, FLAGS.time_sampling,
                      FLAGS.x0_estimate, FLAGS.max_sequences, FLAGS.step)
    name = (f"text_{os.path.splitext(os.path.basename(FLAGS.text_file))[0]}" if FLAGS.text_file
            else FLAGS.split)
  if parallel.is_chief():
    print(format_report(report))
    print(f"Wrote {os.path.join(FLAGS.workdir, 'eval', name + '.json')}")


def run():
  """Console-script entry point (`diffusion-lm-evaluate`)."""
  flags.DEFINE_string("workdir", None, "A workdir written by diffusion_lm.train (diffusion or autoregressive).")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Split of the workdir's dataset to score.")
  flags.DEFINE_string("text_file", None, "Score this UTF-8 file (one example per line) instead of --split.")
  flags.DEFINE_integer("num_t_samples", 8, "Diffusion: time samples per sequence (even; two replicates).")
  flags.DEFINE_integer("seed", 0, "Seed of the Monte Carlo draws (and of the reference sentences).")
  flags.DEFINE_integer("batch_size", 64, "Sequences per batch (a multiple of the device count).")
  flags.DEFINE_bool("embedding_noise", None, "Diffusion: fold Diffusion-LM's x0 = E[w] + σ_0 ε0 noise into "
                    "the forward process (default: exactly when trained with the e2e objective).")
  flags.DEFINE_integer("discrete_steps", 0, "Diffusion: T > 0 gives the discrete-T bound (sum of T posterior "
                       "KLs) instead of the continuous-time one.")
  flags.DEFINE_enum("time_sampling", "log_snr", list(likelihood.TIME_SAMPLING),
                    "Diffusion: draw log-SNR uniformly (default: same bound, bounded integrand) or t uniformly.")
  flags.DEFINE_enum("x0_estimate", "network", list(likelihood.X0_ESTIMATES),
                    "Diffusion: bound the unclamped model (network's x0) or the soft-clamped one (rounding).")
  flags.DEFINE_integer("max_sequences", 0, "Score only the first N sequences (0 = all).")
  flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
  flags.DEFINE_string("samples", None, "Score these generated samples (one per line) with --judge_workdir.")
  flags.DEFINE_string("judge_workdir", None, "An autoregressive workdir that judges --samples.")
  flags.DEFINE_bool("generate", False, "Conditional workdirs: write one output per source of --split and score "
                    "BLEU, chrF and (E2E) the slot error rate against all its references.")
  flags.DEFINE_integer("steps", None, "With --generate: sampling steps (default: the config's sample.steps).")
  flags.DEFINE_string("draft_workdir", None, "With --generate: a conditional AR workdir that drafts; with "
                      "--strength this workdir refines the drafts, without it the drafts are scored.")
  flags.DEFINE_float("strength", None, "With --draft_workdir: refine strength in [0, 1].")
  flags.DEFINE_bool("complete", False, "With --draft_workdir: keep each draft and write after it the source words "
                    "it lacks (this diffusion workdir; instead of --strength).")
  flags.DEFINE_float("source_guidance", 0.0, "With --generate: classifier-free guidance weight w on the source "
                     "(logits = c + w·(c − u); needs a model trained with data.source_dropout > 0).")
  flags.DEFINE_float("model_time_floor", None, "With --generate: the denoiser is told noise level max(t, c) "
                     "(DINOISER's condition-enhanced sampling; default: the config's sample.model_time_floor).")
  flags.DEFINE_bool("predicted_length", None, "With --generate: pin each target's length to the model's expected "
                    "length for its source, or let the model choose (--nopredicted_length); default: the config's "
                    "sample.predicted_length.")
  flags.DEFINE_float("source_coverage", None, "With --generate: b > 0 adds b to the logits of the source's words "
                     "and keeps each from repeating (0 turns it off; default: the config's sample.source_coverage).")
  flags.DEFINE_integer("mbr", None, "With --generate: draw k outputs per source and keep the minimum-Bayes-risk "
                       "one (highest mean BLEU against the other k − 1); k times the sampling time.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
