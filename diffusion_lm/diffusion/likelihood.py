"""The variational bound on −log p(w) of a diffusion LM, per sequence, with its Monte Carlo error.

What is bounded. The generative model is the one the *unclamped* ancestral sampler draws from in
the limit of many steps: z_1 ~ N(0, I); z_s ~ q(z_s | z_t, x = x̂0(z_t, t)) for s < t; and
w ~ p(w | z_0) = softmax(logits(z_0, t=0)), the denoiser's own output at t = 0 (for the `direct`
parameterisation logits = x̂0 Eᵀ + b, the tied rounding head; for `categorical` the predicted
logits). That is also how the sampler picks its final tokens. Clamping x̂0 to the nearest
embedding and score temperatures are sampling heuristics outside this model: the figure is a bound
on the unclamped, temperature-1 model. With self-conditioning, x̂0(z_t, t) is the second of two
passes (the first with no self-condition input), a deterministic function of z_t, so the bound
stays valid.

What x is. The encoder is q(z_t | w) = N(α_t x, σ_t² I) with x = E[w], the clean embeddings of
the tokens (VDM / Plaid); this is the process the sampler inverts, for every objective. The `e2e`
objective (Diffusion-LM) trains on x0 = E[w] + σ_0 ε0 instead, i.e. on the marginals
q(z_t | w) = N(α_t E[w], (σ_t² + α_t² σ_0²) I). `embedding_noise=True` evaluates the bound of that
process (x = E[w] still, with the σ_0 noise folded into the forward process; the reverse steps then
use that process's posteriors, which the sampler does not); `diffusion_lm.evaluate` uses it by
default for `e2e`-trained models, x = E[w] for the rest. Both are valid bounds on −log p(w)
of their own model; neither is Diffusion-LM's estimator (which keeps x0 as a continuous latent
and credits the entropy of q(x0 | w)), so compare such numbers with care.

The bound (VDM, Kingma et al. 2021, continuous time), per sequence, in nats:
  −log p(w) ≤ KL(q(z_1 | x) ‖ N(0, I))                                  prior
            + ½ ∫_0^1 −γ'(t) e^{γ(t)} ‖x − x̂0(z_t, t)‖² dt             diffusion
            + E_{q(z_0 | x)} [−log p(w | z_0)]                          reconstruction
with γ = log-SNR and γ' from `jax.jvp` of the schedule. The discrete-T variant
(`num_timesteps=T`) replaces the integral by the sum of the T posterior KLs
Σ_i KL(q(z_{s_i} | z_{t_i}, x) ‖ p(z_{s_i} | z_{t_i})) = Σ_i ½ (SNR(s_i) − SNR(t_i)) ‖x − x̂0‖²,
t_i = i/T, s_i = (i−1)/T, which upper-bounds the continuous one.

Rounded x̂0 (`x0_estimate="rounding"`). For the `direct` parameterisation this bound is
dominated by how precisely the network's x̂0 reproduces the coordinates of E[w] at high SNR (the
weight e^γ reaches ~100 for the sqrt schedule), even where the rounding head already names the
right token with certainty. "rounding" evaluates the same bound for the model whose x̂0 is
softmax(logits) E, the expected embedding under its own tied rounding head: a soft, differentiable
form of Diffusion-LM's clamping, and still a valid bound (x̂0 stays a deterministic function of
z_t). It is a different model from the unclamped one, and the report says which was used.

Which tokens. Every term sums over all L positions of the row, padding included: the diffusion
model generates the whole padded row, so p(w_1..w_L) is a bound on the probability of the
sentence *and* its padding (an ideal model pays ~0 for the deterministic padding). The per-token
figures divide by the number of non-PAD tokens, EOS included, the same tokens an autoregressive
model's perplexity counts (models/autoregressive.token_nll).

Monte Carlo. Each sequence gets K = `num_t_samples` time samples (K even) as two independent
replicates of K/2 low-discrepancy times (t_m = (u + m/(K/2)) mod 1, own offset u and own noise)
and one z_0 draw each. The estimate is the replicates' mean, and (a − b)²/4 is an unbiased
estimate of its variance, so the standard error reflects only what was drawn, never the spread
of the data. By default (`time_sampling="log_snr"`) the times are drawn uniformly in log-SNR γ
rather than in t: the same integral after the change of variables t = γ⁻¹(γ) (importance sampling
by |γ'|), whose integrand ½ e^γ ‖x − x̂0‖² stays bounded, whereas the uniform-t integrand of the
sqrt and cosine schedules has a heavy tail at t → 0 that makes both the estimate and its standard
error unreliable at small K. `time_sampling="uniform"` keeps plain uniform t.

Example:
  >>> fns = bind_denoiser(model, params)
  >>> keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids_B)
  >>> terms = sequence_bounds(fns, tokens_BL, keys_B, get_schedule("sqrt"), num_t_samples=8)
  >>> report = summarize({k: np.asarray(v) for k, v in terms.items()})
  >>> report["nll_nats_per_token"], report["stderr"]
"""

