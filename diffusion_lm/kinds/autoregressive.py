"""The autoregressive baseline as a model kind: a causal Transformer over token ids, next-token
cross-entropy, exact NLL for the eval binary, KV-cached decoding for sampling.

Example:
  python -m diffusion_lm.train --config=configs/e2e_ar.py --workdir=/tmp/e2e_ar
"""

import jax.numpy as jnp

from diffusion_lm import flops, scoring
from diffusion_lm.data.layout import BOS_ID, source_mask
from diffusion_lm.decoding import AutoregressivePipeline
from diffusion_lm.kinds.base import ModelKind
from diffusion_lm.models import autoregressive
from diffusion_lm.numerics import first_argmax


def build_model(config, vocab_size: int) -> autoregressive.AutoregressiveLM:
  return autoregressive.autoregressive_from_config(config.model, vocab_size, config.data.seq_len, BOS_ID)


def init_variables(model, config, rng):
  return model.init(rng, jnp.zeros((1, config.data.seq_len), jnp.int32))


def make_loss_fn(model, config):
  """Next-token cross-entropy over non-PAD targets (EOS counted), a mean per counted token; a conditional
  row counts its target only (the source, BOS included, is the prefix it is written after)."""
  conditional = config.data.conditional

  def autoregressive_loss(params, tokens_BL, rng, train: bool, t_B=None):
    del t_B  # No diffusion time.
    use_dropout = train and config.model.dropout > 0
    logits_BLV = model.apply({"params": params}, tokens_BL, not use_dropout,
                             rngs={"dropout": rng} if use_dropout else {})
    scored_BL = ~source_mask(tokens_BL) if conditional else None
    nll_BL, counted_BL = autoregressive.token_nll(logits_BLV, tokens_BL, scored_BL=scored_BL)
    num_counted = jnp.maximum(jnp.sum(counted_BL), 1)
    loss = jnp.sum(nll_BL) / num_counted
    correct_BL = (first_argmax(logits_BLV) == tokens_BL) & counted_BL
    return loss, {"loss": loss, "accuracy": jnp.sum(correct_BL) / num_counted}
  return autoregressive_loss


def make_pipeline(config, model, state, tokenizer, mesh, step):
  return AutoregressivePipeline(config, model, state["ema_params"], tokenizer, mesh, step)


KIND = ModelKind(
    name="autoregressive", build_model=build_model, init_variables=init_variables, make_loss_fn=make_loss_fn,
    row_fn=scoring.autoregressive_row_fn, report=scoring.perplexity_report, make_pipeline=make_pipeline,
    train_step_flops=flops.token_model_train_step_flops, conditional=True)
