"""The three calls the diffusion math needs from a denoiser, as plain functions.

Objectives, samplers and the likelihood take a `DenoiserFns` instead of a Flax module, so they
stay pure functions of arrays and can be tested with hand-written stand-ins.

Example:
  >>> fns = bind_denoiser(model, params)
  >>> logits, x0 = fns.denoise(noisy, t, None)
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DenoiserFns:
  embed: Callable[[jax.Array], jax.Array]  # tokens [B, L] → E[w] [B, L, d]
  denoise: Callable[..., tuple[jax.Array, jax.Array]]  # (z_t, t, x0_prev|None) → (logits, x̂0)
  round_logits: Callable[[jax.Array], jax.Array]  # x [B, L, d] → logits [B, L, V]
  embedding_table: jax.Array  # E [V, d] as the model uses it (normalised if configured), for clamping
  self_conditioning: bool = False
  categorical: bool = False  # x̂0 = softmax(logits) E, so a score temperature can re-derive it
  # (t, freeze_interior=False, freeze_endpoints=False) → γ(t); has parameters when learned.
  log_snr: Callable[..., jax.Array] | None = None


def bind_denoiser(model, params, dropout_rng: jax.Array | None = None) -> DenoiserFns:
  """Closes a Denoiser module over its params (and a dropout key when training)."""
  variables = {"params": params}
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  deterministic = dropout_rng is None
  return DenoiserFns(
      embed=lambda tokens: model.apply(variables, tokens, method=model.embed),
      denoise=lambda noisy, t, self_cond=None: model.apply(
          variables, noisy, t, self_cond, deterministic, rngs=rngs),
      round_logits=lambda x: model.apply(variables, x, method=model.round_logits),
      embedding_table=model.apply(variables, method=model.table),
      self_conditioning=model.self_conditioning,
      categorical=model.parameterization == "categorical",
      log_snr=lambda t, freeze_interior=False, freeze_endpoints=False: model.apply(
          variables, t, freeze_interior, freeze_endpoints, method=model.log_snr),
  )


def with_clean_positions(fns: DenoiserFns, tokens_BL: jax.Array, clean_BL: jax.Array) -> DenoiserFns:
  """The denoiser seeing the clean E[w] at `clean_BL` positions, whatever z_t holds there.

  A conditional model's source (DiffuSeq's partial noising): the forward process, the sampler
  and the bound all run as for an unconditional model, and the network is only ever shown the
  source clean; the objectives then count the other positions only.

  Example:
    >>> fns = with_clean_positions(bind_denoiser(model, params), tokens_BL, layout.source_mask(tokens_BL))
  """
  clean_BLD = fns.embed(tokens_BL)

  def denoise(noisy_BLD, t_B, self_cond_BLD=None):
    return fns.denoise(jnp.where(clean_BL[..., None], clean_BLD.astype(noisy_BLD.dtype), noisy_BLD), t_B,
                       self_cond_BLD)
  return dataclasses.replace(fns, denoise=denoise)
