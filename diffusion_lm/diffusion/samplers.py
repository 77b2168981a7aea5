"""Samplers: the whole reverse process as one `lax.scan` over a time grid 1 = t_K > … > t_0 = 0.

Per step: x̂0 = f(z_t, t, x̂0_prev); optionally clamp x̂0 to its nearest embedding row
(Diffusion-LM's clamping trick); re-impose anchored tokens (x̂0 = E[w] where known); then step
z_t → z_s, either ancestrally, z_s ~ q(z_s | z_t, x̂0), or with the deterministic DDIM update.
Final tokens are the argmax of the logits at t = 0.

Example:
  >>> tokens = sample(fns, jax.random.key(0), shape=(8, 64), num_steps=200,
  ...                 log_snr_fn=get_schedule("sqrt"))
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffusion_lm.diffusion import time_warping
from diffusion_lm.diffusion.model_fns import DenoiserFns
from diffusion_lm.diffusion.process import LogSnrFn, alpha_sigma, diffuse, posterior_mean_std


@dataclasses.dataclass(frozen=True)
class Anchors:
  """Known tokens to keep: `tokens` [B, L] ids, used where `mask` [B, L] is True.

  Where `words_only` [B, L] is True, the ids in `banned_ids` (PAD/EOS) are never chosen, neither
  by clamping nor at the end, so a pinned EOS gives an exact length and blanks stay words.
  """
  tokens: jax.Array
  mask: jax.Array
  words_only: jax.Array | None = None
  banned_ids: tuple[int, ...] = ()

  def banned(self, vocab_size: int) -> jax.Array | None:
    """[B, L, V] True where a token may not be chosen (None when nothing is banned)."""
    if self.words_only is None or not self.banned_ids:
      return None
    banned_V = jnp.zeros((vocab_size,), bool).at[jnp.asarray(self.banned_ids)].set(True)
    return self.words_only[..., None] & banned_V


def clamp_to_embeddings(x_BLD: jax.Array, embedding_VD: jax.Array, banned_BLV: jax.Array | None = None) -> jax.Array:
  """Replaces each vector by its nearest (L2) row of the embedding table (skipping banned rows)."""
  # argmin ‖x − e‖² = argmax (2 x·e − ‖e‖²): no [B, L, V, d] intermediate.
  scores_BLV = 2.0 * jnp.einsum("bld,vd->blv", x_BLD, embedding_VD) - jnp.sum(embedding_VD ** 2, -1)
  if banned_BLV is not None:
    scores_BLV = jnp.where(banned_BLV, -jnp.inf, scores_BLV)
  return jnp.take(embedding_VD, jnp.argmax(scores_BLV, axis=-1), axis=0)


def ancestral_step(noisy_BLD, x0_BLD, log_snr_t, log_snr_s, rng):
  """Draws z_s ~ q(z_s | z_t, x0) for s < t."""
  mean, std = posterior_mean_std(noisy_BLD, x0_BLD, *alpha_sigma(log_snr_t), *alpha_sigma(log_snr_s))
  return mean + std * jax.random.normal(rng, noisy_BLD.shape)


def ddim_step(noisy_BLD, x0_BLD, log_snr_t, log_snr_s, rng):
  """Deterministic DDIM: z_s = α_s x̂0 + σ_s ε̂ with ε̂ = (z_t − α_t x̂0) / σ_t."""
  del rng
  alpha_t, sigma_t = alpha_sigma(log_snr_t)
  alpha_s, sigma_s = alpha_sigma(log_snr_s)
  return alpha_s * x0_BLD + sigma_s * (noisy_BLD - alpha_t * x0_BLD) / sigma_t


def renoise_step(noisy_BLD, x0_BLD, log_snr_t, log_snr_s, rng, correlation: float = 0.0):
  """z_s = α_s x̂0 + σ_s ε around x̂0 ("q-sampling": the forward process from x̂0).

  With `correlation` ρ = 0, ε is fresh noise and z_t is forgotten. With ρ ≠ 0,
  ε = ρ ε̂ + √(1 − ρ²) ξ, where ε̂ = (z_t − α_t x̂0) / σ_t is the step's own noise (rescaled to unit
  RMS per position) and ξ fresh noise: still unit variance, correlated ρ with the noise the network
  just explained away. ρ < 0 is overrelaxation (Adler 1981; Neal 1998): the chain steps to the far
  side of x̂0 instead of a random one, so it moves further per step (BENCHMARKS.md, "The few-step gap").

  Example:
    >>> renoise_step(z_BLD, x0_BLD, log_snr(0.5), log_snr(0.48), jax.random.key(0), correlation=-0.6)
  """
  alpha_s, sigma_s = alpha_sigma(log_snr_s)
  fresh_BLD = jax.random.normal(rng, x0_BLD.shape)
  if correlation == 0.0:
    return diffuse(x0_BLD, alpha_s, sigma_s, fresh_BLD)
  alpha_t, sigma_t = alpha_sigma(log_snr_t)
  explained_BLD = (noisy_BLD - alpha_t * x0_BLD) / sigma_t
  explained_BLD = explained_BLD * jax.lax.rsqrt(jnp.mean(explained_BLD ** 2, axis=-1, keepdims=True) + 1e-12)
  noise_BLD = correlation * explained_BLD + jnp.sqrt(1.0 - correlation ** 2) * fresh_BLD
  return diffuse(x0_BLD, alpha_s, sigma_s, noise_BLD)


STEPS = {"ancestral": ancestral_step, "ddim": ddim_step, "renoise": renoise_step}


def time_grid(num_steps: int, start_time: float = 1.0, time_warp_table: jax.Array | None = None) -> jax.Array:
  """t_K = start_time > … > t_0 = 0, K = num_steps: uniform, or warped by the training loss profile."""
  if time_warp_table is None:
    return jnp.linspace(start_time, 0.0, num_steps + 1)
  t_knots, cdf = time_warping.cdf_knots(time_warp_table)
  start_u = jnp.interp(start_time, t_knots, cdf)  # Equal steps in warped time u = F(t).
  return time_warping.warp(time_warp_table, jnp.linspace(start_u, 0.0, num_steps + 1))


def with_model_time_floor(fns: DenoiserFns, floor: float) -> DenoiserFns:
  """The denoiser told noise level max(t, floor) whatever t its input is at (DINOISER's CEDI, simplified)."""
  denoise = fns.denoise
  return dataclasses.replace(fns, denoise=lambda noisy_BLD, t_B, self_cond_BLD=None: denoise(
      noisy_BLD, jnp.maximum(t_B, floor), self_cond_BLD))


def sample(fns: DenoiserFns, rng: jax.Array, shape: tuple[int, int], num_steps: int,
           log_snr_fn: LogSnrFn, sampler: str = "ancestral", clamp: bool = True,
           anchors: Anchors | None = None, start_noisy_BLD: jax.Array | None = None,
           start_time: float = 1.0, return_trajectory: bool = False, guidance=None,
           temperature: float = 1.0, time_warp_table: jax.Array | None = None, draw_tokens: bool = False,
           model_time_floor: float = 0.0, renoise_correlation: float = 0.0):
  """Runs the reverse process and returns token ids [B, L] (and, optionally, the per-step logits).

  `start_noisy_BLD` with `start_time` < 1 starts mid-way (editing: z = α x_draft + σ ε).
  `guidance` (a `guidance.Guidance`) replaces each step by a classifier-guided one.
  With `return_trajectory`, also returns logits at every step [K, B, L, V] (for notebooks).
  `temperature` < 1 sharpens a categorical model's x̂0 = softmax(logits / τ) E (score temperature);
  `time_warp_table` places the steps by the training loss profile (CDCD time warping).
  `draw_tokens` replaces x̂0 by the embedding of a token drawn from softmax(logits / τ) at every
  step (a hard, per-position choice instead of the mean; clamping is then a no-op).
  `model_time_floor` c > 0 tells the network the noise level max(t, c) while z_t follows the grid
  (DINOISER's condition-enhanced denoiser: a conditional model told it sees more noise leans on
  its source); c = 0 is the plain sampler.
  `renoise_correlation` ρ correlates the renoise sampler's new noise with the step's own (see
  `renoise_step`; ρ < 0 overrelaxes); 0 is the plain renoise step.
  """
  if sampler not in STEPS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(STEPS)}")
  step_fn = STEPS[sampler]
  if renoise_correlation:
    if sampler != "renoise":
      raise ValueError(f"renoise_correlation is the renoise sampler's, not {sampler!r}'s")
    step_fn = functools.partial(renoise_step, correlation=renoise_correlation)
  if model_time_floor > 0:
    fns = with_model_time_floor(fns, model_time_floor)
  batch_size, length = shape
  embedding_VD = fns.embedding_table
  init_rng, scan_rng = jax.random.split(rng)
  if start_noisy_BLD is None:
    start_noisy_BLD = jax.random.normal(init_rng, (batch_size, length, embedding_VD.shape[-1]))
  anchored_BLD = None if anchors is None else fns.embed(anchors.tokens)
  banned_BLV = None if anchors is None else anchors.banned(embedding_VD.shape[0])

  def impose_anchors(x0_BLD):
    if anchors is None:
      return x0_BLD
    return jnp.where(anchors.mask[..., None], anchored_BLD, x0_BLD)

  grid = time_grid(num_steps, start_time, time_warp_table)

  def body(carry, inputs):
    noisy_BLD, previous_x0_BLD = carry
    t, s, step_rng = inputs
    t_B = jnp.full((batch_size,), t)
    logits_BLV, x0_BLD = fns.denoise(noisy_BLD, t_B, previous_x0_BLD if fns.self_conditioning else None)
    if fns.categorical and temperature != 1.0:
      x0_BLD = jax.nn.softmax(logits_BLV / temperature, axis=-1) @ embedding_VD
    if draw_tokens:
      draw_rng, step_rng = jax.random.split(step_rng)
      draw_logits_BLV = logits_BLV.astype(jnp.float32) / temperature
      if banned_BLV is not None:
        draw_logits_BLV = jnp.where(banned_BLV, -jnp.inf, draw_logits_BLV)
      x0_BLD = embedding_VD[jax.random.categorical(draw_rng, draw_logits_BLV, axis=-1)]
    if clamp:
      x0_BLD = clamp_to_embeddings(x0_BLD, embedding_VD, banned_BLV)
    x0_BLD = impose_anchors(x0_BLD)
    if guidance is None:
      noisy_BLD = step_fn(noisy_BLD, x0_BLD, log_snr_fn(t), log_snr_fn(s), step_rng)
    else:  # Adagrad on z_s for λ·log p(z_s | z_t) + log p(c | z_s), then the step's noise.
      noisy_BLD = guidance.step(step_fn, noisy_BLD, x0_BLD, log_snr_fn(t), log_snr_fn(s), s, step_rng)
    return (noisy_BLD, x0_BLD), (logits_BLV if return_trajectory else None)

  step_rngs = jax.random.split(scan_rng, num_steps)
  initial_x0 = jnp.zeros_like(start_noisy_BLD)
  (final_noisy_BLD, final_x0_BLD), trajectory = jax.lax.scan(
      body, (start_noisy_BLD, initial_x0), (grid[:-1], grid[1:], step_rngs))
  final_logits_BLV, _ = fns.denoise(final_noisy_BLD, jnp.zeros((batch_size,)),
                                    final_x0_BLD if fns.self_conditioning else None)
  if banned_BLV is not None:
    final_logits_BLV = jnp.where(banned_BLV, -jnp.inf, final_logits_BLV)
  tokens_BL = jnp.argmax(final_logits_BLV, axis=-1)
  if anchors is not None:
    tokens_BL = jnp.where(anchors.mask, anchors.tokens, tokens_BL)
  if return_trajectory:
    return tokens_BL, trajectory
  return tokens_BL
