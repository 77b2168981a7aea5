"""Masked (absorbing-state) diffusion on Penn Treebank: configs/ptb.py's data, tokens and backbone.

PTB is research-only and never bundled: give the directory as for configs/ptb.py.

Example:
  python -m diffusion_lm.train --config=configs/ptb_masked.py:/work/shared/data/ptb --workdir=/tmp/ptb_masked
"""

from configs import e2e_masked, ptb


def get_config(data_dir: str = ""):
  """`data_dir` (the text after ':' in --config=configs/ptb_masked.py:DIR) holds ptb.{train,valid,test}.txt."""
  return e2e_masked.as_masked(ptb.get_config(data_dir))
