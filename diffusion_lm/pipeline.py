"""The inference API: `load(WORKDIR)` gives the pipeline of the workdir's model kind.

A diffusion workdir gives a `Pipeline` (diffusion_pipeline.py: sampling, infilling, editing,
guidance, scoring); an autoregressive one an `AutoregressivePipeline` (decoding.py: KV-cached
decoding). Both are named here too, as this is where users look for them.

Example:
  >>> import diffusion_lm
  >>> pipe = diffusion_lm.load("/tmp/e2e")
  >>> for line in pipe.sample(num_samples=4, steps=50, seed=0):
  ...   print(line)
"""

from diffusion_lm import kinds, workdir as workdir_lib
from diffusion_lm.decoding import AutoregressivePipeline
from diffusion_lm.diffusion_pipeline import Pipeline, Trajectory


def load(workdir: str, step: int | None = None):
  """Loads the (latest or given) checkpoint of `workdir` onto the current devices.

  Example:
    >>> pipe = load("/tmp/e2e")
    >>> pipe.sample(2)
  """
  loaded = workdir_lib.load_checkpoint(workdir, step)
  pipe = kinds.get(loaded.config.model.kind).make_pipeline(
      loaded.config, loaded.model, loaded.state, loaded.tokenizer, loaded.mesh, loaded.step)
  pipe.workdir = workdir  # Guidance looks for WORKDIR/classifier there.
  return pipe


__all__ = ["AutoregressivePipeline", "Pipeline", "Trajectory", "load"]
