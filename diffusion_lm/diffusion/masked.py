"""Masked (absorbing-state) diffusion, MDLM (Sahoo et al. 2024): the math, as pure functions.

Forward process: each token is replaced by MASK independently with probability t (the log-linear
schedule α_t = 1 − t: a fraction t of the tokens is masked at time t). The network sees the
partly masked row and gives logits over the real vocabulary; with the SUBS parameterisation the
mask token never gets mass (it is not among the outputs) and an unmasked token is carried over
unchanged, so only masked positions are predicted. The continuous-time bound (MDLM eq. 10) is

    −log p(w) ≤ E_{t ~ U(0, 1]} [ (1/t) Σ_{l masked in z_t} −log p_θ(w_l | z_t) ]

(the prior and reconstruction terms are exactly 0: z_1 is all MASK, z_0 = w). Training minimises
it per position; the eval binary estimates it per sequence with Monte Carlo stderr.

Sampling: on a grid 1 = t_K > … > t_0 = 0, each still-masked position is revealed between t and
s with probability (t − s)/t, its token drawn from p_θ(· | z_t); revealed tokens never change.
When no position changed in a step the network's output is the same, so the cached sampler
reuses it instead of calling the network again (MDLM's caching).

`logits_fn(z_BL) → [B, L, V]` stands for the network (models/masked.py); MASK is id V.

Example:
  >>> loss, metrics = masked_loss(logits_fn, tokens_BL, key, mask_id=V)
  >>> tokens_BL = sample(logits_fn, key, (8, 64), num_steps=50, mask_id=V)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_lm.diffusion.objectives import low_discrepancy_times
from diffusion_lm.numerics import first_argmax

LogitsFn = Callable[[jax.Array], jax.Array]  # z [B, L] (MASK = V) → logits [B, L, V]
MIN_TIME = 1e-3  # t is drawn in [MIN_TIME, 1]: the 1/t weight stays finite (MDLM's eps).


def mask_tokens(tokens_BL: jax.Array, t_B: jax.Array, key: jax.Array, mask_id: int,
                keep_BL: jax.Array | None = None) -> jax.Array:
  """z_t: each token replaced by MASK with probability t (never where `keep_BL` is True)."""
  masked_BL = jax.random.uniform(key, tokens_BL.shape) < t_B[:, None]
  if keep_BL is not None:
    masked_BL = masked_BL & ~keep_BL
  return jnp.where(masked_BL, mask_id, tokens_BL)


def token_nll(logits_BLV: jax.Array, tokens_BL: jax.Array, z_BL: jax.Array, mask_id: int) -> jax.Array:
  """−log p_θ(w_l | z_t) [B, L] under SUBS: the model's at masked positions, 0 where carried over."""
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), tokens_BL)
  return jnp.where(z_BL == mask_id, nll_BL, 0.0)