import math
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_lm.diffusion.model_fns import DenoiserFns
from diffusion_lm.diffusion.process import LogSnrFn, diffuse, marginal_fn

TERMS = ("prior", "diffusion", "reconstruction")
# What the bound is a bound on, by x0 estimate (reports carry it as `bound_on`).
BOUND_ON = {
    "network": ("the unclamped, temperature-1 model: z_1 ~ N(0, I), ancestral steps q(z_s | z_t, x = x0_hat), "
                "w ~ softmax(logits(z_0, t=0)); clamping is a sampling heuristic outside it"),
    "rounding": ("the model whose x0_hat is softmax(logits) E (a soft clamp through the tied rounding head), "
                 "otherwise as the unclamped model; not the network's raw x0_hat"),
}
MODEL_NAMES = {"network": "the unclamped model", "rounding": "the soft-clamped model (x0_hat = softmax(logits) E)"}
TIME_SAMPLING = ("uniform", "log_snr")
X0_ESTIMATES = ("network", "rounding")


def gaussian_kl(mean_q: jax.Array, var_q: jax.Array, mean_p: jax.Array, var_p: jax.Array) -> jax.Array:
  """KL(N(mean_q, var_q) ‖ N(mean_p, var_p)) per element (diagonal Gaussians), in nats.

  Example:
    >>> gaussian_kl(0.0, 1.0, 0.0, 1.0)
    Array(0., dtype=float32)
  """
  return 0.5 * (jnp.log(var_p) - jnp.log(var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0)


def prior_kl(x, log_snr_fn: LogSnrFn, embedding_noise: bool = False) -> jax.Array:
  """KL(q(z_1 | x) ‖ N(0, I)) per element, = gaussian_kl(α_1 x, σ_1², 0, 1) computed stably.

  σ_1² is within ~1e-5 of 1, so `σ² − 1 − log σ²` is evaluated as `δ − log1p(δ)` with δ = σ² − 1
  formed directly (−α_1², plus α_1² σ_0² with embedding noise) instead of by cancellation.

  Example:
    >>> prior_kl(embeddings_BLD, get_schedule("sqrt")).sum()
  """
  log_snr_1 = log_snr_fn(jnp.ones(()))
  alpha_sq = jax.nn.sigmoid(log_snr_1)
  delta = -alpha_sq
  if embedding_noise:
    delta = delta + alpha_sq * jax.nn.sigmoid(-log_snr_fn(jnp.zeros(())))
  return 0.5 * (alpha_sq * x ** 2 + delta - jnp.log1p(delta))


def invert_log_snr(log_snr_of_t: LogSnrFn, target: jax.Array, iterations: int = 40):
  """t ∈ [0, 1] with γ(t) = target for a non-increasing γ, by bisection (works for any schedule)."""
  def body(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    above = log_snr_of_t(middle) > target  # γ decreases: the root lies to the right.
    return jnp.where(above, middle, low), jnp.where(above, high, middle)
  low, high = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(target), jnp.ones_like(target)))
  return 0.5 * (low + high)


def _times_and_weights(u, marginal, time_sampling: str, num_timesteps: int):
  """Maps stratified u ∈ [0, 1) to (t, w): diffusion term = E_u[w(u) ‖x − x̂0(z_t, t)‖²]."""
  log_snr_of_t = lambda t: marginal(t)[2]
  if num_timesteps:  # Discrete T: one of the T posterior KLs, times T.
    step = jnp.floor(u * num_timesteps) + 1.0
    t = step / num_timesteps
    snr_t, snr_s = jnp.exp(log_snr_of_t(t)), jnp.exp(log_snr_of_t(t - 1.0 / num_timesteps))
    return t, 0.5 * num_timesteps * (snr_s - snr_t)
  if time_sampling == "log_snr":  # γ uniform on [γ(1), γ(0)]: change of variables t = γ⁻¹.
    log_snr_max, log_snr_min = log_snr_of_t(jnp.zeros(())), log_snr_of_t(jnp.ones(()))
    log_snr = log_snr_max - u * (log_snr_max - log_snr_min)
    return invert_log_snr(log_snr_of_t, log_snr), 0.5 * (log_snr_max - log_snr_min) * jnp.exp(log_snr)
  log_snr, log_snr_slope = jax.jvp(log_snr_of_t, (u,), (jnp.ones_like(u),))
  return u, -0.5 * log_snr_slope * jnp.exp(log_snr)


