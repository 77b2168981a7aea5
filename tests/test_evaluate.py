"""The evaluate binary on tiny trained models: a Markov-chain corpus of exactly known entropy,
exact AR perplexity, the diffusion bound, 1 vs 8 devices, and generative perplexity of samples."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_XLA_FLAGS, tiny_config
from diffusion_lm.errors import UserError

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
WORDS_PER_SENTENCE = 7  # Then EOS: 8 counted tokens per row (seq_len 16, so 8 PAD positions).


def markov_chain(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(transition matrix P, stationary distribution π) of a random 6-state chain."""
  rng = np.random.default_rng(seed)
  transitions = rng.dirichlet(np.full(len(WORDS), 0.4), size=len(WORDS))
  eigenvalues, eigenvectors = np.linalg.eig(transitions.T)
  stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1.0))])
  return transitions, stationary / stationary.sum()


def entropy_per_token(transitions, stationary) -> float:
  """H(w_1..w_n, EOS) / (n + 1): sentences start from π, EOS is certain, so it adds no entropy."""
  entropy = lambda p: -np.sum(p * np.log(p))
  rate = sum(stationary[s] * entropy(transitions[s]) for s in range(len(WORDS)))
  return (entropy(stationary) + (WORDS_PER_SENTENCE - 1) * rate) / (WORDS_PER_SENTENCE + 1)


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
  """Train / validation / test files drawn from the chain, its entropy per token, and the true
  NLL per token of the test sentences themselves."""
  directory = tmp_path_factory.mktemp("markov")
  transitions, stationary = markov_chain()
  rng = np.random.default_rng(1)
  paths, test_nll = {}, 0.0
  for split, count in (("train", 3000), ("validation", 200), ("test", 400)):
    lines = []
    for _ in range(count):
      states = [rng.choice(len(WORDS), p=stationary)]
      for _ in range(WORDS_PER_SENTENCE - 1):
        states.append(rng.choice(len(WORDS), p=transitions[states[-1]]))
      lines.append(" ".join(WORDS[s] for s in states))
      if split == "test":
        steps = zip(states, states[1:])
        test_nll -= np.log(stationary[states[0]]) + sum(np.log(transitions[a, b]) for a, b in steps)
    paths[split] = str(directory / f"{split}.txt")
    with open(paths[split], "w") as f:
      f.write("\n".join(lines) + "\n")
  return {"paths": paths, "entropy": entropy_per_token(transitions, stationary),
          "test_nll": test_nll / (400 * (WORDS_PER_SENTENCE + 1))}


def markov_config(paths, kind: str, steps: int):
  return tiny_config(**{
      "data.name": "text_files", "data.train_files": paths["train"], "data.validation_files": paths["validation"],
      "data.test_files": paths["test"], "data.vocab_size": 16, "model.kind": kind, "train.num_steps": steps,
      "model.num_layers": 1,  # A first-order chain needs one layer; it halves compile time.
      "train.batch_size": 32, "train.learning_rate": 3e-3, "train.warmup_steps": 20, "train.eval_every": steps,
      "train.checkpoint_every": steps, "train.log_every": steps, "train.num_samples": 0})


@pytest.fixture(scope="module")
def ar_workdir(markov, tmp_path_factory):
  from diffusion_lm.train import train
  workdir = str(tmp_path_factory.mktemp("markov_ar"))
  train(markov_config(markov["paths"], "autoregressive", steps=200), workdir)
  return workdir


@pytest.fixture(scope="module")
def diffusion_workdir(markov, tmp_path_factory):
  from diffusion_lm.train import train
  workdir = str(tmp_path_factory.mktemp("markov_diffusion"))
  train(markov_config(markov["paths"], "diffusion", steps=100), workdir)
  return workdir


@pytest.fixture(scope="module")
def diffusion_bound(diffusion_workdir):
  """The bound on the first 60 test sentences with K = 4, in batches of 32 (the second is padded).

  (That the standard error shrinks with K, and matches the spread over seeds, is tested on
  hand-written denoisers in test_likelihood.py, without the compile time of a second K here.)
  """
  return quiet_evaluate(diffusion_workdir, num_t_samples=4, max_sequences=60, batch_size=32)


def quiet_evaluate(workdir, **kwargs):
  from diffusion_lm import evaluate
  return evaluate.evaluate(workdir, **{"write": False, "progress": False, **kwargs})


