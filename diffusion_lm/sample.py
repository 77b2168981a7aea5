"""The sampling binary: prints (and optionally writes) one sample per line.

Example:
  python -m diffusion_lm.sample --workdir=/tmp/e2e --num_samples=8 --steps=200 --seed=0 \
      --output=/tmp/e2e/samples.txt
  python -m diffusion_lm.sample --workdir=/tmp/e2e --steps=50 --sample_setting=renoise_correlation=-0.6
  python -m diffusion_lm.sample --workdir=/tmp/e2e --infill="The Eagle is a __ __ near __ ."
  python -m diffusion_lm.sample --workdir=/tmp/e2e --edit="The Eagle are a cheap pub." --strength=0.4
  python -m diffusion_lm.sample --workdir=/tmp/e2e --length=12 --control=food=Italian --mbr=4
  python -m diffusion_lm.sample --workdir=/tmp/e2e --control=priceRange=cheap --best_of=4
  python -m diffusion_lm.sample --workdir=/tmp/e2e_cond --source="name[The Eagle], eatType[pub], food[French]"
  python -m diffusion_lm.sample --workdir=/tmp/e2e_cond --source_file=mrs.txt --output=out.txt
  python -m diffusion_lm.sample --workdir=/tmp/e2e_cond --source_file=mrs.txt --draft_workdir=/tmp/e2e_cond_ar \
      --strength=0.3
  python -m diffusion_lm.sample --workdir=/tmp/e2e_cond --source_file=mrs.txt --draft_workdir=/tmp/e2e_cond_ar \
      --complete
"""

import os

from absl import flags

from diffusion_lm import cli, config_utils, control, evaluation, pipeline, workdir as workdir_lib
from diffusion_lm.data import datasets
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
  sources = read_sources()
  if FLAGS.draft_workdir and sources is None:
    raise UserError("--draft_workdir drafts targets for sources: give --source or --source_file")
  if FLAGS.complete and (not FLAGS.draft_workdir or FLAGS.strength is not None):
    raise UserError("--complete extends AR drafts: give --draft_workdir=AR_WORKDIR, and no --strength (that "
                    "rewrites the drafts instead)")
  if FLAGS.complete and FLAGS.mbr:
    raise UserError("--mbr picks among whole samples; --complete keeps each draft and adds to it (drop --mbr)")
  if FLAGS.source_guidance and (sources is None or FLAGS.draft_workdir):
    raise UserError("--source_guidance steers a conditional model's targets towards their sources: give --source or "
                    "--source_file, without --draft_workdir")
  pipe = pipeline.load(FLAGS.workdir, FLAGS.step)
  config_utils.apply_sample_settings(pipe.config, FLAGS.sample_setting)
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
  if sources is not None:
    if FLAGS.edit is not None or FLAGS.control:
      raise UserError("--source cannot be combined with --edit or --control (the source is the control); use "
                      "--draft_workdir with --strength to revise drafts")
    per_source = FLAGS.num_samples if FLAGS["num_samples"].present else 1
    if FLAGS.draft_workdir:
      if (FLAGS.strength is not None or FLAGS.complete) and not isinstance(pipe, pipeline.Pipeline):
        raise UserError(f"--draft_workdir with --{'complete' if FLAGS.complete else 'strength'} revises drafts "
                        f"with a diffusion model; --workdir holds a model of kind {pipe.config.model.kind}")
      drafter = evaluation.load_drafter(FLAGS.workdir, FLAGS.draft_workdir)
      lines = drafter.generate([s for s in sources for _ in range(per_source)], seed=FLAGS.seed, **ar_options)
      if FLAGS.strength is not None:
        lines = pipe.refine(lines, [s for s in sources for _ in range(per_source)], FLAGS.strength, FLAGS.steps,
                            FLAGS.seed, FLAGS.sampler, FLAGS.clamp, mbr=FLAGS.mbr)
      elif FLAGS.complete:
        lines = pipe.complete(lines, [s for s in sources for _ in range(per_source)], FLAGS.steps, FLAGS.seed,
                              FLAGS.sampler, FLAGS.clamp)
    else:
      target_controls = {"template": FLAGS.infill, "prefix": FLAGS.prefix, "suffix": FLAGS.suffix,
                         "anchors": control.parse_anchor_specs(FLAGS.anchor), "length": FLAGS.length}
      target_controls = {name: value for name, value in target_controls.items() if value}
      if isinstance(pipe, pipeline.Pipeline):
        target_controls["mbr"] = FLAGS.mbr
        target_controls["source_guidance"] = FLAGS.source_guidance
      elif FLAGS.source_guidance:
        raise UserError("--source_guidance steers a conditional diffusion model; --workdir holds an "
                        "autoregressive one")
      lines = pipe.generate(sources, per_source, FLAGS.steps, FLAGS.seed, FLAGS.sampler, FLAGS.clamp,
                            **target_controls, **ar_options)
  elif FLAGS.edit is not None:
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


def read_sources() -> list[str] | None:
  """--source, or the non-blank lines of --source_file, or None (an unconditional sample)."""
  if FLAGS.source is not None and FLAGS.source_file:
    raise UserError("give --source or --source_file, not both")
  if FLAGS.source_file:
    if not os.path.isfile(FLAGS.source_file):
      raise UserError(f"--source_file={FLAGS.source_file} does not exist; give a UTF-8 file with one source per line")
    sources = list(datasets.read_text_lines(FLAGS.source_file))
    if not sources:
      raise UserError(f"--source_file={FLAGS.source_file} has no non-blank lines; give one source per line")
    return sources
  return None if FLAGS.source is None else [FLAGS.source]


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
  # Conditional workdirs (data.conditional): the source in, the target out.
  flags.DEFINE_string("source", None, "A conditional workdir's source, e.g. an E2E MR \"name[The Eagle], food[French]\"; "
                      "--num_samples outputs (default 1).")
  flags.DEFINE_string("source_file", None, "One source per line; --num_samples outputs each (default 1), in order.")
  flags.DEFINE_float("source_guidance", 0.0, "With --source: classifier-free guidance weight w (logits = c + "
                     "w·(c − u)); needs a model trained with --config.data.source_dropout > 0.")
  flags.DEFINE_string("draft_workdir", None, "A conditional AR workdir drafts each output; with --strength this "
                      "(diffusion) workdir refines the drafts, with --complete it writes after each draft the "
                      "source words it lacks.")
  flags.DEFINE_bool("complete", False, "With --draft_workdir: keep each draft word for word and write after it the "
                    "source words it lacks (instead of --strength).")
  flags.DEFINE_float("temperature", None, "Autoregressive workdirs: sampling temperature (0 = greedy; default 1); "
                     "diffusion workdirs: score temperature (default: the config's sample.temperature).")
  flags.DEFINE_multi_string("sample_setting", [], "FIELD=VALUE of the workdir's config.sample for this call, e.g. "
                            "renoise_correlation=-0.6 or source_coverage=4 (repeatable; configs/base.py explains each).")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
