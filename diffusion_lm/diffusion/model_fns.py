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

from diffusion_lm.diffusion import process


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


def with_source_guidance(fns: DenoiserFns, tokens_BL: jax.Array, clean_BL: jax.Array, source_len_B: jax.Array,
                         filler_id: int, weight: float) -> DenoiserFns:
  """Classifier-free guidance on a conditional model's source: logits = c + w·(c − u).

  c is the denoiser with the source shown clean (`with_clean_positions`); u is the same model
  without it, as conditioning dropout trained it: the row shifted left by the source's length
  (`source_len_B` tokens, so the target starts where an empty source's would; the separator
  stays clean) and the freed tail filled with `filler_id` (PAD), each position keeping the noise
  z_t − αE[w] the sampler left there. u is shifted back before mixing. w = 0 is the plain
  conditional model; x̂0 = softmax(logits) E follows the guided logits (categorical models).

  Example:
    >>> fns = with_source_guidance(fns, tokens_BL, source_mask(tokens_BL), source_len_B, PAD_ID, weight=1.5)
  """
  conditional = with_clean_positions(fns, tokens_BL, clean_BL)
  if weight == 0.0:
    return conditional
  length = tokens_BL.shape[1]
  positions_L = jnp.arange(length)
  gather = lambda values, index_BL: jnp.take_along_axis(
      values, index_BL.reshape(index_BL.shape + (1,) * (values.ndim - 2)), axis=1)
  # Unconditional position i reads conditional position i + shift (past the end: the source
  # positions, wrapped round and turned into PAD); conditional position j reads u at j − shift.
  read_BL = (positions_L[None, :] + source_len_B[:, None]) % length
  wrapped_BL = positions_L[None, :] >= length - source_len_B[:, None]
  back_BL = (positions_L[None, :] - source_len_B[:, None]) % length
  read_tokens_BL = gather(tokens_BL, read_BL)
  unconditional_tokens_BL = jnp.where(wrapped_BL, filler_id, read_tokens_BL)
  unconditional = with_clean_positions(fns, unconditional_tokens_BL, gather(clean_BL, read_BL) & ~wrapped_BL)
  moved_BLD = fns.embed(unconditional_tokens_BL) - fns.embed(read_tokens_BL)  # Zero except where wrapped.

  def denoise(noisy_BLD, t_B, self_cond_BLD=None):
    logits_BLV, _ = conditional.denoise(noisy_BLD, t_B, self_cond_BLD)
    alpha_B, _ = process.alpha_sigma(fns.log_snr(t_B))
    unconditional_BLD = gather(noisy_BLD, read_BL) + alpha_B[:, None, None] * moved_BLD.astype(noisy_BLD.dtype)
    self_cond = None if self_cond_BLD is None else gather(self_cond_BLD, read_BL)
    unconditional_logits_BLV = gather(unconditional.denoise(unconditional_BLD, t_B, self_cond)[0], back_BL)
    guided_BLV = logits_BLV + weight * (logits_BLV - unconditional_logits_BLV)
    guided_BLV = jnp.where(clean_BL[..., None], logits_BLV, guided_BLV)  # The source stays the conditional's.
    return guided_BLV, jax.nn.softmax(guided_BLV, axis=-1) @ fns.embedding_table
  return dataclasses.replace(fns, denoise=denoise)


COVERAGE_REPEAT_PENALTY = 5.0  # Logits off a repeated source word: 5 and 10 scored alike (BENCHMARKS.md).
COVERED_SHARE = 0.125  # Of the bonus, for a source word that is already some target position's argmax.


def with_source_coverage(fns: DenoiserFns, tokens_BL: jax.Array, clean_BL: jax.Array, words_V: jax.Array,
                         bias: float, repeat_penalty: float = COVERAGE_REPEAT_PENALTY) -> DenoiserFns:
  """A conditional denoiser nudged to say each source word once: a coverage prior for data-to-text.

  At the target positions (not `clean_BL`), every word token of the row's source (`words_V` [V]:
  True for tokens that are words, not specials or punctuation) gets `bias` added to its logit if
  no target position has it as its argmax yet, and `bias` × COVERED_SHARE if one has; then, where
  a source word is the argmax at several target positions, every position but the most confident
  loses `repeat_penalty` on it. A parallel decoder left alone puts the likeliest source words at
  many positions ("Blue Spice is a coffee shop Blue Spice ...") and leaves others out; the bonus
  makes room for the missing ones, the penalty stops them piling up (cf. the coverage penalty of
  NMT decoding, Tu et al. 2016; Wu et al. 2016). x̂0 = softmax(logits) E follows (categorical
  models). bias = 0 returns `fns` unchanged.

  Example:
    >>> fns = with_source_coverage(fns, tokens_BL, source_mask(tokens_BL), words_V, bias=4.0)
  """
  if bias == 0.0:
    return fns
  batch, length = tokens_BL.shape
  vocab_size = words_V.shape[0]
  target_BL = ~clean_BL
  in_source_BV = jnp.zeros((batch, vocab_size), bool).at[jnp.arange(batch)[:, None], tokens_BL].max(clean_BL)
  source_words_BV = in_source_BV & words_V[None, :]

  def denoise(noisy_BLD, t_B, self_cond_BLD=None):
    logits_BLV, _ = fns.denoise(noisy_BLD, t_B, self_cond_BLD)
    chosen_BLV = jax.nn.one_hot(jnp.argmax(logits_BLV, axis=-1), vocab_size, dtype=bool) & target_BL[..., None]
    covered_BV = jnp.any(chosen_BLV, axis=1)
    bonus_BV = bias * jnp.where(covered_BV, COVERED_SHARE, 1.0) * source_words_BV
    logits_BLV = logits_BLV + bonus_BV[:, None, :] * target_BL[..., None]
    choice_BL = jnp.argmax(logits_BLV, axis=-1)
    # Ties go to the later position, so exactly one copy of a word stays unpenalised.
    confidence_BL = jnp.max(jax.nn.log_softmax(logits_BLV, axis=-1), axis=-1) + 1e-6 * jnp.arange(length)
    source_word_BL = jnp.take_along_axis(source_words_BV, choice_BL, axis=1) & target_BL
    same_word_BLL = (choice_BL[:, :, None] == choice_BL[:, None, :]) & source_word_BL[:, None, :]
    outranked_BL = jnp.any(same_word_BLL & (confidence_BL[:, None, :] > confidence_BL[:, :, None]), axis=-1)
    outranked_BL = outranked_BL & source_word_BL
    logits_BLV = logits_BLV - repeat_penalty * (outranked_BL[..., None] * jax.nn.one_hot(choice_BL, vocab_size))
    return logits_BLV, jax.nn.softmax(logits_BLV, axis=-1) @ fns.embedding_table
  return dataclasses.replace(fns, denoise=denoise)
