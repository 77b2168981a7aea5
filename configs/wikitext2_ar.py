"""The autoregressive twin on WikiText-2: configs/wikitext2.py's data, backbone and steps, with configs/e2e_ar.py's settings.

Example:
  python -m diffusion_lm.train --config=configs/wikitext2_ar.py:/data/wikitext-2 --workdir=/tmp/wt2_ar
  python -m diffusion_lm.evaluate --workdir=/tmp/wt2_ar --split=test
"""

from configs import e2e_ar, wikitext2


def get_config(data_dir: str = ""):
  """`data_dir` (the text after ':' in --config=configs/wikitext2_ar.py:DIR) holds {train,valid,test}.txt."""
  return e2e_ar.as_autoregressive(wikitext2.get_config(data_dir))
