"""Where a trained diffusion model's training compute goes: its loss at each noise level, and the
share of training examples (and text positions) it already gets right — compute spent there
teaches it nothing (issue 17, lever 3: "measure first what share of training examples already have
cross-entropy ≈ 0").

For `--num_rows` validation rows and `--num_bins` times t (bin centres), the denoiser's per-position
cross-entropy against the clean tokens (the CDCD loss; for other objectives the same cross-entropy
of its logits), split into text positions (non-PAD) and PAD. Each bin is weighted by how often
training draws its times: uniform, or the workdir's time-warping density when it has one.

Example:
  python benchmarks/loss_profile.py --workdir=runs/kinds/e2e --num_rows=512
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_utils  # noqa: E402
from diffusion_lm import cli  # noqa: E402
from diffusion_lm.data.layout import PAD_ID  # noqa: E402
from diffusion_lm.diffusion import process, time_warping  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A diffusion workdir.")
flags.DEFINE_integer("num_rows", 512, "Validation rows.")
flags.DEFINE_integer("num_bins", 20, "Times t, at bin centres of [0, 1].")
flags.DEFINE_float("solved_nats", 0.01, "An example (position) counts as solved below this cross-entropy.")
flags.DEFINE_string("output", None, "Write the JSON here.")


def main(argv):
  del argv
  loaded, tokens_BL, fns, counted_BL = bench_utils.denoiser_on_validation(FLAGS.workdir, FLAGS.num_rows)
  text_BL, pad_BL = counted_BL & (tokens_BL != PAD_ID), counted_BL & (tokens_BL == PAD_ID)

  @jax.jit
  def cross_entropy_at(t, key):
    clean_BLD = fns.embed(tokens_BL)
    t_B = jnp.full((tokens_BL.shape[0],), t)
    alpha, sigma = process.alpha_sigma(fns.log_snr(t_B))
    noisy_BLD = process.diffuse(clean_BLD, alpha, sigma, jax.random.normal(key, clean_BLD.shape))
    logits_BLV, _ = fns.denoise(noisy_BLD, t_B, None)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), tokens_BL)

  centres = (np.arange(FLAGS.num_bins) + 0.5) / FLAGS.num_bins
  if "time_warp" in loaded.state:  # The density training drew t from: dF/dt of the warped CDF.
    knots, cdf = (np.asarray(x) for x in time_warping.cdf_knots(loaded.state["time_warp"]))
    edges = np.linspace(0, 1, FLAGS.num_bins + 1)
    weights = np.diff(np.interp(edges, knots, cdf))
  else:
    weights = np.full(FLAGS.num_bins, 1.0 / FLAGS.num_bins)
  bins = []
  for index, t in enumerate(centres):
    ce_BL = np.asarray(cross_entropy_at(float(t), jax.random.key(index)))
    example_B = (ce_BL * np.asarray(counted_BL)).sum(1) / np.asarray(counted_BL).sum(1)
    text, pad = np.asarray(text_BL), np.asarray(pad_BL)
    bins.append({"t": float(t), "train_weight": float(weights[index]),
                 "text_nats": float(ce_BL[text].mean()), "pad_nats": float(ce_BL[pad].mean()) if pad.any() else 0.0,
                 "solved_examples": float(np.mean(example_B < FLAGS.solved_nats)),
                 "solved_text_positions": float(np.mean(ce_BL[text] < FLAGS.solved_nats)),
                 "pad_share_of_loss": float(ce_BL[pad].sum() / max(ce_BL[text | pad].sum(), 1e-9))})
    print(json.dumps(bins[-1]), flush=True)
  weighted = lambda name: float(sum(b["train_weight"] * b[name] for b in bins))
  summary = {name: weighted(name) for name in ("solved_examples", "solved_text_positions", "pad_share_of_loss",
                                               "text_nats", "pad_nats")}
  summary["pad_share_of_positions"] = float(np.asarray(pad_BL).sum() / np.asarray(text_BL | pad_BL).sum())
  print("training-weighted:", json.dumps(summary))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"bins": bins, "summary": summary, "workdir": FLAGS.workdir, "step": int(loaded.step)}, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
