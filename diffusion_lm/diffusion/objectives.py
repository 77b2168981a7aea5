"""Training objectives for continuous-embedding diffusion LMs. Pure functions.

- `e2e` is Diffusion-LM's L_e2e-simple (Li et al. 2022, eq. 2 + the simplification of App. E):
    x0 = E[w] + σ_0 ε0, z_t = α_t x0 + σ_t ε,
    loss = ‖f(z_t, t) − x0‖² (against E[w] in the t=0 bucket) + (−log p(w | x0)) + ‖α_1 x0‖²,
  each term a mean over positions and embedding dims, all with unit weights.
- `cdcd` is CDCD's score-interpolation objective (Dieleman et al. 2022): cross-entropy of the
  denoiser's logits against the clean tokens, z_t = α_t E[w] + σ_t ε, the embeddings learned
  through z_t (keep them normalised: `model.normalize_embeddings`).

Every objective takes the batch's times `t_B` (None: stratified uniform) and `target_BL`, the
positions the loss counts (None: all; a conditional model's target, its source given clean through
`model_fns.with_clean_positions`), and returns (loss, metrics); metrics hold the per-example loss and t under "per_example/…" for time warping.

Example:
  >>> loss, metrics = e2e_loss(fns, tokens, key, schedules.get_schedule("sqrt"), num_timesteps=2000)
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_lm.diffusion.process import LogSnrFn, alpha_sigma, diffuse
from diffusion_lm.diffusion.model_fns import DenoiserFns
from diffusion_lm.numerics import first_argmax


def low_discrepancy_times(rng: jax.Array, batch_size: int) -> jax.Array:
  """Stratified t ∈ [0, 1): one uniform offset shifted by i/B (VDM), lower-variance than i.i.d."""
  offset = jax.random.uniform(rng, ())
  return jnp.mod(offset + jnp.arange(batch_size) / batch_size, 1.0)


def position_mean(values_BL: jax.Array, target_BL: jax.Array | None) -> jax.Array:
  """[B]: the mean over positions (and any trailing axes) of `values_BL`, over `target_BL` only when given."""
  axes = tuple(range(1, values_BL.ndim))
  if target_BL is None:
    return jnp.mean(values_BL, axis=axes)
  weight_BL = jnp.reshape(target_BL, target_BL.shape + (1,) * (values_BL.ndim - 2))
  count_B = jnp.maximum(jnp.sum(target_BL, axis=1), 1) * math.prod(values_BL.shape[2:])
  return jnp.sum(jnp.where(weight_BL, values_BL, 0.0), axis=axes) / count_B


def position_sum(values_BL: jax.Array, target_BL: jax.Array | None) -> jax.Array:
  """[B]: the sum over positions (and trailing axes) of `values_BL`, over `target_BL` only when given."""
  axes = tuple(range(1, values_BL.ndim))
  if target_BL is None:
    return jnp.sum(values_BL, axis=axes)
  weight_BL = jnp.reshape(target_BL, target_BL.shape + (1,) * (values_BL.ndim - 2))
  return jnp.sum(jnp.where(weight_BL, values_BL, 0.0), axis=axes)


def self_condition(fns: DenoiserFns, noisy_BLD, t_B, rng, rate: float):
  """x̂0 from a first, gradient-free pass on a `rate` fraction of the batch, zeros elsewhere."""
  if not fns.self_conditioning:
    return None
  _, first_x0_BLD = fns.denoise(noisy_BLD, t_B, None)
  use_B = jax.random.uniform(rng, t_B.shape) < rate
  return jnp.where(use_B[:, None, None], jax.lax.stop_gradient(first_x0_BLD), 0.0)


def e2e_loss(fns: DenoiserFns, tokens_BL: jax.Array, rng: jax.Array,
             log_snr_fn: LogSnrFn, num_timesteps: int,
             self_cond_rate: float = 0.5, t_B: jax.Array | None = None,
             target_BL: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Diffusion-LM's L_e2e-simple on a batch of token ids; returns (loss, per-term metrics)."""
  time_rng, noise0_rng, noise_rng, self_cond_rng = jax.random.split(rng, 4)
  batch_size = tokens_BL.shape[0]
  clean_BLD = fns.embed(tokens_BL)
  _, sigma_0 = alpha_sigma(log_snr_fn(jnp.zeros(())))
  x0_BLD = clean_BLD + sigma_0 * jax.random.normal(noise0_rng, clean_BLD.shape)

  t_B = low_discrepancy_times(time_rng, batch_size) if t_B is None else t_B
  alpha_t, sigma_t = alpha_sigma(log_snr_fn(t_B))
  noisy_BLD = diffuse(x0_BLD, alpha_t, sigma_t, jax.random.normal(noise_rng, x0_BLD.shape))

  self_cond_BLD = self_condition(fns, noisy_BLD, t_B, self_cond_rng, self_cond_rate)
  _, predicted_x0_BLD = fns.denoise(noisy_BLD, t_B, self_cond_BLD)

  # The first bucket of the discrete grid regresses onto the clean embedding (Diffusion-LM's t0 loss).
  in_first_bucket_B = t_B < 1.0 / num_timesteps
  target_BLD = jnp.where(in_first_bucket_B[:, None, None], clean_BLD, x0_BLD)
  mse_B = position_mean((predicted_x0_BLD - target_BLD) ** 2, target_BL)

  rounding_B = position_mean(
      optax.softmax_cross_entropy_with_integer_labels(fns.round_logits(x0_BLD), tokens_BL), target_BL)
  alpha_1, _ = alpha_sigma(log_snr_fn(jnp.ones(())))
  prior_B = position_mean((alpha_1 * x0_BLD) ** 2, target_BL)

  loss_B = mse_B + rounding_B + prior_B
  loss = jnp.mean(loss_B)
  return loss, {"loss": loss, "mse": jnp.mean(mse_B), "rounding": jnp.mean(rounding_B), "prior": jnp.mean(prior_B),
                "per_example/loss": mse_B, "per_example/t": t_B}


