"""The semantic classifier's training binary (classifier_trainer.py does the work).

The classifier p(field = value | z_t, t) is trained on a diffusion workdir's E2E latents and saved
under `WORKDIR/classifier/`, where `Pipeline.guidance([...])` and
`python -m diffusion_lm.sample --control=food=Italian` find it.

Example:
  python -m diffusion_lm.train_classifier --workdir=runs/e2e --steps=2000
"""

from absl import flags

from diffusion_lm import cli
from diffusion_lm.classifier_trainer import train_classifier

FLAGS = flags.FLAGS


def main(argv):
  del argv
  train_classifier(FLAGS.workdir, FLAGS.steps, FLAGS.batch_size, FLAGS.learning_rate, FLAGS.d_model,
                   FLAGS.num_layers, FLAGS.seed)


def run():
  """Console-script entry point (`diffusion-lm-train-classifier`)."""
  flags.DEFINE_string("workdir", None, "A trained E2E diffusion workdir; the classifier is saved in it.")
  flags.DEFINE_integer("steps", 2000, "Optimiser steps.")
  flags.DEFINE_integer("batch_size", 64, "References per step.")
  flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
  flags.DEFINE_integer("d_model", 64, "Classifier width.")
  flags.DEFINE_integer("num_layers", 2, "Classifier Transformer blocks.")
  flags.DEFINE_integer("seed", 0, "Seed for data order, noise and initialisation.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