def test_markov_ar_perplexity_approaches_the_entropy_and_the_diffusion_bound_stays_above(
    markov, ar_workdir, diffusion_bound):
  ar = quiet_evaluate(ar_workdir)
  assert ar["exact"] and ar["num_tokens"] == 400 * 8 and ar["num_sequences"] == 400
  # Any model's expected NLL is >= the entropy; a 200-step tiny AR model gets within a few %.
  assert markov["test_nll"] - 0.01 < ar["nll_nats_per_token"] < markov["test_nll"] + 0.08
  assert abs(markov["test_nll"] - markov["entropy"]) < 0.05  # The test sample is typical.
  assert ar["perplexity"] == pytest.approx(math.exp(ar["nll_nats_per_token"]))
  bound = diffusion_bound
  assert bound["num_tokens"] == 60 * 8, "EOS counted, PAD not, as for the AR model"
  assert bound["nll_nats_per_token"] - 3 * bound["stderr"] > markov["entropy"]
  assert bound["nll_nats_per_token"] == pytest.approx(
      sum(bound[f"{term}_nats_per_token"] for term in ("prior", "diffusion", "reconstruction")))
  assert bound["settings"]["embedding_noise"] is True  # Trained with the e2e objective.


def test_ar_perplexity_is_exp_of_the_mean_nll_computed_by_hand(ar_workdir):
  from diffusion_lm import evaluate, scoring, workdir
  loaded = workdir.load_checkpoint(ar_workdir)
  texts = ["alpha bravo", "charlie charlie delta echo", "foxtrot"]
  tokens_NL, _ = scoring.encode_rows(texts, loaded.tokenizer, loaded.config.data.seq_len, "pad")
  logits_NLV = loaded.model.apply({"params": loaded.params}, tokens_NL)
  log_probs_NLV = np.asarray(jax.nn.log_softmax(logits_NLV), np.float64)
  nll, count = 0.0, 0
  for row in range(len(texts)):
    for position in range(tokens_NL.shape[1]):
      token = tokens_NL[row, position]
      if token != loaded.tokenizer.pad_id:  # EOS counts, padding does not.
        nll -= log_probs_NLV[row, position, token]
        count += 1
  assert count == 2 + 4 + 1 + 3
  text_file = os.path.join(ar_workdir, "three.txt")
  with open(text_file, "w") as f:
    f.write("\n".join(texts) + "\n")
  report = quiet_evaluate(ar_workdir, text_file=text_file, batch_size=2)
  assert report["num_tokens"] == count and report["num_sequences"] == 3
  assert report["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
  # Position i sees only tokens < i: changing a later token leaves earlier predictions alone.
  changed_NL = tokens_NL.copy()
  changed_NL[:, 3] = 5
  changed_NLV = np.asarray(jax.nn.log_softmax(loaded.model.apply({"params": loaded.params}, changed_NL)))
  np.testing.assert_allclose(changed_NLV[:, :4], log_probs_NLV[:, :4], atol=1e-5)


def test_one_device_and_eight_fake_devices_give_the_same_bound(diffusion_workdir, diffusion_bound):
  single = diffusion_bound
  assert single["settings"]["num_devices"] == 1
  flags = {k: single["settings"][k] for k in ("num_t_samples", "max_sequences", "batch_size", "seed")}
  env = {**os.environ, "PYTHONPATH": REPO_ROOT,
         "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-m", "diffusion_lm.evaluate", f"--workdir={diffusion_workdir}",
                           *(f"--{k}={v}" for k, v in flags.items())],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "nats/token" in result.stdout
  with open(os.path.join(diffusion_workdir, "eval", "test.json")) as f:
    sharded = json.load(f)
  assert sharded["settings"]["num_devices"] == 8
  for field in ("nll_nats_per_token", "stderr", "diffusion_nats_per_token", "reconstruction_nats_per_token"):
    assert sharded[field] == pytest.approx(single[field], rel=1e-4), field
  assert (sharded["num_tokens"], sharded["num_sequences"]) == (single["num_tokens"], 60)


def test_samples_are_judged_against_as_many_real_sentences(markov, ar_workdir, diffusion_workdir):
  from diffusion_lm import evaluate
  rng = np.random.default_rng(0)
  with open(markov["paths"]["test"]) as f:
    real = f.read().splitlines()[:30]
  shuffled = [" ".join(rng.permutation(line.split())) for line in real]  # Same words, no chain order.
  samples_file = os.path.join(diffusion_workdir, "shuffled.txt")
  with open(samples_file, "w") as f:
    f.write("\n".join(shuffled) + "\n")
  report = evaluate.evaluate_samples(diffusion_workdir, samples_file, ar_workdir, seed=0, batch_size=16,
                                     progress=False)
  samples, reference = report["samples"], report["reference"]
  assert samples["num_sequences"] == reference["num_sequences"] == 30
  assert samples["judge_perplexity"] > reference["judge_perplexity"]
  assert report["perplexity_ratio"] == pytest.approx(samples["judge_perplexity"] / reference["judge_perplexity"])
  low, high = report["perplexity_ratio_ci95"]
  assert 1 < low < report["perplexity_ratio"] < high, "30 shuffled sentences are resolvably worse than real ones"
  from diffusion_lm.evaluation import format_report
  assert f"samples ÷ reference: judge perplexity {report['perplexity_ratio']:.3f}" in format_report(report)
  assert 0 < samples["distinct_1"] <= samples["distinct_2"] <= 1
  assert os.path.exists(os.path.join(diffusion_workdir, "eval", "samples_shuffled.json"))
  with pytest.raises(UserError, match="autoregressive"):
    evaluate.evaluate_samples(ar_workdir, samples_file, diffusion_workdir, progress=False)


def test_sampling_variants_benchmark_judges_each_variant_beside_real_sentences(ar_workdir, diffusion_workdir):
  # benchmarks/sampling_variants.py is how sampler settings are screened (BENCHMARKS.md, "The few-step gap").
  result = subprocess.run([sys.executable, "benchmarks/sampling_variants.py", f"--workdir={diffusion_workdir}",
                           f"--judge_workdir={ar_workdir}", "--variants=default=,hot=temperature:2.0", "--steps=2",
                           "--num_samples=4"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT},
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| default") or
          line.startswith("| hot")]
  assert [(row[0], row[1]) for row in rows] == [("| default", "2"), ("| hot", "2")]
  for row in rows:  # judge ppl ÷ real (interval) | entropy (real) | distinct-2 (real)
    ratio, entropy, distinct_2 = (re.fullmatch(r"([\d.]+) \(([\d.–]+)\)", cell).groups() for cell in row[2:5])
    assert float(ratio[0]) > 0 and "–" in ratio[1]
    assert float(entropy[0]) > 0 and float(entropy[1]) > 0, "samples' and real sentences' unigram entropy"
    assert 0 < float(distinct_2[0]) <= 1 and 0 < float(distinct_2[1]) <= 1, "samples' and real sentences' distinct-2"


def test_perplexity_ratio_interval_covers_equal_sets_and_narrows_with_more_rows():
  from diffusion_lm.scoring import perplexity_ratio_interval
  rng = np.random.default_rng(0)
  rows = lambda n: {"nll": rng.gamma(4.0, 10.0, n), "num_tokens": rng.integers(15, 30, n).astype(float)}
  small, large = (perplexity_ratio_interval(rows(n), rows(n), resamples=500) for n in (100, 1600))
  assert small[0] < 1 < small[1] and large[0] < 1 < large[1]  # Two draws of one distribution.
  assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])  # 16× the rows: about a quarter of the width.
  same = rows(200)
  assert perplexity_ratio_interval(same, same, seed=3) == perplexity_ratio_interval(same, same, seed=3)


