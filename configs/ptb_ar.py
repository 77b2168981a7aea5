"""The autoregressive baseline on PTB: configs/ptb.py's data, backbone and steps, with configs/e2e_ar.py's settings.

Example:
  python -m diffusion_lm.train --config=configs/ptb_ar.py:/work/shared/data/ptb --workdir=/tmp/ptb_ar
  python -m diffusion_lm.evaluate --workdir=/tmp/ptb_ar --split=test
"""

from configs import e2e_ar, ptb


def get_config(data_dir: str = ""):
  """`data_dir` (the text after ':' in --config=configs/ptb_ar.py:DIR) holds ptb.{train,valid,test}.txt."""
  return e2e_ar.as_autoregressive(ptb.get_config(data_dir))