def cdcd_loss(fns: DenoiserFns, tokens_BL: jax.Array, rng: jax.Array,
              log_snr_fn: LogSnrFn, num_timesteps: int,
              self_cond_rate: float = 0.5, t_B: jax.Array | None = None,
              target_BL: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CDCD: cross-entropy of f(z_t, t)'s logits against the tokens; returns (loss, metrics)."""
  del num_timesteps  # Continuous time throughout.
  time_rng, noise_rng, self_cond_rng = jax.random.split(rng, 3)
  clean_BLD = fns.embed(tokens_BL)
  t_B = low_discrepancy_times(time_rng, tokens_BL.shape[0]) if t_B is None else t_B
  alpha_t, sigma_t = alpha_sigma(log_snr_fn(t_B))
  noisy_BLD = diffuse(clean_BLD, alpha_t, sigma_t, jax.random.normal(noise_rng, clean_BLD.shape))
  self_cond_BLD = self_condition(fns, noisy_BLD, t_B, self_cond_rng, self_cond_rate)
  logits_BLV, _ = fns.denoise(noisy_BLD, t_B, self_cond_BLD)
  cross_entropy_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
  cross_entropy_B = position_mean(cross_entropy_BL, target_BL)
  correct_BL = first_argmax(logits_BLV) == tokens_BL
  accuracy = jnp.mean(correct_BL) if target_BL is None else jnp.sum(correct_BL & target_BL) / jnp.maximum(
      jnp.sum(target_BL), 1)
  loss = jnp.mean(cross_entropy_B)
  return loss, {"loss": loss, "cross_entropy": loss, "token_accuracy": accuracy,
                "per_example/loss": cross_entropy_B, "per_example/t": t_B}


def vlb_loss(fns: DenoiserFns, tokens_BL: jax.Array, rng: jax.Array,
             log_snr_fn: Callable[..., jax.Array], num_timesteps: int,
             self_cond_rate: float = 0.5, t_B: jax.Array | None = None,
             target_BL: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The continuous-time bound (VDM / Plaid) per position: prior KL + diffusion + reconstruction.

  With a learned schedule (`log_snr_fn` taking freeze flags), the endpoints are trained by the
  bound and the interior by the variance of the diffusion term (VDM §4: in continuous time the
  interior does not change the bound, only its variance); the variance path treats x̂0 as fixed.
  """
  del num_timesteps
  time_rng, noise_rng, noise0_rng, self_cond_rng = jax.random.split(rng, 4)
  batch_size, length = tokens_BL.shape
  clean_BLD = fns.embed(tokens_BL)
  t_B = low_discrepancy_times(time_rng, batch_size) if t_B is None else t_B
  bound_log_snr = lambda t: log_snr_fn(t, freeze_interior=True)
  log_snr_B, log_snr_slope_B = jax.jvp(bound_log_snr, (t_B,), (jnp.ones_like(t_B),))
  alpha_t, sigma_t = alpha_sigma(log_snr_B)
  noisy_BLD = diffuse(clean_BLD, alpha_t, sigma_t, jax.random.normal(noise_rng, clean_BLD.shape))
  self_cond_BLD = self_condition(fns, noisy_BLD, t_B, self_cond_rng, self_cond_rate)
  _, predicted_x0_BLD = fns.denoise(noisy_BLD, t_B, self_cond_BLD)
  squared_error_B = position_sum((clean_BLD - predicted_x0_BLD) ** 2, target_BL)
  diffusion_B = -0.5 * log_snr_slope_B * jnp.exp(log_snr_B) * squared_error_B

  alpha_0, sigma_0 = alpha_sigma(bound_log_snr(jnp.zeros((batch_size,))))
  noisy_0_BLD = diffuse(clean_BLD, alpha_0, sigma_0, jax.random.normal(noise0_rng, clean_BLD.shape))
  logits_0_BLV, _ = fns.denoise(noisy_0_BLD, jnp.zeros((batch_size,)), None)
  reconstruction_B = position_sum(optax.softmax_cross_entropy_with_integer_labels(logits_0_BLV, tokens_BL), target_BL)

  alpha_1, sigma_1 = alpha_sigma(bound_log_snr(jnp.ones(())))
  prior_B = position_sum(0.5 * ((alpha_1 * clean_BLD) ** 2 + sigma_1**2 - 1.0 - jnp.log(sigma_1**2)), target_BL)
  mean_per_position = lambda values_B: jnp.mean(values_B) / length
  if target_BL is not None:  # Per counted position, each row its own count.
    length = jnp.maximum(jnp.sum(target_BL, axis=1), 1)
    mean_per_position = lambda values_B: jnp.mean(values_B / length)

  bound_B = (prior_B + diffusion_B + reconstruction_B) / length
  loss = jnp.mean(bound_B)
  metrics = {"loss": loss, "bound_per_position": loss, "prior": mean_per_position(prior_B),
             "diffusion": mean_per_position(diffusion_B), "reconstruction": mean_per_position(reconstruction_B),
             "per_example/loss": diffusion_B / length, "per_example/t": t_B}
  # Variance path: only the schedule's interior sees this gradient (endpoints frozen, x̂0 fixed).
  interior_log_snr = lambda t: log_snr_fn(t, freeze_endpoints=True)
  variance_log_snr_B, variance_slope_B = jax.jvp(interior_log_snr, (t_B,), (jnp.ones_like(t_B),))
  variance_diffusion_B = -0.5 * variance_slope_B * jnp.exp(variance_log_snr_B) * jax.lax.stop_gradient(squared_error_B)
  second_moment = jnp.mean((variance_diffusion_B / length) ** 2)
  # Relative to its own size, so this gradient never dominates global-norm clipping of the
  # denoiser's; adding it minus its value keeps the reported loss equal to the bound.
  variance_term = second_moment / (jax.lax.stop_gradient(second_moment) + 1e-8)
  loss = loss + variance_term - jax.lax.stop_gradient(variance_term)
  return loss, metrics


OBJECTIVES = {"e2e": e2e_loss, "cdcd": cdcd_loss, "vlb": vlb_loss}


def get_objective(name: str):
  """Returns the loss function called `name` (one of OBJECTIVES)."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]