def test_distinct_n_counts_unique_ngrams_over_all_texts():
  from diffusion_lm.scoring import distinct_n
  texts = ["the pub is near", "the pub is cheap"]
  assert distinct_n(texts, 1) == pytest.approx(5 / 8)
  assert distinct_n(texts, 2) == pytest.approx(4 / 6)
  assert distinct_n(["a"], 2) == 0.0


def test_unigram_entropy_is_the_entropy_of_the_word_distribution():
  from diffusion_lm.scoring import unigram_entropy
  assert unigram_entropy(["a b", "a c"]) == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))
  assert unigram_entropy(["x x x"]) == 0.0
  assert unigram_entropy(["a b c d"]) == pytest.approx(np.log(4))


def test_bad_settings_are_user_errors(ar_workdir, tmp_path):
  with pytest.raises(UserError, match="even"):
    quiet_evaluate(ar_workdir, num_t_samples=3)
  with pytest.raises(UserError, match="multiple"):
    quiet_evaluate(ar_workdir, batch_size=0)
  with pytest.raises(UserError, match="does not exist"):
    quiet_evaluate(ar_workdir, text_file=str(tmp_path / "missing.txt"))
  with pytest.raises(UserError, match="no checkpoint"):
    quiet_evaluate(str(tmp_path))
