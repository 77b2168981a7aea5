"""Masked (absorbing-state) diffusion as a model kind: MDLM's objective, bound and sampler on the
shared bidirectional backbone (models/masked.py, diffusion/masked.py, masked_pipeline.py).

Example:
  python -m diffusion_lm.train --config=configs/e2e_masked.py --workdir=/tmp/e2e_masked
"""

import jax
import jax.numpy as jnp

from diffusion_lm import flops, scoring
from diffusion_lm.diffusion import masked
from diffusion_lm.kinds.base import ModelKind
from diffusion_lm.masked_pipeline import MaskedPipeline
from diffusion_lm.models.masked import MaskedLM, masked_from_config


def build_model(config, vocab_size: int) -> MaskedLM:
  return masked_from_config(config.model, vocab_size, config.data.seq_len)


def init_variables(model, config, rng):
  return model.init(rng, jnp.zeros((1, config.data.seq_len), jnp.int32))


def make_loss_fn(model, config):
  """MDLM's bound per position on a batch (t drawn inside, low-discrepancy)."""
  def masked_diffusion_loss(params, tokens_BL, rng, train: bool, t_B=None):
    loss_rng, dropout_rng = jax.random.split(rng)
    use_dropout = train and config.model.dropout > 0
    logits_fn = lambda z_BL: model.apply({"params": params}, z_BL, not use_dropout,
                                         rngs={"dropout": dropout_rng} if use_dropout else {})
    return masked.masked_loss(logits_fn, tokens_BL, loss_rng, model.mask_id, t_B)
  return masked_diffusion_loss


def make_pipeline(config, model, state, tokenizer, mesh, step) -> MaskedPipeline:
  return MaskedPipeline(config, model, state["ema_params"], tokenizer, mesh, step)


KIND = ModelKind(
    name="masked", build_model=build_model, init_variables=init_variables, make_loss_fn=make_loss_fn,
    row_fn=scoring.masked_row_fn, report=scoring.masked_bound_report, make_pipeline=make_pipeline,
    train_step_flops=flops.token_model_train_step_flops, samples_while_training=True)
