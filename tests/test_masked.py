"""Masked diffusion (MDLM) as a model kind: its loss, bound, sampler and controls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_evaluate import markov, markov_config, quiet_evaluate  # noqa: F401  (markov is a fixture)

from diffusion_lm.diffusion import masked

MASK = 7  # A vocabulary of 7 tokens in the pure-function tests; MASK is id 7.


def random_logits_fn(z_BL):
  """A stand-in network whose logits depend on the whole input row (so caching matters)."""
  key = jax.random.fold_in(jax.random.key(0), jnp.sum(z_BL))
  return jax.random.normal(key, (*z_BL.shape, MASK)) + 0.1 * z_BL[..., None]


def test_sampling_never_changes_unmasked_tokens_and_unmasks_everything():
  start_BL = jnp.array([[3, MASK, 5, MASK, MASK, 6], [MASK, MASK, MASK, 2, MASK, MASK]])
  anchor_mask_BL = jnp.zeros((2, 6), bool).at[1, 0].set(True)
  anchor_tokens_BL = jnp.zeros((2, 6), jnp.int32).at[1, 0].set(4)
  for num_steps in (1, 3, 20):
    tokens_BL, _ = masked.sample(random_logits_fn, jax.random.key(num_steps), (2, 6), num_steps, MASK,
                                 start_BL=start_BL, start_time=0.6, anchor_tokens_BL=anchor_tokens_BL,
                                 anchor_mask_BL=anchor_mask_BL)
    given = start_BL != MASK
    np.testing.assert_array_equal(np.asarray(tokens_BL)[np.asarray(given)], np.asarray(start_BL)[np.asarray(given)])
    assert int(tokens_BL[1, 0]) == 4  # The anchor.
    assert not np.any(np.asarray(tokens_BL) == MASK)  # t = 0 reveals every position.


def test_cached_sampler_gives_the_same_tokens_with_fewer_network_calls():
  """With more steps than positions many steps reveal nothing; the cache skips the network there."""
  key = jax.random.key(3)
  cached, cached_calls = masked.sample(random_logits_fn, key, (2, 6), 40, MASK, cached=True)
  uncached, uncached_calls = masked.sample(random_logits_fn, key, (2, 6), 40, MASK, cached=False)
  np.testing.assert_array_equal(cached, uncached)
  assert int(uncached_calls) == 40
  assert int(cached_calls) < 40


def test_banned_tokens_are_never_drawn():
  banned_BLV = jnp.zeros((1, 6, MASK), bool).at[..., :2].set(True)  # Ids 0 and 1 (PAD, EOS) everywhere.
  tokens_BL, _ = masked.sample(random_logits_fn, jax.random.key(1), (1, 6), 6, MASK, banned_BLV=banned_BLV)
  assert np.all(np.asarray(tokens_BL) >= 2)


def test_masked_loss_weights_masked_cross_entropy_by_one_over_t():
  tokens_BL = jnp.array([[1, 2, 3, 4]])
  uniform = lambda z_BL: jnp.zeros((*z_BL.shape, MASK))
  t_B = jnp.array([0.5])
  loss, metrics = masked.masked_loss(uniform, tokens_BL, jax.random.key(0), MASK, t_B)
  masked_count = float(metrics["masked_fraction"]) * 4
  np.testing.assert_allclose(float(loss), masked_count * np.log(MASK) / 0.5 / 4, rtol=1e-6)


@pytest.fixture(scope="module")
def masked_workdir(markov, tmp_path_factory):  # noqa: F811
  """A masked model on the Markov corpus: 40 steps, evaluated, then resumed to 300 steps."""
  from diffusion_lm.train import train
  workdir = str(tmp_path_factory.mktemp("markov_masked"))
  early = {}
  train(markov_config(markov["paths"], "masked", steps=40), workdir)
  early = quiet_evaluate(workdir, num_t_samples=8, max_sequences=100, batch_size=32)
  config = markov_config(markov["paths"], "masked", steps=300)
  train(config, workdir)  # Resumes at step 40.
  return workdir, early


def test_bound_lies_above_the_entropy_and_approaches_it_with_training(markov, masked_workdir):  # noqa: F811
  workdir, early = masked_workdir
  late = quiet_evaluate(workdir, num_t_samples=8, max_sequences=100, batch_size=32)
  assert late["bound_on"].startswith("the masked-diffusion model")
  assert late["prior_nats_per_token"] == late["reconstruction_nats_per_token"] == 0.0
  assert late["nll_nats_per_token"] - 3 * late["stderr"] > markov["entropy"]
  assert late["nll_nats_per_token"] < early["nll_nats_per_token"] - 3 * (early["stderr"] + late["stderr"])
  assert late["nll_nats_per_token"] < 1.5 * markov["entropy"], (late["nll_nats_per_token"], markov["entropy"])


def test_loss_decreases_on_the_tiny_config(tmp_path):
  """The loss of the initial and of the trained (EMA) weights on the same validation rows, averaged
  over the same 8 keys: the 1/t weight makes single steps too noisy to compare."""
  from diffusion_lm import kinds, parallel, train_state, workdir
  from diffusion_lm.data import batching, datasets
  from diffusion_lm.train import train
  config = tiny_config(**{"model.kind": "masked", "train.num_steps": 60, "train.learning_rate": 3e-3,
                          "train.num_samples": 0})
  train(config, str(tmp_path))
  loaded = workdir.load_checkpoint(str(tmp_path))
  kind = kinds.get("masked")
  init_fn, _, _ = train_state.state_shapes_and_shardings(loaded.model, config, train_state.make_optimizer(config.train),
                                                         parallel.local_mesh())
  initial = init_fn(jax.random.fold_in(jax.random.key(config.seed), train_state.PARAMS_KEY))["params"]
  rows = batching.encode_corpus(datasets.load_texts(config.data, "validation")[:64], loaded.tokenizer,
                                config.data.seq_len, "pad")
  loss_fn = jax.jit(kind.make_loss_fn(loaded.model, config), static_argnums=3)
  mean_loss = lambda params: np.mean([float(loss_fn(params, rows, jax.random.key(k), False)[0]) for k in range(8)])
  assert mean_loss(loaded.params) < 0.8 * mean_loss(initial)


def test_infilling_length_and_editing_keep_every_given_token(masked_workdir):
  import diffusion_lm
  from diffusion_lm import control
  pipe = diffusion_lm.load(masked_workdir[0])
  plan = control.build_plan(pipe.tokenizer, pipe.config.data.seq_len, "alpha __ charlie __ __ echo")
  rows = pipe.sample_tokens(4, 10, 0, anchor_tokens=np.stack([plan.tokens_L] * 4),
                            anchor_mask=np.stack([plan.mask_L] * 4), anchor_words_only=np.stack([plan.words_only_L] * 4))
  np.testing.assert_array_equal(rows[:, plan.mask_L], np.stack([plan.tokens_L[plan.mask_L]] * 4))
  for text in pipe.infill("alpha __ charlie __ __ echo", num_samples=3, steps=10):
    words = text.split()
    assert len(words) == 6 and words[0] == "alpha" and words[2] == "charlie" and words[5] == "echo"
  assert all(len(text.split()) == 5 for text in pipe.sample(3, steps=10, length=5))
  for text in pipe.edit("alpha bravo charlie delta echo", 0.8, num_samples=3, keep=["alpha", "echo"]):
    assert text.split()[0] == "alpha" and "echo" in text.split()
  with pytest.raises(control.ControlError, match="guidance"):
    pipe.guidance(["food=Italian"])


def test_inverse_cdf_draw_follows_the_distribution_and_skips_zero_probabilities():
  probs_V = jnp.array([0.0, 0.5, 0.2, 0.0, 0.3])
  log_p_BLV = jnp.broadcast_to(jnp.log(probs_V), (200, 100, 5))
  drawn = np.asarray(masked.inverse_cdf_draw(jax.random.key(0), log_p_BLV))
  frequencies = np.bincount(drawn.ravel(), minlength=5) / drawn.size
  np.testing.assert_allclose(frequencies, probs_V, atol=0.01)
  assert frequencies[0] == frequencies[3] == 0.0


def test_the_sample_binary_on_a_masked_workdir(masked_workdir):
  """The README's masked commands as a user runs them: infill through the binary, guidance refused."""
  import os
  import subprocess
  import sys
  from conftest import REPO_ROOT
  env = {**os.environ, "PYTHONPATH": REPO_ROOT}
  run = lambda *args: subprocess.run([sys.executable, "-m", "diffusion_lm.sample", f"--workdir={masked_workdir[0]}",
                                      "--steps=5", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                     timeout=300)
  result = run("--infill=alpha __ charlie __", "--num_samples=2")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2 and all(line.split()[0] == "alpha" and line.split()[2] == "charlie" for line in lines)
  result = run("--control=food=Italian")
  assert result.returncode == 2 and "Traceback" not in result.stderr and "guidance" in result.stderr
