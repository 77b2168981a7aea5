"""The training binary: `train(config, workdir)` (trainer.py) from absl flags.

Re-running the same command on a workdir resumes from its latest checkpoint; a finished run is
not retrained. `--dry_run` plans the model on a mesh without data or memory.

Example:
  python -m diffusion_lm.train --config=configs/e2e.py --workdir=/tmp/e2e \
      --config.train.num_steps=20000
"""

import sys

from absl import flags
from ml_collections import config_flags

from diffusion_lm import cli, parallel
from diffusion_lm.errors import UserError
from diffusion_lm.trainer import dry_run, train

FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = cli.config_from_flag()
  if FLAGS.dry_run and FLAGS.dry_run_devices:  # Plan for a pod on a laptop: that many fake CPU devices.
    parallel.use_fake_cpu_devices(FLAGS.dry_run_devices)
  else:  # Before anything touches a device.
    parallel.use_cpu_devices(config.mesh.get("cpu_devices", 1))
  if FLAGS.dry_run:
    print(parallel.format_report(dry_run(config)))
    return
  if not FLAGS.workdir:
    raise UserError("--workdir is required (only --dry_run runs without one)")
  parallel.initialize_from_flags()  # No-op for one process.
  result = train(config, FLAGS.workdir)
  if result["preempted"]:
    sys.exit(cli.INTERRUPTED_EXIT_CODE if result["stop_signal"] == "SIGINT" else cli.PREEMPTED_EXIT_CODE)
  if parallel.is_chief():
    print(f"Trained to step {result['step']} in {FLAGS.workdir}.")
    if result.get("samples"):
      print("Samples:")
      print("\n".join(result["samples"]))


def run():
  """Console-script entry point (`diffusion-lm-train`)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/e2e.py.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and the tokenizer.")
  flags.DEFINE_bool("dry_run", False, "Build the model on the mesh abstractly and print parameter count, "
                    "per-device bytes and each weight's sharding; do not train.")
  flags.DEFINE_integer("dry_run_devices", 0, "With --dry_run: plan for this many devices (fake CPU "
                       "devices), e.g. 32 for a v5e-32; 0 = the devices present.")
  parallel.define_distributed_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(main)


if __name__ == "__main__":
  run()
