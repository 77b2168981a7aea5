"""The sampling binary: prints (and optionally writes) one sample per line.

Example:
  python -m diffusion_lm.sample --workdir=/tmp/e2e --num_samples=8 --steps=200 --seed=0 \
      --output=/tmp/e2e/samples.txt
  python -m diffusion_lm.sample --workdir=/tmp/e2e --infill="The Eagle is a __ __ near __ ."
  python -m diffusion_lm.sample --workdir=/tmp/e2e --edit="The Eagle are a cheap pub." --strength=0.4
  python -m diffusion_lm.sample --workdir=/tmp/e2e --length=12 --control=food=Italian --mbr=4
  python -m diffusion_lm.sample --workdir=/tmp/e2e --control=priceRange=cheap --best_of=4
"""

import os

from absl import flags

from diffusion_lm import cli, control, pipeline, workdir as workdir_lib
from diffusion_lm.diffusion import guidance as guidance_lib
from diffusion_lm.diffusion import samplers
from diffusion_lm.errors import UserError

FLAGS = flags.FLAGS


def main(argv):
  del argv
  control.check_sampling_args(FLAGS.num_samples, FLAGS.steps)
  if FLAGS.edit is not None and FLAGS.strength is None:
    raise UserError("--edit needs --strength in [0, 1] (how much of the draft to rewrite)")
  if FLAGS.strength is not None:
    control.check_strength(FLAGS.strength)
  if FLAGS.edit is not None and (FLAGS.infill or FLAGS.prefix or FLAGS.suffix or FLAGS.anchor):
    raise UserError("--edit cannot be combined with --infill/--prefix/--suffix/--anchor; use --keep")
  if FLAGS.output:
    workdir_lib.check_output_file(FLAGS.output, "--output")  # Before the work, not after it.
  pipe = pipeline.load(FLAGS.workdir, FLAGS.step)
  args = (FLAGS.num_samples, FLAGS.steps, FLAGS.seed, FLAGS.sampler, FLAGS.clamp)
  ar_options = {}  # Autoregressive workdirs: KV-cached decoding (diffusion_lm/decoding.py).
  if FLAGS.temperature is not None:
    if not isinstance(pipe, pipeline.Pipeline):
      ar_options["temperature"] = FLAGS.temperature
    elif FLAGS.temperature < 1e-3:
      raise UserError(f"--temperature={FLAGS.temperature}: a diffusion model's score temperature must be "
                          ">= 0.001 (x0 = softmax(logits / temperature) E; 1 is the model's own)")
    else:
      pipe.config.sample.temperature = FLAGS.temperature
  guidance = None
  if FLAGS.control:
    guidance = pipe.guidance(FLAGS.control, FLAGS.guidance_weight, FLAGS.guidance_step_size, FLAGS.guidance_steps)
  if FLAGS.edit is not None:
    keep = [int(k) if k.isdigit() else k for k in FLAGS.keep]
    lines = pipe.edit(FLAGS.edit, FLAGS.strength, *args, keep=keep, guidance=guidance, mbr=FLAGS.mbr,
                      best_of=FLAGS.best_of)
  elif FLAGS.infill or FLAGS.prefix or FLAGS.suffix or FLAGS.anchor:
    lines = pipe.infill(FLAGS.infill, *args, prefix=FLAGS.prefix, suffix=FLAGS.suffix,
                        anchors=control.parse_anchor_specs(FLAGS.anchor), length=FLAGS.length, blank=FLAGS.blank,
                        guidance=guidance, mbr=FLAGS.mbr, best_of=FLAGS.best_of, **ar_options)
  else:
    lines = pipe.sample(*args, length=FLAGS.length, guidance=guidance, mbr=FLAGS.mbr, best_of=FLAGS.best_of,
                        **ar_options)
  print("\n".join(lines))
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      f.write("\n".join(lines) + "\n")


def run():
  """Console-script entry point (`diffusion-lm-sample`)."""
  flags.DEFINE_string("workdir", None, "A workdir written by diffusion_lm.train.")
  flags.DEFINE_integer("num_samples", 8, "How many samples to draw.")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's sample.steps).")
  flags.DEFINE_integer("seed", 0, "Sampling seed; the same seed gives the same samples.")
  flags.DEFINE_enum("sampler", None, list(samplers.STEPS), "Sampler (default: the config's).")
  flags.DEFINE_bool("clamp", None, "Clamp x0 to the nearest embedding (default: the config's).")
  flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
  flags.DEFINE_string("output", None, "Also write the samples to this file.")
  # Control (diffusion_lm/control.py): infilling, editing, length, classifier guidance, MBR.
  flags.DEFINE_string("infill", None, "A template: words are kept, each --blank is one word to fill, "
                      "BLANK*N up to N words, a trailing BLANK* lets the model choose the length.")
  flags.DEFINE_string("blank", "__", "The blank marker in --infill templates.")
  flags.DEFINE_string("prefix", None, "Text the samples start with.")
  flags.DEFINE_string("suffix", None, "Text the samples end with (with --length: exact length).")
  flags.DEFINE_multi_string("anchor", [], "POSITION:WORD pinned at a 0-based position (repeatable).")
  flags.DEFINE_integer("length", None, "Exact length in tokens (EOS pinned after it).")
  flags.DEFINE_string("edit", None, "A draft to rewrite; needs --strength.")
  flags.DEFINE_float("strength", None, "Edit strength in [0, 1]: 0 keeps the draft, 1 rewrites it from noise.")
  flags.DEFINE_multi_string("keep", [], "With --edit: a word (or 0-based position) of the draft to keep.")
  flags.DEFINE_multi_string("control", [], "FIELD=VALUE for classifier guidance, e.g. food=Italian (repeatable); "
                            "needs python -m diffusion_lm.train_classifier --workdir=WORKDIR first.")
  flags.DEFINE_float("guidance_weight", guidance_lib.FLUENCY_WEIGHT,
                     "λ, the weight of fluency log p(z_s | z_t) in guidance (Diffusion-LM: 0.01).")
  flags.DEFINE_float("guidance_step_size", guidance_lib.STEP_SIZE, "Adagrad step size of guidance (Diffusion-LM: 0.1).")
  flags.DEFINE_integer("guidance_steps", guidance_lib.NUM_STEPS, "Adagrad steps per diffusion step (Diffusion-LM: 3).")
  flags.DEFINE_integer("mbr", None, "Draw N candidates per sample and print the minimum-Bayes-risk one.")
  flags.DEFINE_integer("best_of", None, "With --control: draw N guided candidates per sample and print the "
                       "one the classifier rates highest on its finished text.")
  flags.DEFINE_float("temperature", None, "Autoregressive workdirs: sampling temperature (0 = greedy; default 1); "
                     "diffusion workdirs: score temperature (default: the config's sample.temperature).")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
