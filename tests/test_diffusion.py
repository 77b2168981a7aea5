"""Pure-math tests of schedules, the e2e objective and the samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lm import parallel
from diffusion_lm.diffusion import objectives, process, samplers, schedules
from diffusion_lm.diffusion.model_fns import DenoiserFns, bind_denoiser
from diffusion_lm.models.denoiser import Denoiser


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_schedule_is_decreasing_and_variance_preserving(name):
  log_snr = schedules.get_schedule(name)(jnp.linspace(0.0, 1.0, 1001))
  steps = np.diff(np.asarray(log_snr))
  assert np.all(steps <= 0), "log-SNR must not increase in t"
  assert np.all(steps[:990] < 0), "strictly decreasing away from the clipped end"
  alpha, sigma = process.alpha_sigma(log_snr)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  assert alpha[0] > 0.99 and alpha[-1] < 0.01, "nearly clean at t=0, nearly pure noise at t=1"


def test_sqrt_schedule_endpoints():
  alpha_bar = lambda t: float(jax.nn.sigmoid(schedules.sqrt_log_snr(jnp.asarray(t))))
  assert alpha_bar(0.0) == pytest.approx(1 - np.sqrt(1e-4), rel=1e-5)  # Diffusion-LM: 0.99
  assert alpha_bar(0.25) == pytest.approx(1 - np.sqrt(0.25 + 1e-4), rel=1e-4)
  assert alpha_bar(1.0) == pytest.approx(1e-5, rel=1e-3)  # Clipped away from 0.


@pytest.mark.parametrize("name", schedules.MAX_LOG_SNR_SCHEDULES)
def test_max_log_snr_moves_only_the_low_noise_end(name):
  t = jnp.linspace(0.0, 1.0, 101)
  moved, own = schedules.get_schedule(name, max_log_snr=2.2)(t), schedules.get_schedule(name)(t)
  assert float(moved[0]) == pytest.approx(2.2, abs=1e-4)
  assert float(own[0]) > 4.0, "the schedules' own γ(0) is higher (sqrt 4.6, linear 10)"
  assert np.all(np.diff(np.asarray(moved)) <= 0), "still decreasing"
  assert float(moved[-1]) < -9.0, "still nearly pure noise at t=1"
  np.testing.assert_array_equal(schedules.get_schedule(name, None)(t), own)


def test_max_log_snr_on_another_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="max_log_snr applies to the sqrt and linear_logsnr schedules, not 'cosine'"):
    schedules.get_schedule("cosine", max_log_snr=2.0)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown schedule 'nope'"):
    schedules.get_schedule("nope")


def _fixed_fns(embedding, bias, self_conditioning=False):
  """A stand-in denoiser that always predicts x̂0 = 0."""
  embedding, bias = jnp.asarray(embedding), jnp.asarray(bias)
  def denoise(noisy, t, self_cond=None):
    return jnp.zeros(noisy.shape[:2] + (embedding.shape[0],)), jnp.zeros_like(noisy)
  return DenoiserFns(embed=lambda tokens: embedding[tokens], denoise=denoise,
                     round_logits=lambda x: x @ embedding.T + bias, embedding_table=embedding,
                     self_conditioning=self_conditioning)


def test_e2e_loss_matches_hand_computation():
  embedding = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], np.float32)
  bias = np.array([0.1, -0.2, 0.0], np.float32)
  tokens = np.array([[0, 1, 2], [2, 2, 1]])
  # γ(0) = 60 makes σ_0 ≈ 1e-13, so x0 = E[w] exactly; γ(1) = log(0.25/0.75) gives α_1² = 0.25.
  log_snr_1 = np.log(0.25 / 0.75)
  log_snr_fn = lambda t: 60.0 + (log_snr_1 - 60.0) * t
  loss, metrics = objectives.e2e_loss(_fixed_fns(embedding, bias), jnp.asarray(tokens), jax.random.key(0),
                                      log_snr_fn, num_timesteps=1000)
  x0 = embedding[tokens]
  expected_mse = np.mean(x0**2, axis=(1, 2))  # f ≡ 0 regresses onto x0 (or E[w], equal here).
  logits = x0 @ embedding.T + bias
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected_rounding = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0].mean(1)
  expected_prior = np.mean(0.25 * x0**2, axis=(1, 2))
  np.testing.assert_allclose(metrics["mse"], expected_mse.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["rounding"], expected_rounding.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["prior"], expected_prior.mean(), rtol=1e-4)
  np.testing.assert_allclose(loss, (expected_mse + expected_rounding + expected_prior).mean(), rtol=1e-5)


def test_low_discrepancy_times_cover_the_unit_interval():
  t = np.sort(np.asarray(objectives.low_discrepancy_times(jax.random.key(3), 8)))
  assert np.all((t >= 0) & (t < 1))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)  # One per stratum.


def test_clamping_returns_nearest_embedding_rows():
  embedding = jax.random.normal(jax.random.key(0), (50, 4))
  x = jax.random.normal(jax.random.key(1), (3, 7, 4)) * 2
  clamped = np.asarray(samplers.clamp_to_embeddings(x, embedding))
  distances = np.linalg.norm(np.asarray(x)[:, :, None, :] - np.asarray(embedding)[None, None], axis=-1)
  np.testing.assert_allclose(clamped, np.asarray(embedding)[distances.argmin(-1)], rtol=1e-6)


def test_ancestral_step_limits():
  noisy = jax.random.normal(jax.random.key(0), (2, 3, 4))
  x0 = jax.random.normal(jax.random.key(1), (2, 3, 4))
  same = samplers.ancestral_step(noisy, x0, jnp.asarray(0.3), jnp.asarray(0.3), jax.random.key(2))
  np.testing.assert_allclose(same, noisy, atol=1e-5)  # s = t: nothing moves.
  to_clean = samplers.ancestral_step(noisy, x0, jnp.asarray(0.0), jnp.asarray(30.0), jax.random.key(2))
  np.testing.assert_allclose(to_clean, x0, atol=1e-5)  # s → 0: the posterior collapses onto x0.


def test_ddim_step_is_exact_for_a_perfect_prediction():
  x0 = jax.random.normal(jax.random.key(1), (2, 3, 4))
  eps = jax.random.normal(jax.random.key(2), (2, 3, 4))
  log_snr_t, log_snr_s = jnp.asarray(-1.0), jnp.asarray(2.0)
  alpha_t, sigma_t = process.alpha_sigma(log_snr_t)
  alpha_s, sigma_s = process.alpha_sigma(log_snr_s)
  stepped = samplers.ddim_step(alpha_t * x0 + sigma_t * eps, x0, log_snr_t, log_snr_s, None)
  np.testing.assert_allclose(stepped, alpha_s * x0 + sigma_s * eps, atol=1e-5)


def _tiny_denoiser(self_conditioning=False):
  model = Denoiser(vocab_size=23, embed_dim=4, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                   max_len=6, self_conditioning=self_conditioning)
  noisy = jnp.zeros((1, 6, 4))
  params = model.init(jax.random.key(0), noisy, jnp.zeros((1,)), noisy if self_conditioning else None)["params"]
  return bind_denoiser(model, parallel.strip_boxes(params))


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sampler_shapes_and_determinism(sampler):
  fns = _tiny_denoiser(self_conditioning=True)
  run = jax.jit(lambda rng: samplers.sample(fns, rng, (3, 6), 5, schedules.sqrt_log_snr, sampler=sampler,
                                            return_trajectory=True))
  (first, first_logits), (again, again_logits) = run(jax.random.key(1)), run(jax.random.key(1))
  _, other_logits = run(jax.random.key(2))
  assert first.shape == (3, 6) and jnp.issubdtype(first.dtype, jnp.integer)
  assert np.all((np.asarray(first) >= 0) & (np.asarray(first) < 23))
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first_logits, again_logits)
  assert not np.allclose(first_logits, other_logits), "another seed must change the trajectory"


def test_anchors_are_kept_and_trajectory_has_one_entry_per_step():
  fns = _tiny_denoiser()
  anchors = samplers.Anchors(tokens=jnp.array([[5, 0, 0, 7, 0, 9]] * 2), mask=jnp.array([[1, 0, 0, 1, 0, 1]] * 2, bool))
  tokens, trajectory = samplers.sample(fns, jax.random.key(0), (2, 6), 4, schedules.sqrt_log_snr,
                                       anchors=anchors, return_trajectory=True)
  np.testing.assert_array_equal(np.asarray(tokens)[:, [0, 3, 5]], [[5, 7, 9]] * 2)
  assert trajectory.shape == (4, 2, 6, 23)


@pytest.mark.parametrize("draw_tokens", [False, True])
def test_draw_tokens_feeds_embedding_rows_not_the_mean(draw_tokens):
  # Tokens 1 and 2 equally likely; the fed-back x̂0 (self-conditioning) sharpens the logits
  # towards the token it holds, so the trajectory shows what x̂0 was at the previous step.
  embedding = jnp.eye(4)
  base = jnp.array([-1e9, 0.0, 0.0, -1e9])
  def denoise(noisy, t, self_cond):
    logits = base + 10.0 * self_cond @ embedding.T
    return logits, jax.nn.softmax(logits, -1) @ embedding
  fns = DenoiserFns(embed=lambda tokens: embedding[tokens], denoise=denoise, round_logits=None,
                    embedding_table=embedding, self_conditioning=True, categorical=True)
  _, trajectory = samplers.sample(fns, jax.random.key(0), (3, 6), 4, schedules.sqrt_log_snr, clamp=False,
                                  draw_tokens=draw_tokens, return_trajectory=True)
  probs = np.asarray(jax.nn.softmax(trajectory[1:], -1))
  if draw_tokens:  # x̂0 was one token's row: the next logits are sure of that token, and both occur.
    assert probs.max(-1).min() > 0.99
    assert set(np.unique(probs.argmax(-1))) == {1, 2}
  else:  # x̂0 was the mean of rows 1 and 2: they stay tied.
    np.testing.assert_allclose(probs[..., 1], probs[..., 2], atol=1e-6)


def test_output_prior_is_the_exact_single_token_posterior():
  """softmax of the prior logits = p(w | z) ∝ N(z; α E[w], σ² I) for one position, uniform p(w)."""
  from diffusion_lm.models.denoiser import output_prior_logits
  embedding_VD = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.5]])  # Rows of different norms.
  z_BLD = jnp.array([[[0.3, 0.9], [-0.4, 0.1]]])
  log_snr_B = jnp.array([0.7])
  alpha, sigma = (float(v[0]) for v in process.alpha_sigma(log_snr_B))
  densities = np.exp(-np.sum((np.asarray(z_BLD)[0, :, None, :] - alpha * np.asarray(embedding_VD)) ** 2, -1)
                     / (2 * sigma ** 2))
  expected = densities / densities.sum(-1, keepdims=True)
  got = jax.nn.softmax(output_prior_logits(z_BLD, embedding_VD, log_snr_B), -1)[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_renoise_step_is_the_forward_process_from_x0():
  x0 = jax.random.normal(jax.random.key(1), (2, 3, 4))
  noisy = jax.random.normal(jax.random.key(2), (2, 3, 4))
  log_snr_s = jnp.asarray(1.5)
  stepped = samplers.renoise_step(noisy, x0, jnp.asarray(-1.0), log_snr_s, jax.random.key(3))
  alpha_s, sigma_s = process.alpha_sigma(log_snr_s)
  np.testing.assert_allclose(stepped, alpha_s * x0 + sigma_s * jax.random.normal(jax.random.key(3), x0.shape),
                             rtol=1e-6)
  # It forgets z_t: another z_t gives the same step.
  np.testing.assert_allclose(samplers.renoise_step(noisy + 5.0, x0, jnp.asarray(-1.0), log_snr_s, jax.random.key(3)),
                             stepped)


@pytest.mark.parametrize("correlation", [-0.6, 0.5])
def test_correlated_renoise_keeps_unit_noise_correlated_with_the_steps_own(correlation):
  x0 = jax.random.normal(jax.random.key(1), (64, 48, 32))
  log_snr_t, log_snr_s = jnp.asarray(-1.0), jnp.asarray(0.5)
  alpha_t, sigma_t = process.alpha_sigma(log_snr_t)
  alpha_s, sigma_s = process.alpha_sigma(log_snr_s)
  own = jax.random.normal(jax.random.key(2), x0.shape)
  noisy = alpha_t * x0 + sigma_t * own
  # ρ = 0 is the plain renoise step, number for number.
  np.testing.assert_array_equal(samplers.renoise_step(noisy, x0, log_snr_t, log_snr_s, jax.random.key(3), 0.0),
                                samplers.renoise_step(noisy, x0, log_snr_t, log_snr_s, jax.random.key(3)))
  stepped = samplers.renoise_step(noisy, x0, log_snr_t, log_snr_s, jax.random.key(3), correlation)
  new = np.asarray((stepped - alpha_s * x0) / sigma_s).ravel()
  assert np.std(new) == pytest.approx(1.0, abs=0.01)  # Still the forward process's noise level.
  assert np.corrcoef(new, np.asarray(own).ravel())[0, 1] == pytest.approx(correlation, abs=0.02)
  fns = _tiny_denoiser()
  run = lambda rho: samplers.sample(fns, jax.random.key(1), (3, 6), 5, schedules.sqrt_log_snr, sampler="renoise",
                                    renoise_correlation=rho, return_trajectory=True)[1]
  assert not np.allclose(run(correlation), run(0.0)), "the correlation must reach the sampler"
  with pytest.raises(ValueError, match="renoise sampler"):
    samplers.sample(fns, jax.random.key(1), (3, 6), 5, schedules.sqrt_log_snr, sampler="ddim", renoise_correlation=-0.5)


def test_model_time_floor_changes_only_the_time_the_network_is_told():
  # DINOISER's condition-enhanced sampling: the network sees max(t, c); the grid and z_t are untouched.
  embedding = jax.random.normal(jax.random.key(0), (5, 3))
  told = []

  def denoise(noisy, t, self_cond=None):
    jax.debug.callback(lambda times: told.append(float(times[0])), t)
    logits = noisy @ embedding.T + 10 * t[:, None, None] * jnp.arange(5)  # A changed t changes the samples.
    return logits, jax.nn.softmax(logits) @ embedding
  fns = DenoiserFns(embed=lambda tokens: embedding[tokens], denoise=denoise, round_logits=None,
                    embedding_table=embedding, categorical=True)
  run = lambda **kw: samplers.sample(fns, jax.random.key(1), (2, 4), 10, schedules.get_schedule("sqrt"),
                                     sampler="renoise", clamp=False, **kw)
  plain = run()
  plain_times = list(told)
  told.clear()
  np.testing.assert_array_equal(run(model_time_floor=0.0), plain)  # c = 0 is the plain sampler.
  assert told == plain_times
  told.clear()
  floored = run(model_time_floor=0.55)
  assert told == pytest.approx([max(t, 0.55) for t in plain_times])  # 10 steps and the final t = 0 call.
  assert len(told) == 11 and min(told) == pytest.approx(0.55)
  assert not np.array_equal(floored, plain)
