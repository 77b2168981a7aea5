"""The autoregressive twin of configs/e2e_cond.py: the same rows, backbone, batch and steps, causal.

The row `MR, BOS, reference, EOS` is read left to right and the loss counts the reference only
(the MR is its prefix), so both kinds see the same data at the same size and compute, and
`diffusion_lm.evaluate` compares the diffusion bound on −log p(reference | MR) with this model's
exact NLL on the same tokens. Generation is greedy by default.

Example:
  python -m diffusion_lm.train --config=configs/e2e_cond_ar.py --workdir=/tmp/e2e_cond_ar
  python -m diffusion_lm.sample --workdir=/tmp/e2e_cond_ar --source="name[The Eagle], food[French]"
"""

from configs import e2e_ar


def get_config():
  config = e2e_ar.get_config()
  config.data.conditional = True  # Same rows as configs/e2e_cond.py; loss on the reference only.
  config.data.source_dropout = 0.1  # As configs/e2e_cond.py.
  config.data.seq_len = 96  # As configs/e2e_cond.py.
  config.train.num_steps = 1500  # As configs/e2e_cond.py.
  return config
