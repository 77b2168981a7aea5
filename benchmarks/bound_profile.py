"""Where a diffusion model's likelihood bound comes from: its diffusion term, noise level by noise level.

The eval binary's diffusion term is ½ ∫ e^γ ‖x − x̂0(z_γ)‖² dγ per token over the schedule's log-SNR
range (likelihood.py). This splits that integral into `--num_bins` equal bins of γ and evaluates
each bin at its centre on `--num_rows` validation rows (one noise draw each), separately for text
positions and PAD, next to the denoiser's cross-entropy there. It shows which noise levels a recipe
change should target: the high-noise bins hold what the model has not learned about the language;
the bins near γ(0) hold only the residual error of an x̂0 that is already right, weighted by
e^γ ≈ 100 (what the output prior, or a lower `diffusion.max_log_snr`, removes).

Example:
  python benchmarks/bound_profile.py --workdir=runs/kinds/e2e --num_rows=256
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
from diffusion_lm.diffusion import likelihood, process  # noqa: E402
from diffusion_lm.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A diffusion workdir.")
flags.DEFINE_integer("num_rows", 256, "Validation rows.")
flags.DEFINE_integer("num_bins", 24, "Equal bins of log-SNR between γ(1) and γ(0).")
flags.DEFINE_string("output", None, "Write the JSON here.")


def profile(fns, tokens_BL: jax.Array, scored_BL: jax.Array, num_bins: int) -> dict:
  """Per-bin contributions (nats per scored non-PAD token) of text and PAD positions to the diffusion term."""
  log_snr_max, log_snr_min = float(fns.log_snr(jnp.zeros(()))), float(fns.log_snr(jnp.ones(())))
  edges = np.linspace(log_snr_min, log_snr_max, num_bins + 1)
  text_BL = np.asarray(scored_BL & (tokens_BL != PAD_ID))
  pad_BL = np.asarray(scored_BL & (tokens_BL == PAD_ID))
  num_tokens = text_BL.sum()

  @jax.jit
  def at(log_snr, key):
    t = likelihood.invert_log_snr(fns.log_snr, log_snr)
    t_B = jnp.full((tokens_BL.shape[0],), t)
    clean_BLD = fns.embed(tokens_BL).astype(jnp.float32)
    alpha, sigma = process.alpha_sigma(fns.log_snr(t_B))
    noisy_BLD = process.diffuse(clean_BLD, alpha, sigma, jax.random.normal(key, clean_BLD.shape))
    logits_BLV, x0_BLD = fns.denoise(noisy_BLD, t_B, None)
    squared_error_BL = jnp.sum((clean_BLD - x0_BLD.astype(jnp.float32)) ** 2, axis=-1)
    return t, squared_error_BL, optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32),
                                                                                tokens_BL)

  bins = []
  for index in range(num_bins):
    centre, width = 0.5 * (edges[index] + edges[index + 1]), edges[index + 1] - edges[index]
    t, error_BL, ce_BL = (np.asarray(x) for x in at(jnp.float32(centre), jax.random.key(index)))
    weight = 0.5 * np.exp(centre) * width
    bins.append({"log_snr": float(centre), "t": float(t),
                 "text_nats": float(weight * error_BL[text_BL].sum() / num_tokens),
                 "pad_nats": float(weight * error_BL[pad_BL].sum() / num_tokens),
                 "text_squared_error": float(error_BL[text_BL].mean()),
                 "text_cross_entropy": float(ce_BL[text_BL].mean())})
  return {"bins": bins, "text_nats": sum(b["text_nats"] for b in bins), "pad_nats": sum(b["pad_nats"] for b in bins),
          "log_snr_range": [log_snr_min, log_snr_max]}


def main(argv):
  del argv
  if FLAGS.num_bins < 1:
    raise UserError(f"--num_bins={FLAGS.num_bins} must be at least 1")
  loaded, tokens_BL, fns, scored_BL = bench_utils.denoiser_on_validation(FLAGS.workdir, FLAGS.num_rows)
  result = profile(fns, tokens_BL, scored_BL, FLAGS.num_bins)
  print("| log-SNR γ | t | text nats/token | PAD nats/token | text ‖x − x̂0‖² | text cross-entropy |")
  print("|---:|---:|---:|---:|---:|---:|")
  for b in result["bins"]:
    print(f"| {b['log_snr']:.2f} | {b['t']:.4f} | {b['text_nats']:.4f} | {b['pad_nats']:.4f} | "
          f"{b['text_squared_error']:.4f} | {b['text_cross_entropy']:.4f} |")
  print(f"diffusion term: {result['text_nats'] + result['pad_nats']:.3f} nats/token "
        f"(text {result['text_nats']:.3f}, PAD {result['pad_nats']:.3f}), γ from {result['log_snr_range'][0]:.2f} "
        f"to {result['log_snr_range'][1]:.2f}")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({**result, "workdir": FLAGS.workdir, "step": int(loaded.step)}, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
