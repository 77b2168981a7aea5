"""Noise schedules in continuous time t ∈ [0, 1], variance preserving.

Every schedule is a pure function `log_snr(t)` (γ, decreasing in t); α and σ follow from it
(process.alpha_sigma), so z_t = α_t x + σ_t ε. A discrete T-step model is the same function
evaluated at t_i = i / T.

Example:
  >>> schedule = get_schedule("sqrt")
  >>> alpha, sigma = process.alpha_sigma(schedule(jnp.array([0.0, 0.5, 1.0])))
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_lm.diffusion.process import LogSnrFn

# Clip ᾱ = α² away from 0 and 1 so log-SNR stays finite (Diffusion-LM clips betas likewise).
_MIN_ALPHA_BAR = 1e-5
_MAX_ALPHA_BAR = 1.0 - 1e-5


def _log_snr_from_alpha_bar(alpha_bar: jax.Array) -> jax.Array:
  alpha_bar = jnp.clip(alpha_bar, _MIN_ALPHA_BAR, _MAX_ALPHA_BAR)
  return jnp.log(alpha_bar) - jnp.log1p(-alpha_bar)


def sqrt_log_snr(t: jax.Array, offset: float = 1e-4) -> jax.Array:
  """Diffusion-LM's sqrt schedule: ᾱ(t) = 1 − sqrt(t + s), s = 1e-4.

  Adds a lot of noise quickly at small t, so the denoiser cannot just copy
  clean embeddings (why Diffusion-LM chose it for small embedding dims).
  """
  return _log_snr_from_alpha_bar(1.0 - jnp.sqrt(t + offset))


def cosine_log_snr(t: jax.Array, offset: float = 0.008) -> jax.Array:
  """Nichol & Dhariwal cosine schedule: ᾱ(t) = cos²(π/2 · (t + s)/(1 + s)) / ᾱ(0)."""
  f = lambda u: jnp.cos(0.5 * jnp.pi * (u + offset) / (1.0 + offset)) ** 2
  return _log_snr_from_alpha_bar(f(t) / f(0.0))


def linear_log_snr(t: jax.Array, log_snr_max: float = 10.0, log_snr_min: float = -10.0) -> jax.Array:
  """Log-SNR linear in t, from log_snr_max at t=0 to log_snr_min at t=1 (VDM's fixed baseline)."""
  return log_snr_max + (log_snr_min - log_snr_max) * t


SCHEDULES: dict[str, LogSnrFn] = {
    "sqrt": sqrt_log_snr,
    "cosine": cosine_log_snr,
    "linear_logsnr": linear_log_snr,
}


# Schedules whose log-SNR at t = 0 can be set (`get_schedule(name, max_log_snr)`).
MAX_LOG_SNR_SCHEDULES = ("sqrt", "linear_logsnr")


def get_schedule(name: str, max_log_snr: float | None = None) -> LogSnrFn:
  """Returns the fixed log-SNR function called `name` (one of SCHEDULES).

  `max_log_snr` (None: the schedule's own) moves the low-noise end γ(0), the endpoint VDM and
  Plaid learn: for "sqrt" through its offset s = sigmoid(−γ(0))² (Diffusion-LM's s = 1e-4 is
  γ(0) = 4.6), for "linear_logsnr" directly. The "learned" schedule has parameters: it lives in
  the denoiser (`DenoiserFns.log_snr`).

  Example:
    >>> get_schedule("sqrt", max_log_snr=2.2)(jnp.zeros(()))  # ≈ 2.2
  """
  if name == "learned":
    raise ValueError("the learned schedule has parameters: use the bound model's `fns.log_snr`")
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)} or 'learned'")
  if max_log_snr is None:
    return SCHEDULES[name]
  if name not in MAX_LOG_SNR_SCHEDULES:
    raise ValueError(f"max_log_snr applies to the {' and '.join(MAX_LOG_SNR_SCHEDULES)} schedules, not {name!r}")
  if name == "sqrt":
    offset = (1.0 / (1.0 + math.exp(max_log_snr))) ** 2
    return lambda t: sqrt_log_snr(t, offset)
  return lambda t: linear_log_snr(t, log_snr_max=max_log_snr)


class LearnedSchedule(nn.Module):
  """A monotone learned log-SNR (VDM / Plaid): γ(t) = γ_0 − (γ_0 − γ_1) g(t).

  γ_0, γ_1 (the endpoints) are trained by the likelihood bound; g is piecewise linear on
  `num_knots` equal intervals with positive (softmax) increments, so it rises strictly from
  g(0) = 0 to g(1) = 1. With `freeze_interior` / `freeze_endpoints` the corresponding parameters
  are seen through stop_gradient: the `vlb` objective trains the endpoints on the bound and the
  interior on the bound's variance, which is all the interior changes in continuous time.
  """

  num_knots: int = 32
  initial_log_snr_start: float = 6.0
  initial_log_snr_end: float = -8.0

  @nn.compact
  def __call__(self, t: jax.Array, freeze_interior: bool = False, freeze_endpoints: bool = False) -> jax.Array:
    endpoints = self.param("endpoints", nn.with_logical_partitioning(
        lambda *_: jnp.array([self.initial_log_snr_start, self.initial_log_snr_end]), (None,)), (2,))
    increment_logits = self.param("increment_logits", nn.with_logical_partitioning(
        nn.initializers.zeros, (None,)), (self.num_knots,))
    if freeze_endpoints:
      endpoints = jax.lax.stop_gradient(endpoints)
    if freeze_interior:
      increment_logits = jax.lax.stop_gradient(increment_logits)
    knots_g = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jax.nn.softmax(increment_logits))])
    g = jnp.interp(t, jnp.linspace(0.0, 1.0, self.num_knots + 1), knots_g)
    return endpoints[0] - (endpoints[0] - endpoints[1]) * g
