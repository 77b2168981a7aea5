"""Masked (absorbing-state) diffusion on E2E, MDLM's recipe: the third kind of the comparison.

Same data, tokenizer, backbone size (d_model 128 × 4 layers, mlp 512), sequence length, batch
and steps as configs/e2e.py and configs/e2e_ar.py, so the three compare at equal training compute
(see BENCHMARKS.md, "Continuous vs masked vs autoregressive"). The loss is MDLM's continuous-time
bound (cross-entropy on masked positions weighted by 1/t, log-linear schedule, SUBS); sampling
is ancestral unmasking with the network cached across steps where nothing changed.

Example:
  python -m diffusion_lm.train --config=configs/e2e_masked.py --workdir=/tmp/e2e_masked
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_masked --split=test
  python -m diffusion_lm.sample --workdir=/tmp/e2e_masked --num_samples=8 --steps=50
"""

from configs import e2e


def get_config():
  return as_masked(e2e.get_config())


def as_masked(config):
  """The masked twin of a diffusion config: same data, backbone and steps; configs/ptb_masked.py uses it too."""
  config.model.kind = "masked"  # MDLM over token ids (models/masked.py); the diffusion section is unused.
  config.train.learning_rate = 1e-3  # The AR twin's setting: both predict tokens with the same backbone.
  config.train.warmup_steps = 100  # As the AR twin.
  config.train.embedding_lr_multiplier = 1.0  # The continuous recipe's faster embedding table is not part of this kind.
  config.sample.steps = 50  # Unmasking steps; 64 positions, so more than 64 add nothing.
  config.sample.temperature = 1.0  # Draw tokens from the model's own distribution.
  return config
