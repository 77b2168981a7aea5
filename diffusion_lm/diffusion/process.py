"""The forward process, in one place: z_t = α_t x + σ_t ε, its marginals and its posterior.

Variance preserving: a schedule gives the log-SNR γ(t) and α² = sigmoid(γ), σ² = sigmoid(−γ).
Diffusion-LM's `e2e` objective also noises the embeddings themselves, x0 = E[w] + σ_0 ε0; folded
into the process (`embedding_noise`), that makes σ_t² = sigmoid(−γ_t) + α_t² σ_0², no longer
variance preserving, so the posterior here takes α and σ of both times, not γ alone.
Objectives, the likelihood bound, the samplers, the classifier's training latents and editing all
noise through `diffuse` and step through `posterior_mean_std`.

Example:
  >>> alpha_B, sigma_B = alpha_sigma(log_snr_fn(t_B))
  >>> z_BLD = diffuse(x_BLD, alpha_B, sigma_B, jax.random.normal(key, x_BLD.shape))
  >>> mean, std = posterior_mean_std(z_BLD, x0_BLD, *alpha_sigma(log_snr_t), *alpha_sigma(log_snr_s))
"""

from typing import Callable

import jax
import jax.numpy as jnp

LogSnrFn = Callable[[jax.Array], jax.Array]  # t ↦ γ(t), decreasing; a learned one has parameters.


def alpha_sigma(log_snr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(α, σ) with α² = sigmoid(γ), σ² = sigmoid(−γ), so α² + σ² = 1."""
  return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))


def diffuse(x: jax.Array, alpha: jax.Array, sigma: jax.Array, noise: jax.Array) -> jax.Array:
  """α x + σ ε, with α and σ per leading (batch) index or scalars, broadcast over the rest.

  Example:
    >>> diffuse(x_BLD, alpha_B, sigma_B, noise_BLD)      # α_B[:, None, None] x + σ_B[:, None, None] ε
  """
  trailing = lambda a: jnp.reshape(a, jnp.shape(a) + (1,) * (x.ndim - jnp.ndim(a)))
  return trailing(alpha) * x + trailing(sigma) * noise


def marginal_fn(log_snr_fn: LogSnrFn, embedding_noise: bool = False) -> Callable[[jax.Array], tuple]:
  """t ↦ (α_t, σ_t, γ_t) of the forward process q(z_t | w) = N(α_t E[w], σ_t² I).

  Plain: the schedule's variance-preserving α² = sigmoid(γ), σ² = sigmoid(−γ). With
  `embedding_noise`, Diffusion-LM's x0 = E[w] + σ_0 ε0 is folded in: σ_t² += α_t² σ_0².

  Example:
    >>> alpha, sigma, log_snr = marginal_fn(get_schedule("sqrt"))(jnp.array([0.0, 1.0]))
  """
  def marginal(t):
    log_snr = log_snr_fn(t)
    alpha_sq, sigma_sq = jax.nn.sigmoid(log_snr), jax.nn.sigmoid(-log_snr)
    if embedding_noise:
      sigma_sq = sigma_sq + alpha_sq * jax.nn.sigmoid(-log_snr_fn(jnp.zeros_like(t)))
      log_snr = jnp.log(alpha_sq) - jnp.log(sigma_sq)
    return jnp.sqrt(alpha_sq), jnp.sqrt(sigma_sq), log_snr
  return marginal


def posterior_mean_std(noisy, x0, alpha_t, sigma_t, alpha_s, sigma_s):
  """Mean and std of q(z_s | z_t, x0), s < t, for any Gaussian diffusion (α, σ per time).

  σ²_{t|s} = σ_t² − α²_{t|s} σ_s² with α_{t|s} = α_t / α_s; mean = α_{t|s} σ_s²/σ_t² z_t +
  α_s σ²_{t|s}/σ_t² x0; variance σ²_{t|s} σ_s²/σ_t².

  Example:
    >>> mean, std = posterior_mean_std(z_t, x0, 0.5, 0.87, 0.9, 0.44)
  """
  alpha_ts = alpha_t / alpha_s
  transition_var = jnp.maximum(sigma_t ** 2 - alpha_ts ** 2 * sigma_s ** 2, 0.0)
  mean = (alpha_ts * sigma_s ** 2 / sigma_t ** 2) * noisy + (alpha_s * transition_var / sigma_t ** 2) * x0
  return mean, jnp.sqrt(transition_var * sigma_s ** 2 / sigma_t ** 2)