def masked_loss(logits_fn: LogitsFn, tokens_BL: jax.Array, rng: jax.Array, mask_id: int,
                t_B: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """MDLM's continuous-time bound per position (Rao-Blackwellised: CE on masked positions × 1/t)."""
  time_rng, mask_rng = jax.random.split(rng)
  batch_size, length = tokens_BL.shape
  if t_B is None:
    t_B = MIN_TIME + (1.0 - MIN_TIME) * low_discrepancy_times(time_rng, batch_size)
  z_BL = mask_tokens(tokens_BL, t_B, mask_rng, mask_id)
  logits_BLV = logits_fn(z_BL)
  nll_BL = token_nll(logits_BLV, tokens_BL, z_BL, mask_id)
  bound_B = jnp.sum(nll_BL, axis=1) / t_B / length
  masked_BL = z_BL == mask_id
  correct = jnp.sum((first_argmax(logits_BLV) == tokens_BL) & masked_BL) / jnp.maximum(jnp.sum(masked_BL), 1)
  loss = jnp.mean(bound_B)
  return loss, {"loss": loss, "masked_accuracy": correct, "masked_fraction": jnp.mean(masked_BL)}


def sequence_bounds(logits_fn: LogitsFn, tokens_BL: jax.Array, row_keys_B: jax.Array, mask_id: int,
                    num_t_samples: int = 8, pad_id: int = 0) -> dict[str, jax.Array]:
  """Per-sequence bound in nats with a Monte Carlo variance, in `likelihood.summarize`'s format.

  Each row gets two independent replicates of K/2 low-discrepancy times (own offset, own masks);
  the estimate is their mean and (a − b)²/4 its variance. The whole bound is the `diffusion`
  term (prior and reconstruction are 0); `pad` is the part paid at PAD positions.

  Example:
    >>> terms = sequence_bounds(logits_fn, tokens_BL, keys_B, mask_id=V, num_t_samples=8)
  """
  if num_t_samples < 2 or num_t_samples % 2:
    raise ValueError(f"num_t_samples={num_t_samples} must be even and >= 2 (two replicates give the stderr)")
  per_replicate = num_t_samples // 2
  batch_size, length = tokens_BL.shape
  is_pad_BL = tokens_BL == pad_id

  def draws(key):
    time_key, mask_key = jax.random.split(key)
    offsets_R = jax.random.uniform(time_key, (2,))
    u_RM = jnp.mod(offsets_R[:, None] + jnp.arange(per_replicate) / per_replicate, 1.0)
    return MIN_TIME + (1.0 - MIN_TIME) * u_RM, jax.random.split(mask_key, num_t_samples)
  t_BRM, mask_keys_BK = jax.vmap(draws)(row_keys_B)
  t_KB = t_BRM.reshape(batch_size, -1).T

  def bound_at(inputs):
    t_B, keys_B = inputs
    masked_BL = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(keys_B) < t_B[:, None]
    z_BL = jnp.where(masked_BL, mask_id, tokens_BL)
    weighted_BL = token_nll(logits_fn(z_BL), tokens_BL, z_BL, mask_id) / t_B[:, None]
    return jnp.stack([jnp.sum(weighted_BL, -1), jnp.sum(jnp.where(is_pad_BL, weighted_BL, 0.0), -1)])
  values_K2B = jax.lax.map(bound_at, (t_KB, jnp.moveaxis(mask_keys_BK, 1, 0)))
  per_replicate_mean = lambda values_KB: values_KB.T.reshape(batch_size, 2, per_replicate).mean(axis=-1)
  replicates = {"diffusion": per_replicate_mean(values_K2B[:, 0]), "pad": per_replicate_mean(values_K2B[:, 1])}
  replicates["prior"] = replicates["reconstruction"] = jnp.zeros((batch_size, 2))
  replicates["total"] = replicates["diffusion"]
  out = {"num_tokens": jnp.sum(~is_pad_BL, axis=-1).astype(jnp.float32)}
  for name, values_BR in replicates.items():
    out[name] = values_BR.mean(-1)
    out[f"{name}_variance"] = 0.25 * (values_BR[:, 0] - values_BR[:, 1]) ** 2
  return out


def sample(logits_fn: LogitsFn, rng: jax.Array, shape: tuple[int, int], num_steps: int, mask_id: int, *,
           anchor_tokens_BL: jax.Array | None = None, anchor_mask_BL: jax.Array | None = None,
           banned_BLV: jax.Array | None = None, start_BL: jax.Array | None = None, start_time: float = 1.0,
           temperature: float = 1.0, cached: bool = True) -> tuple[jax.Array, jax.Array]:
  """Ancestral unmasking; returns (tokens [B, L], network calls made [scalar]).

  Args:
    anchor_tokens_BL, anchor_mask_BL: tokens given where the mask is True (never masked, never changed).
    banned_BLV: True where a token may not be drawn (PAD/EOS in slots that must hold a word).
    start_BL: a partly masked row to start from at `start_time` (editing); default all MASK.
    temperature: draw from softmax(logits / temperature).
    cached: skip the network in a step where no position changed since its last call.
  """
  batch_size, length = shape
  z_BL = jnp.full(shape, mask_id, jnp.int32) if start_BL is None else jnp.asarray(start_BL, jnp.int32)
  if anchor_mask_BL is not None:
    z_BL = jnp.where(anchor_mask_BL, anchor_tokens_BL, z_BL)
  grid = jnp.linspace(start_time, 0.0, num_steps + 1)

  def log_probs(z_BL):
    logits_BLV = logits_fn(z_BL).astype(jnp.float32) / temperature
    if banned_BLV is not None:
      logits_BLV = jnp.where(banned_BLV, -jnp.inf, logits_BLV)
    return jax.nn.log_softmax(logits_BLV, axis=-1)

  def body(carry, inputs):
    z_BL, cache_BLV, stale, calls = carry
    t, s, step_rng = inputs
    refresh = jnp.logical_or(stale, not cached)
    log_p_BLV = jax.lax.cond(refresh, log_probs, lambda _: cache_BLV, z_BL)
    draw_rng, reveal_rng = jax.random.split(step_rng)
    drawn_BL = inverse_cdf_draw(draw_rng, log_p_BLV)
    reveal_BL = (jax.random.uniform(reveal_rng, shape) < (t - s) / t) & (z_BL == mask_id)
    new_BL = jnp.where(reveal_BL, drawn_BL, z_BL)
    return (new_BL, log_p_BLV, jnp.any(reveal_BL), calls + refresh.astype(jnp.int32)), None

  initial = (z_BL, jnp.zeros((batch_size, length, _vocab_size(logits_fn, z_BL))), jnp.array(True),
             jnp.zeros((), jnp.int32))
  (z_BL, _, _, calls), _ = jax.lax.scan(body, initial, (grid[:-1], grid[1:], jax.random.split(rng, num_steps)))
  return z_BL, calls


def inverse_cdf_draw(key: jax.Array, log_p_BLV: jax.Array) -> jax.Array:
  """One token per position from normalised log-probabilities, by inverting the CDF.

  One uniform per position instead of `jax.random.categorical`'s Gumbel per vocabulary entry:
  on the CPU that random draw of B·L·V numbers cost more than the network at E2E's size.
  """
  cdf_BLV = jnp.cumsum(jnp.exp(log_p_BLV), axis=-1)
  u_BL1 = jax.random.uniform(key, log_p_BLV.shape[:-1] + (1,)) * cdf_BLV[..., -1:]
  return jnp.minimum(jnp.sum(cdf_BLV < u_BL1, axis=-1), log_p_BLV.shape[-1] - 1).astype(jnp.int32)


def _vocab_size(logits_fn: LogitsFn, z_BL: jax.Array) -> int:
  """V, read from the network's output shape without running it."""
  return jax.eval_shape(logits_fn, z_BL).shape[-1]
