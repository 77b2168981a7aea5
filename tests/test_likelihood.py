"""The likelihood bound's math against closed forms, with hand-written denoisers (no training)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lm.diffusion import likelihood, process, schedules
from diffusion_lm.diffusion.model_fns import DenoiserFns

VOCAB, DIM, LENGTH, BATCH = 6, 3, 5, 4


def oracle_fns(tokens_BL, error_fn):
  """A denoiser that knows the clean embeddings: x̂0 = E[w] + error_fn(t) (a [B, 1, D] offset)."""
  table_VD = jax.random.normal(jax.random.key(0), (VOCAB, DIM))
  clean_BLD = table_VD[tokens_BL]

  def denoise(noisy_BLD, t_B, self_cond=None):
    x0_BLD = clean_BLD + error_fn(t_B)
    return 4.0 * x0_BLD @ table_VD.T, x0_BLD
  return DenoiserFns(embed=lambda tokens: table_VD[tokens], denoise=denoise,
                     round_logits=lambda x: x @ table_VD.T, embedding_table=table_VD)


def bounds(fns, tokens_BL, keys_B, schedule, num_t_samples, **kwargs):
  """likelihood.sequence_bounds, jitted (eager lax.map is slow)."""
  return jax.jit(lambda tokens, keys: likelihood.sequence_bounds(fns, tokens, keys, schedule, num_t_samples,
                                                                 **kwargs))(tokens_BL, keys_B)


def row_keys(seed, batch=BATCH):
  return jax.vmap(lambda row: jax.random.fold_in(jax.random.key(seed), row))(jnp.arange(batch))


TOKENS = jax.random.randint(jax.random.key(1), (BATCH, LENGTH), 1, VOCAB)
OFFSET_D = jnp.array([0.1, -0.2, 0.05])
CONSTANT_ERROR = lambda t_B: jnp.broadcast_to(OFFSET_D, (t_B.shape[0], 1, DIM))


@pytest.mark.parametrize("mean_q,var_q,mean_p,var_p", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0),
                                                        (1.5, 0.01, 0.0, 1.0)])
def test_gaussian_kl_matches_numerical_integral(mean_q, var_q, mean_p, var_p):
  grid = np.linspace(-12, 12, 400_001)
  log_q = -0.5 * (grid - mean_q) ** 2 / var_q - 0.5 * np.log(2 * np.pi * var_q)
  log_p = -0.5 * (grid - mean_p) ** 2 / var_p - 0.5 * np.log(2 * np.pi * var_p)
  numerical = np.trapezoid(np.exp(log_q) * (log_q - log_p), grid)
  closed = float(likelihood.gaussian_kl(mean_q, var_q, mean_p, var_p))
  assert closed == pytest.approx(numerical, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("schedule", ["sqrt", "cosine", "linear_logsnr"])
@pytest.mark.parametrize("embedding_noise", [False, True])
def test_posterior_kl_is_half_snr_difference_times_squared_error(schedule, embedding_noise):
  """KL(q(z_s|z_t,x) ‖ q(z_s|z_t,x̂)) from the Gaussian formula = ½ (SNR(s) − SNR(t)) ‖x − x̂‖²."""
  marginal = process.marginal_fn(schedules.get_schedule(schedule), embedding_noise)
  keys = jax.random.split(jax.random.key(2), 3)
  x, x_hat, noisy = (jax.random.normal(k, (LENGTH, DIM)) for k in keys)
  for s, t in [(0.0, 0.05), (0.3, 0.31), (0.5, 0.9)]:
    alpha_s, sigma_s, log_snr_s = marginal(jnp.array(s))
    alpha_t, sigma_t, log_snr_t = marginal(jnp.array(t))
    mean_q, std = process.posterior_mean_std(noisy, x, alpha_t, sigma_t, alpha_s, sigma_s)
    mean_p, _ = process.posterior_mean_std(noisy, x_hat, alpha_t, sigma_t, alpha_s, sigma_s)
    var = std ** 2
    kl = float(jnp.sum(likelihood.gaussian_kl(mean_q, var, mean_p, var)))
    expected = 0.5 * float(jnp.exp(log_snr_s) - jnp.exp(log_snr_t)) * float(jnp.sum((x - x_hat) ** 2))
    assert kl == pytest.approx(expected, rel=2e-3)


def test_marginals_are_variance_preserving_unless_embedding_noise():
  schedule = schedules.get_schedule("sqrt")
  t = jnp.linspace(0.0, 1.0, 11)
  alpha, sigma, log_snr = process.marginal_fn(schedule)(t)
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(log_snr, schedule(t), rtol=1e-5)
  noisy_alpha, noisy_sigma, _ = process.marginal_fn(schedule, embedding_noise=True)(t)
  sigma_0_sq = jax.nn.sigmoid(-schedule(0.0))  # Diffusion-LM's x0 noise, σ_0 ≈ 0.1 for sqrt.
  np.testing.assert_allclose(noisy_sigma ** 2, sigma ** 2 + alpha ** 2 * sigma_0_sq, rtol=1e-5)
  np.testing.assert_allclose(noisy_alpha, alpha, rtol=1e-6)


def test_prior_term_is_the_closed_form_kl_to_a_standard_normal():
  fns = oracle_fns(TOKENS, CONSTANT_ERROR)
  schedule = schedules.get_schedule("cosine")
  out = bounds(fns, TOKENS, row_keys(0), schedule, 2)
  alpha_1_sq = float(jax.nn.sigmoid(schedule(1.0)))
  sigma_1_sq = 1.0 - alpha_1_sq
  x = np.asarray(fns.embed(TOKENS), np.float64)  # float32 would cancel in σ² − 1 − log σ².
  by_hand = 0.5 * np.sum(alpha_1_sq * x ** 2 + sigma_1_sq - 1.0 - np.log(sigma_1_sq), axis=(1, 2))
  np.testing.assert_allclose(out["prior"], by_hand, rtol=1e-4)
  np.testing.assert_array_equal(out["prior_variance"], 0.0)


def test_reconstruction_term_is_the_cross_entropy_of_the_t0_logits():
  fns = oracle_fns(TOKENS, lambda t_B: jnp.zeros((t_B.shape[0], 1, DIM)))
  out = bounds(fns, TOKENS, row_keys(0), schedules.get_schedule("sqrt"), 2)
  logits_BLV, _ = fns.denoise(None, jnp.zeros((BATCH,)))
  by_hand = -np.sum(np.take_along_axis(np.asarray(jax.nn.log_softmax(logits_BLV)), np.asarray(TOKENS)[..., None],
                                       -1)[..., 0], -1)
  np.testing.assert_allclose(out["reconstruction"], by_hand, rtol=1e-5)
  np.testing.assert_allclose(out["diffusion"], 0.0, atol=1e-6)  # A perfect denoiser pays nothing.
  np.testing.assert_array_equal(out["num_tokens"], LENGTH)  # No PAD (id 0) in TOKENS.


def test_rounding_estimate_is_the_expected_embedding_under_the_rounding_head():
  """x0_estimate="rounding": x̂0 = softmax(logits) E, so an offset the logits ignore costs less."""
  schedule = schedules.get_schedule("cosine")
  fns = oracle_fns(TOKENS, CONSTANT_ERROR)
  network = bounds(fns, TOKENS, row_keys(5), schedule, 4)
  rounding = bounds(fns, TOKENS, row_keys(5), schedule, 4, x0_estimate="rounding")
  _, x0_BLD = fns.denoise(None, jnp.zeros((BATCH,)))
  expected_BLD = jax.nn.softmax(4.0 * x0_BLD @ fns.embedding_table.T, -1) @ fns.embedding_table
  # The oracle's x̂0 does not depend on t, so every weight multiplies the same squared error.
  ratio_B = np.sum((np.asarray(fns.embed(TOKENS)) - np.asarray(expected_BLD)) ** 2, (1, 2)) / (
      float(jnp.sum(OFFSET_D ** 2)) * LENGTH)
  ratio_of_bounds_B = np.asarray(rounding["diffusion"]) / np.asarray(network["diffusion"])
  np.testing.assert_allclose(ratio_of_bounds_B, ratio_B, rtol=1e-4)
  np.testing.assert_allclose(rounding["reconstruction"], network["reconstruction"], rtol=1e-6)


def test_pad_share_is_the_part_of_the_total_at_pad_positions():
  tokens_BL = jnp.array([[1, 2, 3, 1, 0], [0, 0, 0, 0, 0], [4, 5, 1, 2, 3], [2, 1, 0, 0, 0]])
  out = bounds(oracle_fns(tokens_BL, CONSTANT_ERROR), tokens_BL, row_keys(6), schedules.get_schedule("cosine"), 4)
  np.testing.assert_array_equal(out["num_tokens"], [4, 0, 5, 2])
  np.testing.assert_allclose(out["pad"][1], out["total"][1], rtol=1e-6)  # All PAD.
  assert out["pad"][2] == 0.0  # No PAD.
  # The oracle's diffusion cost is the same at every position, so the share grows with the PADs.
  share = np.asarray(out["pad"]) / np.asarray(out["total"])
  assert 0.0 < share[0] < share[3] < 1.0


def test_discrete_bound_sums_every_posterior_kl_when_the_samples_cover_the_grid():
  """With K/2 = T stratified samples per replicate each of the T steps is hit once: exact."""
  schedule = schedules.get_schedule("sqrt")
  steps = 10
  out = bounds(oracle_fns(TOKENS, CONSTANT_ERROR), TOKENS, row_keys(3), schedule, 2 * steps, num_timesteps=steps)
  # A constant error telescopes: Σ_i ½ (SNR(s_i) − SNR(t_i)) ‖c‖² = ½ (SNR(0) − SNR(1)) ‖c‖²
  # per position.
  exact = 0.5 * float(jnp.exp(schedule(0.0)) - jnp.exp(schedule(1.0))) * float(jnp.sum(OFFSET_D ** 2)) * LENGTH
  np.testing.assert_allclose(out["diffusion"], exact, rtol=1e-4)
  np.testing.assert_allclose(out["diffusion_variance"], 0.0, atol=1e-6 * exact ** 2)


@pytest.mark.parametrize("time_sampling", ["uniform", "log_snr"])
def test_continuous_diffusion_term_converges_to_the_integral(time_sampling):
  """x̂0 = x + √t c: the integral ½ ∫ −γ'(t) e^γ(t) t ‖c‖² dt, by quadrature.

  On linear_logsnr: on sqrt / cosine the uniform-t integrand is heavy-tailed near t = 0 (why
  "log_snr" is the default), which this test would only see as noise.
  """
  schedule = schedules.get_schedule("linear_logsnr")
  error = lambda t_B: jnp.sqrt(t_B)[:, None, None] * OFFSET_D
  out = bounds(oracle_fns(TOKENS, error), TOKENS, row_keys(4), schedule, 512, time_sampling=time_sampling)
  t = np.linspace(0.0, 1.0, 200_001)
  snr = np.exp(np.asarray(schedule(jnp.asarray(t))))
  integral = 0.5 * np.trapezoid(-np.gradient(snr, t) * t, t) * float(jnp.sum(OFFSET_D ** 2)) * LENGTH
  estimate, stderr = float(np.mean(out["diffusion"])), float(np.sqrt(np.sum(out["diffusion_variance"]))) / BATCH
  assert abs(estimate - integral) < 4 * stderr + 1e-3 * integral


def test_stderr_shrinks_as_k_grows_and_matches_the_spread_over_seeds():
  schedule = schedules.get_schedule("cosine")
  error = lambda t_B: jnp.sqrt(t_B)[:, None, None] * OFFSET_D
  fns = oracle_fns(TOKENS, error)
  bound = jax.jit(lambda keys, k: likelihood.sequence_bounds(fns, TOKENS, keys, schedule, k), static_argnums=1)
  stderrs = {}
  for k in (2, 8, 32):
    runs = [bound(row_keys(seed), k) for seed in range(40)]
    totals = np.array([float(np.sum(r["total"])) for r in runs])
    estimated = np.array([math.sqrt(float(np.sum(r["total_variance"]))) for r in runs])
    stderrs[k] = float(np.sqrt(np.mean(estimated ** 2)))
    # Honest: the estimated standard error agrees with the actual spread of the estimate over seeds.
    assert stderrs[k] == pytest.approx(float(np.std(totals, ddof=1)), rel=0.35)
  assert stderrs[8] < 0.6 * stderrs[2] and stderrs[32] < 0.6 * stderrs[8]


def test_bad_sample_counts_are_rejected():
  fns = oracle_fns(TOKENS, CONSTANT_ERROR)
  with pytest.raises(ValueError, match="even"):
    likelihood.sequence_bounds(fns, TOKENS, row_keys(0), schedules.get_schedule("sqrt"), 3)


def test_summarize_divides_by_counted_tokens_and_adds_variances():
  per_row = {"num_tokens": np.array([3.0, 5.0]), "total": np.array([6.0, 10.0]),
             "total_variance": np.array([0.16, 0.48]),
             **{term: np.array([2.0, 3.0]) for term in likelihood.TERMS},
             **{f"{term}_variance": np.array([0.0, 0.0]) for term in likelihood.TERMS}}
  report = likelihood.summarize(per_row)
  assert report["nll_nats_per_token"] == pytest.approx(2.0)
  assert report["stderr"] == pytest.approx(math.sqrt(0.64) / 8)
  assert report["perplexity_bound"] == pytest.approx(math.exp(2.0))
  assert report["bits_per_token"] == pytest.approx(2.0 / math.log(2))
  assert (report["num_tokens"], report["num_sequences"]) == (8, 2)
