"""Masked (absorbing-state) diffusion on Penn Treebank: configs/ptb.py's data, tokens and backbone.

PTB is research-only and never bundled: give the directory as for configs/ptb.py.

Example:
  python -m diffusion_lm.train --config=configs/ptb_masked.py:/work/shared/data/ptb --workdir=/tmp/ptb_masked
"""

from configs import ptb


def get_config(data_dir: str = ""):
  config = ptb.get_config(data_dir)
  config.model.kind = "masked"  # MDLM over token ids (models/masked.py); the diffusion section is unused.
  config.train.learning_rate = 1e-3  # As configs/ptb_ar.py.
  config.sample.steps = 50  # Unmasking steps.
  config.sample.temperature = 1.0  # Draw tokens from the model's own distribution.
  return config