def _clean_estimate(fns: DenoiserFns, noisy_BLD, t_B, x0_estimate: str = "network"):
  """(logits, x̂0) of the model at (z_t, t); two passes with self-conditioning.

  x0_estimate="rounding" replaces x̂0 by softmax(logits) E, the expected embedding under the
  model's own rounding distribution (the categorical parameterisation's x̂0 already is this).
  """
  self_cond_BLD = fns.denoise(noisy_BLD, t_B, None)[1] if fns.self_conditioning else None
  logits_BLV, x0_BLD = fns.denoise(noisy_BLD, t_B, self_cond_BLD)
  if x0_estimate == "rounding":
    x0_BLD = jax.nn.softmax(logits_BLV.astype(jnp.float32), axis=-1) @ fns.embedding_table
  return logits_BLV, x0_BLD


def sequence_bounds(fns: DenoiserFns, tokens_BL: jax.Array, row_keys_B: jax.Array, log_snr_fn: LogSnrFn,
                    num_t_samples: int = 8, *, embedding_noise: bool = False, num_timesteps: int = 0,
                    time_sampling: str = "log_snr", x0_estimate: str = "network",
                    pad_id: int = 0, scored_BL: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-sequence bound terms in nats (each [B]), from per-row keys so rows never interact.

  `scored_BL` (None: all positions) limits every term and the token count to those positions: the
  bound on −log p(target | source) of a conditional model, whose `fns` see the source clean.

  Returns `prior`, `diffusion`, `reconstruction`, `total` (replicate means, summed over all L
  positions), `pad` (the part of `total` at PAD positions), `<name>_variance` (MC variance
  estimates of those means) and `num_tokens` (non-PAD positions, EOS included). Jit it; the K time samples run one after the
  other (`lax.map`) so memory stays at one batch of denoiser calls.

  Example:
    >>> terms = jax.jit(lambda t, k: sequence_bounds(fns, t, k, schedule, 8))(tokens_BL, keys_B)
  """
  if num_t_samples < 2 or num_t_samples % 2:
    raise ValueError(f"num_t_samples={num_t_samples} must be even and >= 2 (two replicates give the stderr)")
  if time_sampling not in TIME_SAMPLING:
    raise ValueError(f"time_sampling={time_sampling!r} is not one of {TIME_SAMPLING}")
  if x0_estimate not in X0_ESTIMATES:
    raise ValueError(f"x0_estimate={x0_estimate!r} is not one of {X0_ESTIMATES}")
  marginal = marginal_fn(log_snr_fn, embedding_noise)
  per_replicate = num_t_samples // 2
  batch_size, length = tokens_BL.shape
  x_BLD = fns.embed(tokens_BL).astype(jnp.float32)
  shape_LD = x_BLD.shape[1:]
  is_pad_BL = tokens_BL == pad_id
  # Zeroes what is not scored (a conditional row's source); the identity for an unconditional model.
  scored = (lambda values_BL: values_BL) if scored_BL is None else (
      lambda values_BL: jnp.where(scored_BL, values_BL, 0.0))

  def draws(key):
    time_key, noise_key, reconstruction_key = jax.random.split(key, 3)
    offsets_R = jax.random.uniform(time_key, (2,))
    u_RM = jnp.mod(offsets_R[:, None] + jnp.arange(per_replicate) / per_replicate, 1.0)
    return (u_RM, jax.random.normal(noise_key, (2, per_replicate, *shape_LD)),
            jax.random.normal(reconstruction_key, (2, *shape_LD)))
  u_BRM, noise_BRMLD, noise0_BRLD = jax.vmap(draws)(row_keys_B)

  def squared_error_at(inputs):
    u_B, noise_BLD = inputs
    t_B, weight_B = _times_and_weights(u_B, marginal, time_sampling, num_timesteps)
    alpha_B, sigma_B, _ = marginal(t_B)
    noisy_BLD = diffuse(x_BLD, alpha_B, sigma_B, noise_BLD)
    _, x0_BLD = _clean_estimate(fns, noisy_BLD, t_B, x0_estimate)
    weighted_BL = scored(weight_B[:, None] * jnp.sum((x_BLD - x0_BLD.astype(jnp.float32)) ** 2, axis=-1))
    return jnp.stack([jnp.sum(weighted_BL, -1), jnp.sum(jnp.where(is_pad_BL, weighted_BL, 0.0), -1)])

  # [B, R, M, ...] → [R·M, B, ...]: one denoiser call per (replicate, time index).
  u_KB = u_BRM.reshape(batch_size, -1).T
  noise_KBLD = jnp.moveaxis(noise_BRMLD.reshape(batch_size, -1, *shape_LD), 1, 0)
  per_replicate_mean = lambda values_KB: values_KB.T.reshape(batch_size, 2, per_replicate).mean(axis=-1)
  diffusion_K2B = jax.lax.map(squared_error_at, (u_KB, noise_KBLD))
  diffusion_BR, pad_diffusion_BR = per_replicate_mean(diffusion_K2B[:, 0]), per_replicate_mean(diffusion_K2B[:, 1])

  def reconstruction_at(noise0_BLD):
    t_B = jnp.zeros((batch_size,))
    alpha_B, sigma_B, _ = marginal(t_B)
    logits_BLV, _ = _clean_estimate(fns, diffuse(x_BLD, alpha_B, sigma_B, noise0_BLD), t_B)
    nll_BL = scored(optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), tokens_BL))
    return jnp.stack([jnp.sum(nll_BL, -1), jnp.sum(jnp.where(is_pad_BL, nll_BL, 0.0), -1)], -1)
  reconstruction_RB2 = jax.lax.map(reconstruction_at, jnp.moveaxis(noise0_BRLD, 1, 0))
  reconstruction_BR, pad_reconstruction_BR = reconstruction_RB2[..., 0].T, reconstruction_RB2[..., 1].T

  prior_BL = scored(jnp.sum(prior_kl(x_BLD, log_snr_fn, embedding_noise), axis=-1))
  prior_B, pad_prior_B = jnp.sum(prior_BL, -1), jnp.sum(jnp.where(is_pad_BL, prior_BL, 0.0), -1)
  replicates = {"prior": jnp.stack([prior_B, prior_B], -1), "diffusion": diffusion_BR,
                "reconstruction": reconstruction_BR}
  replicates["total"] = sum(replicates[term] for term in TERMS)
  # What generating the PAD positions costs, part of `total` (≈ 0 for an ideal model).
  replicates["pad"] = pad_prior_B[:, None] + pad_diffusion_BR + pad_reconstruction_BR
  counted_BL = tokens_BL != pad_id if scored_BL is None else (tokens_BL != pad_id) & scored_BL
  out = {"num_tokens": jnp.sum(counted_BL, axis=-1).astype(jnp.float32)}
  for name, values_BR in replicates.items():
    out[name] = values_BR.mean(-1)
    out[f"{name}_variance"] = 0.25 * (values_BR[:, 0] - values_BR[:, 1]) ** 2
  return out


def safe_exp(nats: float) -> float:
  """exp(nats), or inf where a float64 overflows (a badly trained model's bound can be huge)."""
  return math.exp(nats) if nats < 709.0 else float("inf")


def summarize(per_row: dict[str, np.ndarray]) -> dict[str, float]:
  """Per-token figures from `sequence_bounds` rows (already restricted to real rows).

  nll = Σ_rows total / Σ_rows num_tokens; stderr = sqrt(Σ_rows total_variance) / Σ num_tokens
  (rows are independent draws, so their variances add). Also bits, the perplexity bound, and
  each term per token with its own stderr.

  Example:
    >>> summarize({k: np.asarray(v) for k, v in terms.items()})["perplexity_bound"]
  """
  num_tokens = float(np.sum(per_row["num_tokens"], dtype=np.float64))
  if num_tokens <= 0:
    raise ValueError("no tokens to evaluate")
  per_token = lambda name: float(np.sum(per_row[name], dtype=np.float64) / num_tokens)
  stderr = lambda name: float(math.sqrt(np.sum(per_row[f"{name}_variance"], dtype=np.float64)) / num_tokens)
  nats = per_token("total")
  report = {"nll_nats_per_token": nats, "bits_per_token": nats / math.log(2.0),
            "perplexity_bound": safe_exp(nats), "stderr": stderr("total"),
            "stderr_bits": stderr("total") / math.log(2.0)}
  report.update({f"{term}_nats_per_token": per_token(term) for term in TERMS})
  report.update({f"{term}_stderr": stderr(term) for term in TERMS})
  if "pad" in per_row:  # The share of the total paid for generating PAD positions.
    report.update({"pad_nats_per_token": per_token("pad"), "pad_stderr": stderr("pad")})
  report.update({"num_tokens": int(round(num_tokens)), "num_sequences": int(len(per_row["num_tokens"]))})
  return report
