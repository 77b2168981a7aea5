"""The masked-diffusion model's inference API: sampling, infilling, lengths, editing, MBR, scoring.

The same calls and flags as the continuous model's `Pipeline` (templates, prefix / suffix,
anchors, `length`, `edit(strength, keep)`, `mbr`), through MDLM's ancestral unmasking
(diffusion/masked.py): pinned tokens are given from the start and never change, and editing
re-masks each unkept token of the draft with probability `strength`, then unmasks from
t = strength. Classifier guidance steers continuous latents and has no counterpart here.

Example:
  >>> pipe = diffusion_lm.load("runs/e2e_masked")
  >>> pipe.sample(4, steps=50, seed=0)
  >>> pipe.infill("The Eagle is a __ __ near __ .", num_samples=2)
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lm import control, parallel, scoring
from diffusion_lm.data.layout import SPECIAL_IDS
from diffusion_lm.diffusion import masked, samplers
from diffusion_lm.diffusion_pipeline import Pipeline


class MaskedPipeline(Pipeline):
  """Samples text from a masked-diffusion model's (EMA) parameters.

  `sampler` and `clamp` arguments are accepted and ignored (continuous-only), so the sample
  binary calls every pipeline the same way. `cached=False` calls the network at every step
  (for timing the cache).
  """

  cached = True

  def _sampler(self, num_samples: int, steps: int, sampler: str, clamp: bool, trajectory: bool = False,
               source_guidance: float = 0.0):
    del sampler, clamp, source_guidance  # Continuous settings; a masked model is never conditional.
    if trajectory:
      raise control.ControlError("trajectory() records continuous latents; a masked workdir has none")
    key = ("masked", num_samples, steps, float(self.config.sample.temperature), self.cached)
    if key not in self._compiled:
      def run(params, time_warp_table, rng, anchor_tokens=None, anchor_mask=None, anchor_words_only=None, start_tokens=None,
              start_time=1.0):
        del time_warp_table  # Continuous-only.
        banned_BLV = None
        if anchor_tokens is not None:
          banned_BLV = samplers.Anchors(anchor_tokens, anchor_mask, anchor_words_only, SPECIAL_IDS).banned(
              self.model.vocab_size)
        logits_fn = lambda z_BL: self.model.apply({"params": params}, z_BL)
        tokens_BL, _ = masked.sample(
            logits_fn, rng, (num_samples, self.config.data.seq_len), steps, self.model.mask_id,
            anchor_tokens_BL=anchor_tokens, anchor_mask_BL=anchor_mask, banned_BLV=banned_BLV,
            start_BL=start_tokens, start_time=start_time, temperature=self.config.sample.temperature,
            cached=self.cached)
        return tokens_BL
      self._compiled[key] = jax.jit(run, out_shardings=parallel.replicated(self.mesh))
    return self._compiled[key]

  def _start_inputs(self, drafts_BL: np.ndarray, start_time: float, seed: int) -> dict:
    """Where editing starts: each draft token masked with probability t* = `start_time`."""
    t_B = jnp.full((len(drafts_BL),), start_time, jnp.float32)
    key = jax.random.fold_in(jax.random.key(seed), 1)
    start_BL = masked.mask_tokens(jnp.asarray(drafts_BL, jnp.int32), t_B, key, self.model.mask_id)
    return {"start_tokens": start_BL, "start_time": np.float32(start_time)}

  def _score_row_fn(self, num_t_samples: int, seed: int) -> scoring.RowFn:
    return scoring.masked_row_fn(self.model, self.config, scoring.ScoringOptions(num_t_samples, seed))

  def guidance(self, *args, **kwargs):
    del args, kwargs
    raise control.ControlError("classifier guidance steers continuous latents; a masked workdir supports "
                               "infilling, anchors, length, editing and MBR, not --control")

  def trajectory(self, *args, **kwargs):
    del args, kwargs
    raise control.ControlError("trajectory() records continuous latents; a masked workdir has none")
