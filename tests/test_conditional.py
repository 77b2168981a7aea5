"""Conditional generation (source given, target generated): rows, losses, sampling, metrics, binaries.

The trained checks use a copy task a tiny model learns in seconds: the source is one of 30 names,
the target "NAME is here ." — an unconditional model can only guess the name (log 30 nats), a
conditional one reads it from the clean source.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from conftest import REPO_ROOT, TEST_XLA_FLAGS, tiny_config

from diffusion_lm.data import layout

NAMES = [f"name{i}" for i in range(30)]
TARGET = "{} is here ."


@pytest.fixture(scope="module")
def copy_corpus(tmp_path_factory):
  """source<TAB>target files, and the same targets alone (for the unconditional model)."""
  directory = tmp_path_factory.mktemp("copy")
  rng = np.random.default_rng(0)
  paths = {}
  for split, count in (("train", 2000), ("validation", 200), ("test", 200)):
    names = [NAMES[i] for i in rng.integers(0, len(NAMES), count)]
    for kind, lines in (("pairs", [f"{n}\t{TARGET.format(n)}" for n in names]),
                        ("targets", [TARGET.format(n) for n in names])):
      paths[kind, split] = str(directory / f"{kind}.{split}.txt")
      with open(paths[kind, split], "w") as f:
        f.write("\n".join(lines) + "\n")
  return paths


def copy_config(paths, kind: str, conditional: bool, steps: int = 300, **overrides):
  corpus = "pairs" if conditional else "targets"
  return tiny_config(**{
      "data.name": "text_files", "data.train_files": paths[corpus, "train"],
      "data.validation_files": paths[corpus, "validation"], "data.test_files": paths[corpus, "test"],
      "data.conditional": conditional, "data.vocab_size": 64, "model.kind": kind, "train.num_steps": steps,
      # The same target positions for both: a conditional row spends two on the source and its BOS.
      "data.seq_len": 12 if conditional else 10, "diffusion.objective": "cdcd",
      "model.parameterization": "categorical", "model.normalize_embeddings": True,
      "train.batch_size": 32, "train.learning_rate": 3e-3, "train.warmup_steps": 20, "train.eval_every": steps,
      "train.checkpoint_every": steps, "train.log_every": steps, "train.num_samples": 2, **overrides})


@pytest.fixture(scope="module")
def workdirs(copy_corpus, tmp_path_factory):
  from diffusion_lm.train import train
  made = {}
  for name, kind, conditional in (("conditional", "diffusion", True), ("unconditional", "diffusion", False),
                                  ("ar", "autoregressive", True)):
    made[name] = str(tmp_path_factory.mktemp(name))
    train(copy_config(copy_corpus, kind, conditional), made[name])
  return made


# ---------------------------------------------------------------------------------------------
# The row layout and the clean source
# ---------------------------------------------------------------------------------------------


def test_pair_rows_and_source_mask():
  row = layout.layout_pair([40, 41], [7, 33, 9], seq_len=8)
  np.testing.assert_array_equal(row, [40, 41, layout.BOS_ID, 7, 33, 9, layout.EOS_ID, 0])
  np.testing.assert_array_equal(layout.source_mask(row[None])[0], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(layout.drop_source(row), [layout.BOS_ID, 7, 33, 9, layout.EOS_ID, 0, 0, 0])
  assert not layout.source_mask(layout.layout_row([7, 33], 6)[None]).any()  # No BOS: no source.
  cut = layout.layout_pair([40], [7] * 20, seq_len=6)  # A long target is cut and keeps its EOS.
  np.testing.assert_array_equal(cut, [40, layout.BOS_ID, 7, 7, 7, layout.EOS_ID])
  with pytest.raises(ValueError, match="no room"):
    layout.layout_pair([40] * 4, [7], seq_len=6)


def recording_denoiser(**fields):
  """A position-wise stand-in denoiser (logits = z Eᵀ) that records every input it is given."""
  from diffusion_lm.diffusion.model_fns import DenoiserFns
  table_VD = jax.random.normal(jax.random.key(0), (50, 4))
  seen = []

  def denoise(noisy_BLD, t_B, self_cond=None):
    seen.append(noisy_BLD)
    logits_BLV = jnp.einsum("bld,vd->blv", noisy_BLD, table_VD)
    return logits_BLV, jax.nn.softmax(logits_BLV) @ table_VD
  fns = DenoiserFns(embed=lambda tokens: table_VD[tokens], denoise=denoise, round_logits=None,
                    embedding_table=table_VD, categorical=True, **fields)
  return fns, table_VD, seen


def test_the_denoiser_never_sees_noise_at_source_positions():
  """Training and the bound noise every position; the network's input holds E[w] at the source."""
  from diffusion_lm.diffusion import objectives, schedules
  from diffusion_lm.diffusion.model_fns import with_clean_positions
  fns, table_VD, seen = recording_denoiser()
  tokens_BL = jnp.asarray(np.stack([layout.layout_pair([10, 11, 12], [20, 21], 10)] * 4))
  source_BL = layout.source_mask(tokens_BL)
  conditioned = with_clean_positions(fns, tokens_BL, source_BL)
  t_B = jnp.array([0.2, 0.5, 0.9, 1.0])  # Up to pure noise.
  objectives.cdcd_loss(conditioned, tokens_BL, jax.random.key(1), schedules.get_schedule("cosine"), 0, t_B=t_B,
                       target_BL=~source_BL)
  noisy_BLD = seen[-1]
  np.testing.assert_array_equal(noisy_BLD[source_BL], table_VD[tokens_BL][source_BL])
  assert not np.allclose(noisy_BLD[~source_BL], table_VD[tokens_BL][~source_BL], atol=0.1)


def test_loss_counts_only_the_target():
  """Changing what the network says at source positions does not move the conditional loss."""
  from diffusion_lm.diffusion import objectives, schedules
  from diffusion_lm.diffusion.model_fns import DenoiserFns
  table_VD = jax.random.normal(jax.random.key(0), (50, 4))
  tokens_BL = jnp.asarray(np.stack([layout.layout_pair([10, 11], [20, 21], 8)] * 2))
  source_BL = layout.source_mask(tokens_BL)

  def fns_with(source_logit):
    def denoise(noisy_BLD, t_B, self_cond=None):
      logits_BLV = jnp.einsum("bld,vd->blv", noisy_BLD, table_VD)
      logits_BLV = jnp.where(source_BL[..., None], source_logit, logits_BLV)
      return logits_BLV, jax.nn.softmax(logits_BLV) @ table_VD
    return DenoiserFns(embed=lambda tokens: table_VD[tokens], denoise=denoise, round_logits=None,
                       embedding_table=table_VD, categorical=True)
  loss = lambda fns, target: objectives.cdcd_loss(fns, tokens_BL, jax.random.key(3), schedules.get_schedule("cosine"),
                                                  0, target_BL=target)[0]
  assert float(loss(fns_with(0.0), ~source_BL)) == float(loss(fns_with(5.0), ~source_BL))
  assert float(loss(fns_with(0.0), None)) != float(loss(fns_with(5.0), None))


# ---------------------------------------------------------------------------------------------
# Trained on the copy task
# ---------------------------------------------------------------------------------------------


def mean_loss(workdir, config, rows, kind_name="diffusion", keys=8):
  from diffusion_lm import kinds, workdir as workdir_lib
  loaded = workdir_lib.load_checkpoint(workdir)
  loss_fn = jax.jit(kinds.get(kind_name).make_loss_fn(loaded.model, config), static_argnums=3)
  return np.mean([float(loss_fn(loaded.params, rows, jax.random.key(k), False)[0]) for k in range(keys)])


def test_the_conditional_loss_drops_below_the_unconditional_one_on_the_same_targets(copy_corpus, workdirs):
  from diffusion_lm import workdir as workdir_lib
  from diffusion_lm.data import batching, datasets
  losses = {}
  for name, conditional in (("conditional", True), ("unconditional", False)):
    config = copy_config(copy_corpus, "diffusion", conditional)
    tokenizer = workdir_lib.load_checkpoint(workdirs[name]).tokenizer
    rows = batching.encode_corpus(datasets.load_texts(config.data, "validation")[:64], tokenizer,
                                  config.data.seq_len, "pad", conditional)
    losses[name] = mean_loss(workdirs[name], config, rows)
  # Both average the cross-entropy over the same 10 target positions and times; where the noise hides
  # the name, the unconditional model must guess one of 30, the conditional one copies it (measured:
  # 0.15 vs 0.24 nats).
  assert losses["conditional"] < 0.75 * losses["unconditional"], losses


def test_source_guidance_runs_the_unconditional_pass_on_the_shifted_row():
  """u sees the row as source dropout made it (BOS clean at 0, target shifted, PAD tail) and is
  shifted back: with a position-wise denoiser u equals c on the target, so guidance changes nothing there."""
  from diffusion_lm.diffusion import schedules
  from diffusion_lm.diffusion.model_fns import with_clean_positions, with_source_guidance
  log_snr = schedules.get_schedule("sqrt")
  fns, table_VD, seen = recording_denoiser(log_snr=lambda t, *_: log_snr(t))
  tokens_BL = jnp.asarray(np.stack([layout.layout_pair([10, 11, 12], [20, 21], 10),
                                    layout.layout_pair([13], [22, 23, 24], 10)]))
  clean_BL = layout.source_mask(tokens_BL)
  source_len_B = jnp.sum(clean_BL, axis=1) - 1
  noisy_BLD = jax.random.normal(jax.random.key(1), (2, 10, 4))
  t_B = jnp.array([0.3, 0.6])
  plain_logits, _ = with_clean_positions(fns, tokens_BL, clean_BL).denoise(noisy_BLD, t_B)
  unguided_logits, _ = with_source_guidance(fns, tokens_BL, clean_BL, source_len_B, layout.PAD_ID, 0.0).denoise(
      noisy_BLD, t_B)
  np.testing.assert_array_equal(unguided_logits, plain_logits)
  seen.clear()
  guided_logits, guided_x0 = with_source_guidance(fns, tokens_BL, clean_BL, source_len_B, layout.PAD_ID, 2.0).denoise(
      noisy_BLD, t_B)
  np.testing.assert_allclose(guided_logits, plain_logits, atol=1e-5)  # Position-wise: u = c after the shift back.
  np.testing.assert_allclose(guided_x0, jax.nn.softmax(guided_logits) @ table_VD, atol=1e-6)
  unconditional_BLD = seen[1]
  alpha_B = jnp.sqrt(jax.nn.sigmoid(log_snr(t_B)))
  for row, shift in enumerate([3, 1]):
    np.testing.assert_allclose(unconditional_BLD[row, 0], table_VD[layout.BOS_ID], atol=1e-6)  # The separator, clean.
    np.testing.assert_allclose(unconditional_BLD[row, 1:10 - shift], noisy_BLD[row, shift + 1:], atol=1e-6)
    wrapped = noisy_BLD[row, :shift] + alpha_B[row] * (table_VD[layout.PAD_ID] - table_VD[tokens_BL[row, :shift]])
    np.testing.assert_allclose(unconditional_BLD[row, 10 - shift:], wrapped, atol=1e-5)


def test_model_time_floor_applies_to_generation_from_noise_not_to_refinement(workdirs):
  import diffusion_lm
  pipe = diffusion_lm.load(workdirs["conditional"])
  sources, drafts = NAMES[:4], ["name9 is here .", "here is name1", "name2 is .", "name3 here ."]
  refined = pipe.refine(drafts, sources, 0.4, steps=10)
  tokens = pipe.sample_tokens(4, 10, 0)
  pipe.config.sample.model_time_floor = 0.9
  assert pipe.refine(drafts, sources, 0.4, steps=10) == refined  # A draft's noise level is the point of refining.
  assert not np.array_equal(pipe.sample_tokens(4, 10, 0), tokens)  # From noise, the network is told t ≥ 0.9.
  outputs = pipe.generate(sources, steps=10)
  assert all(output.endswith(" is here .") for output in outputs), outputs  # Still the targets' shape.


def test_predicted_lengths_are_the_targets_and_generate_pins_them(workdirs):
  import diffusion_lm
  from diffusion_lm import control
  from diffusion_lm.diffusion_pipeline import expected_counts, expected_lengths
  # PAD 0, EOS 1, two words: P(word) 0.25 + 1.0 over the target; the third position is not the target's.
  logits_BLV = jnp.log(jnp.array([[[0.5, 0.25, 0.0, 0.25], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]]))
  counts_BV = expected_counts(logits_BLV, jnp.array([[True, True, False]]))
  np.testing.assert_allclose(counts_BV, [[0.5, 0.25, 0.0, 1.25]], rtol=1e-6)
  np.testing.assert_allclose(expected_lengths(counts_BV), [1.25], rtol=1e-6)
  pipe = diffusion_lm.load(workdirs["conditional"])
  assert pipe.predicted_lengths(NAMES) == [4] * len(NAMES)  # Every target of the corpus is "nameK is here .".
  pipe.config.sample.predicted_length = True
  outputs = pipe.generate(NAMES[:4], steps=10)
  assert all(output.endswith(" is here .") and len(output.split()) == 4 for output in outputs), outputs
  assert [len(text.split()) for text in pipe.generate(NAMES[:2], steps=10, length=6)] == [6, 6]  # Controls win.
  with pytest.raises(control.ControlError, match="unconditional model has no source"):
    diffusion_lm.load(workdirs["unconditional"]).predicted_lengths(["name1"])


def test_source_coverage_nudges_source_words_in_and_penalises_their_repeats():
  """The pure wrapper on hand-made logits: +b on the source's missing words, b/8 on placed ones, −5 on a repeat."""
  from diffusion_lm.diffusion.model_fns import (COVERAGE_REPEAT_PENALTY, COVERED_SHARE, DenoiserFns,
                                                with_source_coverage)
  # Ids 0-3 specials and unk, 4 a comma, 5-7 words. Row: source "5 7 4" + BOS, then 4 target positions.
  tokens_BL = jnp.array([[5, 7, 4, layout.BOS_ID, 0, 0, 0, 0]])
  clean_BL = jnp.array([[True, True, True, True, False, False, False, False]])
  words_V = jnp.array([False, False, False, False, False, True, True, True])
  logits_BLV = jnp.zeros((1, 8, 8)).at[0, 4, 5].set(4.0).at[0, 5, 5].set(3.0).at[0, 6, 6].set(3.0).at[0, 7, 6].set(2.0)
  logits_BLV = logits_BLV.at[0, :, 4].add(1.0)  # The comma is in the source but is not a word: no bonus.
  table_VD = jax.random.normal(jax.random.key(0), (8, 3))
  fns = DenoiserFns(embed=lambda tokens: table_VD[tokens], denoise=lambda z, t, sc=None: (logits_BLV, None),
                    round_logits=None, embedding_table=table_VD, categorical=True)
  assert with_source_coverage(fns, tokens_BL, clean_BL, words_V, bias=0.0) is fns  # Off: the plain denoiser.
  covered, x0_BLD = with_source_coverage(fns, tokens_BL, clean_BL, words_V, bias=1.5).denoise(None, None)
  expected = logits_BLV.at[0, 4:, 5].add(1.5 * COVERED_SHARE)  # Word 5 is already position 4's argmax.
  expected = expected.at[0, 4:, 7].add(1.5)  # Word 7 is nowhere yet: the full bonus at every target position.
  expected = expected.at[0, 5, 5].add(-COVERAGE_REPEAT_PENALTY)  # Chosen at position 4 with more confidence.
  np.testing.assert_allclose(covered, expected, rtol=1e-6)  # Word 6 repeats but is not the source's: untouched.
  np.testing.assert_allclose(x0_BLD, jax.nn.softmax(expected, axis=-1) @ table_VD, rtol=1e-6)


def test_source_coverage_copies_the_source_more_often_in_generation_and_refinement(workdirs):
  import diffusion_lm
  from diffusion_lm import control
  pipe = diffusion_lm.load(workdirs["conditional"])
  words = pipe.tokenizer.word_mask()
  assert not words[[layout.PAD_ID, layout.EOS_ID, layout.BOS_ID, layout.UNK_ID]].any()
  assert words[pipe.tokenizer.encode("name7")].all() and not words[pipe.tokenizer.encode(".")].any()
  plain = pipe.generate(NAMES, steps=20)
  pipe.config.sample.source_coverage = 4.0
  covered = pipe.generate(NAMES, steps=20)
  assert covered != plain  # The setting reaches the compiled sampler.
  assert all(output.endswith(" is here .") for output in covered), covered  # Still the targets' shape.
  copied = lambda outputs: sum(output == TARGET.format(name) for name, output in zip(NAMES, outputs))
  # The name is the source's one word (measured: 30 of 30 against 15).
  assert copied(covered) > copied(plain), (covered, plain)
  drafts = [TARGET.format(NAMES[(i + 1) % 30]) for i in range(30)]  # Wrong names: refinement applies it too.
  assert copied(pipe.refine(drafts, NAMES, 1.0, steps=20)) > copied(plain), drafts
  pipe.config.model.parameterization = "direct"  # Set after loading: the check reads the config, as the binaries do.
  with pytest.raises(control.ControlError, match="only in a categorical model"):
    pipe.generate(NAMES[:2], steps=20)


def test_complete_keeps_each_draft_and_writes_the_source_word_it_lacks_after_it(workdirs):
  import diffusion_lm
  from diffusion_lm import control
  from diffusion_lm.diffusion_pipeline import missing_source_words
  # Source "5 7 4" (4 a comma): word 7 is expected (count 0.6) and not in the draft; 5 is in it.
  counts_V, words_V = np.array([0, 0, 0, 0, 0.9, 0.8, 0, 0.6, 0.0]), np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
  np.testing.assert_array_equal(missing_source_words(np.array([5, 7, 4, 8]), np.array([5, 6]), counts_V, words_V,
                                                     0.5), [7])  # 8 is a word of the source the model does not expect.
  assert missing_source_words(np.array([5, 7, 4]), np.array([5, 6]), counts_V, words_V, 0.7).size == 0
  pipe = diffusion_lm.load(workdirs["conditional"])
  # Strong: after "is here ." this model has only ever seen the end, so the missing name must outbid ".".
  pipe.config.sample.source_coverage = 20.0
  short = ["is here ."] * len(NAMES)  # Each draft drops the name, the source's one word.
  # This tiny model spreads its t = 1 guess over the names (count < 0.5 for the right one): nothing to add.
  assert pipe.complete(short, NAMES, steps=20) == short
  completed = pipe.complete(short, NAMES, steps=20, min_count=0.0)  # Any source word the draft lacks.
  assert all(output.startswith("is here . ") and len(output.split()) == 4 for output in completed), completed
  # The predicted length (4) leaves one free position, and the coverage prior puts the name there.
  assert sum(output.split()[-1] == name for name, output in zip(NAMES, completed)) >= 20, completed
  full = [TARGET.format(name) for name in NAMES[:4]]
  wrong = [TARGET.format(name) for name in NAMES[1:5]]  # The name is wrong but there is no room left to add one.
  assert pipe.complete(full + wrong + ["name3 is here"], NAMES[:4] * 2 + ["name3"], steps=20, min_count=0.0) == (
      full + wrong + ["name3 is here"])  # Nothing missing, or no room: the drafts come back as they were.
  with pytest.raises(control.ControlError, match="one draft per source"):
    pipe.complete(["is here ."], NAMES[:2])
  with pytest.raises(control.ControlError, match="min_count must be a number >= 0"):
    pipe.complete(full, NAMES[:4], min_count=-1.0)
  with pytest.raises(control.ControlError, match="--steps must be >= 1"):
    pipe.complete(full, NAMES[:4], steps=0)  # Refused even where nothing would be added.


def test_source_guidance_needs_source_dropout(workdirs):
  import diffusion_lm
  from diffusion_lm import control
  pipe = diffusion_lm.load(workdirs["conditional"])
  with pytest.raises(control.ControlError, match="source_dropout"):
    pipe.generate(["name1"], source_guidance=1.0)
  with pytest.raises(control.ControlError, match=">= 0"):
    pipe.generate(["name1"], source_guidance=-1.0)
  pipe.config.data.source_dropout = 0.1  # The code path only: this model never learned to write without a source.
  guided = pipe.generate(NAMES[:4], steps=10, source_guidance=1.0)
  assert all(output.endswith(" is here .") for output in guided), guided
  assert pipe.generate(NAMES[:4], steps=10, source_guidance=0.0) == pipe.generate(NAMES[:4], steps=10)


def test_generated_targets_copy_the_source_and_keep_it_unchanged(workdirs):
  import diffusion_lm
  from diffusion_lm import control
  pipe = diffusion_lm.load(workdirs["conditional"])
  outputs = pipe.generate(NAMES, steps=20)
  # A 300-step tiny model copies the name a third of the time or more (chance: 1 in 30), always in the target's form.
  assert sum(output == TARGET.format(name) for name, output in zip(NAMES, outputs)) >= 10, outputs
  assert all(output.endswith(" is here .") for output in outputs), outputs
  plan = control.conditional_plan(pipe.tokenizer, pipe.config.data.seq_len, "name3")
  rows = pipe.sample_tokens(4, 10, 0, anchor_tokens=np.stack([plan.tokens_L] * 4),
                            anchor_mask=np.stack([plan.mask_L] * 4), anchor_words_only=np.stack([plan.words_only_L] * 4))
  np.testing.assert_array_equal(rows[:, :plan.start], np.stack([plan.tokens_L[:plan.start]] * 4))
  # Target controls count from the target's first token.
  assert all(text.split()[1] == "is" and len(text.split()) == 4
             for text in pipe.generate(["name5"], num_samples=2, steps=10, anchors={1: "is"}, length=4))
  # Refining wrong drafts at full strength writes for the source, as `generate` does; at 0 returns the drafts.
  drafts = [TARGET.format(NAMES[(i + 1) % 30]) for i in range(30)]
  assert pipe.refine(drafts[:2], NAMES[:2], 0.0) == drafts[:2]
  assert pipe.refine(["zyzzyva is here ."], ["name2"], 0.0) == ["<unk> is here ."]  # A model's draft may hold unk.
  refined = pipe.refine(drafts, NAMES, 1.0, steps=20)
  assert sum(output == TARGET.format(name) for name, output in zip(NAMES, refined)) >= 10, refined


def test_the_ar_twin_counts_only_target_tokens_and_continues_the_source(copy_corpus, workdirs):
  import diffusion_lm
  from diffusion_lm import kinds, scoring, workdir as workdir_lib
  from diffusion_lm.models import autoregressive
  config = copy_config(copy_corpus, "autoregressive", True)
  loaded = workdir_lib.load_checkpoint(workdirs["ar"])
  rows = jnp.asarray(np.stack([layout.layout_pair(loaded.tokenizer.encode("name4"),
                                                  loaded.tokenizer.encode("name4 is here ."), 12)] * 2))
  logits = loaded.model.apply({"params": loaded.params}, rows)
  nll_BL, _ = autoregressive.token_nll(logits, rows)
  target_BL = ~layout.source_mask(rows) & (rows != 0)
  expected = float(jnp.sum(jnp.where(target_BL, nll_BL, 0)) / jnp.sum(target_BL))
  loss, _ = kinds.get("autoregressive").make_loss_fn(loaded.model, config)(loaded.params, rows, None, False)
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  per_row = scoring.autoregressive_row_fn(loaded.model, config)(loaded.params, rows, None)
  assert per_row["num_tokens"].tolist() == [5.0, 5.0]  # name4 is here . EOS: not the source, not its BOS.
  outputs = diffusion_lm.load(workdirs["ar"]).generate(NAMES)
  assert sum(output == TARGET.format(name) for name, output in zip(NAMES, outputs)) >= 10, outputs


def test_eval_binary_scores_the_target_given_the_source(workdirs):
  from diffusion_lm import evaluate
  quiet = lambda workdir: evaluate.evaluate(workdir, write=False, progress=False, max_sequences=64, batch_size=32)
  ar, bound = quiet(workdirs["ar"]), quiet(workdirs["conditional"])
  assert ar["num_tokens"] == bound["num_tokens"] == 64 * 5  # The same target tokens for both kinds.
  assert bound["nll_nats_per_token"] > ar["nll_nats_per_token"] - 3 * bound["stderr"]
  report = evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, max_sources=16, write=False)
  assert report["num_sources"] <= 16 and report["bleu"] > 50, report
  picked = evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, max_sources=16, write=False, mbr=3)
  assert picked["settings"]["report_name"] == "generate_test_mbr3" and picked["bleu"] > 50, picked
  floored = evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, max_sources=16, write=False,
                                        model_time_floor=0.5)
  assert floored["settings"]["report_name"] == "generate_test_floor0.5"
  assert floored["settings"]["model_time_floor"] == 0.5
  covered = evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, max_sources=16, write=False,
                                         source_coverage=4.0)
  assert covered["settings"]["report_name"] == "generate_test_coverage4" and covered["bleu"] > 50, covered
  assert covered["settings"]["source_coverage"] == 4.0
  completed = evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, max_sources=16, write=False,
                                           draft_workdir=workdirs["ar"], complete=True)
  assert completed["settings"]["report_name"] == "generate_test_complete" and completed["bleu"] > 50, completed
  assert completed["settings"]["complete"]
  from diffusion_lm.errors import UserError
  with pytest.raises(UserError, match="--complete extends AR drafts"):
    evaluate.evaluate_generation(workdirs["conditional"], "test", write=False, complete=True)
  with pytest.raises(UserError, match="source_dropout"):  # Refused before any sampling.
    evaluate.evaluate_generation(workdirs["conditional"], "test", steps=20, write=False, source_guidance=1.0)
  with pytest.raises(UserError, match="does not apply to AR drafts or an autoregressive"):
    evaluate.evaluate_generation(workdirs["ar"], "test", write=False, source_guidance=1.0)
  with pytest.raises(UserError, match="does not apply to AR drafts or an autoregressive"):
    evaluate.evaluate_generation(workdirs["ar"], "test", write=False, mbr=3)
  with pytest.raises(UserError, match="model_time_floor=2.0 is out of range"):
    evaluate.evaluate_generation(workdirs["conditional"], "test", write=False, model_time_floor=2.0)
  with pytest.raises(UserError, match="--mbr=0: give the number of candidates"):
    evaluate.evaluate_generation(workdirs["conditional"], "test", write=False, mbr=0)


def test_two_devices_give_the_same_outputs_and_bound_as_one(workdirs):
  script = ("import json, sys, diffusion_lm; from diffusion_lm import evaluate; import jax\n"
            "assert jax.device_count() == 2\n"
            "pipe = diffusion_lm.load(sys.argv[1])\n"
            "out = pipe.generate([f'name{i}' for i in range(6)], steps=10, seed=3)\n"
            "bound = evaluate.evaluate(sys.argv[1], write=False, progress=False, max_sequences=32, batch_size=32)\n"
            "print(json.dumps({'out': out, 'nll': bound['nll_nats_per_token']}))\n")
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"}
  run = subprocess.run([sys.executable, "-c", script, workdirs["conditional"]], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  two = json.loads(run.stdout.strip().splitlines()[-1])
  import diffusion_lm
  from diffusion_lm import evaluate
  one_out = diffusion_lm.load(workdirs["conditional"]).generate([f"name{i}" for i in range(6)], steps=10, seed=3)
  one_bound = evaluate.evaluate(workdirs["conditional"], write=False, progress=False, max_sequences=32, batch_size=32)
  assert two["out"] == one_out
  assert two["nll"] == pytest.approx(one_bound["nll_nats_per_token"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_bleu_and_chrf_are_sacrebleus_with_any_number_of_references():
  from diffusion_lm import text_metrics
  # By hand: every n-gram matches, brevity penalty exp(1 − 6/5) for a 5-word hypothesis, 6-word reference.
  assert text_metrics.corpus_bleu(["a b c d e"], [["a b c d e f"]]) == pytest.approx(np.exp(1 - 6 / 5))
  hypotheses = ["The Eagle is a pub near the river.", "A cheap cafe", "Zizzi serves Italian food in the centre ."]
  references = [["The Eagle is a riverside pub.", "The Eagle pub is by the river."], ["A cheap coffee shop."],
                ["Zizzi serves Italian food .", "In the city centre Zizzi serves Italian food.", "Zizzi: Italian."]]
  streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(3)]
  expected = sacrebleu.corpus_bleu([h.lower() for h in hypotheses], [[r and r.lower() for r in s] for s in streams])
  assert 100 * text_metrics.corpus_bleu(hypotheses, references) == pytest.approx(expected.score)
  assert text_metrics.corpus_chrf(hypotheses, references) == pytest.approx(sacrebleu.corpus_chrf(hypotheses, streams).score)


def test_slot_errors_count_missing_and_added_values():
  from diffusion_lm import text_metrics
  mr = {"name": "The Eagle", "eatType": "coffee shop", "food": "French", "priceRange": "cheap",
        "familyFriendly": "no", "near": "Burger King"}
  good = "The Eagle is a cheap coffee shop near Burger King serving French food . It is not family friendly ."
  assert text_metrics.slot_errors(mr, good, ["Zizzi"]) == {"slots": 6, "missing": 0, "added": 0}
  bad = "The Eagle is a coffee shop near Zizzi serving Italian food in the riverside area ."
  errors = text_metrics.slot_errors(mr, bad, ["Zizzi", "Burger King"])
  # Missing: French, cheap, not family friendly, Burger King; added: Zizzi, Italian, riverside.
  assert errors == {"slots": 6, "missing": 4, "added": 3}
  # Over a corpus the known names are those of its MRs: Zizzi is not one here, so 4 + 2 errors in 12 slots.
  assert text_metrics.slot_error_rate([mr, mr], [good, bad])["slot_error_rate"] == pytest.approx(6 / 12)


# ---------------------------------------------------------------------------------------------
# Sequence-level distillation: the student trains on the AR twin's outputs
# ---------------------------------------------------------------------------------------------


def test_distillation_trains_on_one_teacher_output_per_source_and_caches_it(copy_corpus, workdirs, tmp_path,
                                                                           monkeypatch):
  from diffusion_lm import checkpoint, distillation, pipeline
  from diffusion_lm.data import batching, datasets
  from diffusion_lm.train import train
  encoded = []
  encode_corpus = batching.encode_corpus
  monkeypatch.setattr(batching, "encode_corpus", lambda texts, *args: encoded.append(texts) or encode_corpus(
      texts, *args))
  student = str(tmp_path / "student")
  train(copy_config(copy_corpus, "diffusion", True, steps=2, **{"data.distill_from": workdirs["ar"]}), student)
  with open(copy_corpus["pairs", "train"]) as f:
    sources = list(dict.fromkeys(line.split("\t")[0] for line in f if line.strip()))
  assert len(sources) == len(NAMES)  # 2,000 training pairs, 30 distinct sources.
  outputs = pipeline.load(workdirs["ar"]).generate(sources)
  expected = [text for text, output in zip(datasets.join_pairs(sources, outputs), outputs) if output.strip()]
  assert len(expected) > len(NAMES) // 2
  with open(os.path.join(student, distillation.DISTILLED_FILE)) as f:
    assert f.read().splitlines() == expected
  assert encoded[0] == expected  # The training rows: one teacher output per source, not the 2,000 pairs.
  with open(copy_corpus["pairs", "validation"]) as f:
    assert encoded[1] == [line.strip() for line in f if line.strip()]  # Validation keeps its references.
  # The student keeps the data's vocabulary, which is the teacher's: it can refine the teacher's drafts.
  tokenizer = lambda workdir: checkpoint.file_sha256(os.path.join(workdir, "tokenizer.model"))
  assert tokenizer(student) == tokenizer(workdirs["ar"])
  # A resumed run reads the cache back and needs no teacher.
  assert distillation.distilled_texts([], str(tmp_path / "gone"), student) == expected
  # A source the teacher cannot read (a word outside its vocabulary) keeps its own pairs.
  unreadable = ["Zyzzyva\tZyzzyva is here .", "Zyzzyva\tZyzzyva is there ."]
  other = str(tmp_path / "other")
  os.makedirs(other)
  first = outputs[sources.index(NAMES[0])]
  assert distillation.distilled_texts([f"{NAMES[0]}\tx"] + unreadable, workdirs["ar"], other) == [
      *datasets.join_pairs([NAMES[0]] if first.strip() else [], [first]), *unreadable]


def test_a_distillation_teacher_must_be_a_conditional_ar_workdir(copy_corpus, workdirs, tmp_path):
  from diffusion_lm import distillation
  from diffusion_lm.errors import UserError
  with pytest.raises(UserError, match="distill_from=.*no checkpoint"):
    distillation.check_teacher(str(tmp_path / "none"), str(tmp_path / "student"))
  from diffusion_lm.train import train  # A UserError is one line and exit 2 in every binary (test_reliability.py).
  with pytest.raises(UserError, match="distill_from=.*holds a diffusion model.*conditional autoregressive"):
    train(copy_config(copy_corpus, "diffusion", True, **{"data.distill_from": workdirs["conditional"]}),
          str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # Checked before any work: no workdir made.


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# ---------------------------------------------------------------------------------------------


def run_binary(module, *args):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT}
  return subprocess.run([sys.executable, "-m", f"diffusion_lm.{module}", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *phrases):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr[-2000:]


def test_the_eval_binary_refuses_bad_generation_options(workdirs):
  result = run_binary("evaluate", f"--workdir={workdirs['conditional']}", "--mbr=3")
  assert_one_line_error(result, "--mbr applies to --generate")
  result = run_binary("evaluate", f"--workdir={workdirs['conditional']}", "--generate", "--model_time_floor=2")
  assert_one_line_error(result, "model_time_floor=2.0 is out of range")
  result = run_binary("evaluate", f"--workdir={workdirs['ar']}", "--generate", "--model_time_floor=0.9")
  assert_one_line_error(result, "model_time_floor is the continuous diffusion sampler's")
  result = run_binary("evaluate", f"--workdir={workdirs['ar']}", "--generate", "--predicted_length")
  assert_one_line_error(result, "predicted_length reads a target's length off a conditional continuous diffusion")
  result = run_binary("evaluate", f"--workdir={workdirs['conditional']}", "--source_coverage=1")
  assert_one_line_error(result, "--source_coverage applies to --generate")
  result = run_binary("evaluate", f"--workdir={workdirs['ar']}", "--generate", "--source_coverage=1")
  assert_one_line_error(result, "source_coverage steers a conditional continuous diffusion model")
  result = run_binary("evaluate", f"--workdir={workdirs['conditional']}", "--complete")
  assert_one_line_error(result, "--complete applies to --generate")
  result = run_binary("evaluate", f"--workdir={workdirs['conditional']}", "--generate", "--complete")
  assert_one_line_error(result, "--complete extends AR drafts", "--draft_workdir")


def test_the_sample_binary_generates_for_sources_and_refuses_bad_ones(copy_corpus, workdirs, tmp_path):
  sources = tmp_path / "sources.txt"
  sources.write_text("name1\nname2\n\nname3\n")
  output = tmp_path / "out.txt"
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", f"--source_file={sources}",
                      f"--output={output}", "--steps=20")
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(output.read_text().splitlines()) == 3
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=" + " ".join(["name1"] * 12))
  assert_one_line_error(result, "leaves no room for a target", "seq_len=12")
  result = run_binary("sample", f"--workdir={workdirs['unconditional']}", "--source=name1")
  assert_one_line_error(result, "trained without sources")
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--num_samples=2")
  assert_one_line_error(result, "give --source", "source_dropout")
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1", "--source_guidance=1")
  assert_one_line_error(result, "source_guidance needs", "source_dropout=0.1")
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source_guidance=1")
  assert_one_line_error(result, "--source_guidance steers", "give --source")
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1",
                      f"--draft_workdir={workdirs['ar']}", "--strength=0.5", "--steps=10")
  assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1",
                      f"--draft_workdir={workdirs['ar']}", "--complete", "--steps=10")
  assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1", "--complete")
  assert_one_line_error(result, "--complete extends AR drafts", "--draft_workdir")
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1",
                      f"--draft_workdir={workdirs['ar']}", "--complete", "--mbr=3")
  assert_one_line_error(result, "--mbr picks among whole samples")
  other = str(tmp_path / "other_ar")  # Another vocabulary: another tokenizer.
  from diffusion_lm.train import train
  train(copy_config(copy_corpus, "autoregressive", True, steps=2, **{"data.vocab_size": 20}), other)
  result = run_binary("sample", f"--workdir={workdirs['conditional']}", "--source=name1",
                      f"--draft_workdir={other}", "--strength=0.5")
  assert_one_line_error(result, "another tokenizer")


def test_a_pair_file_without_a_tab_is_one_line(copy_corpus, tmp_path):
  broken = tmp_path / "broken.txt"
  broken.write_text("name1\tname1 is here .\nname2 is here .\n")
  result = run_binary("train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
                      "--config.data.name=text_files", f"--config.data.train_files={broken}",
                      f"--config.data.validation_files={broken}", "--config.data.conditional=True")
  assert_one_line_error(result, "line 2", "no tab")
  assert not (tmp_path / "w").exists()  # Checked before any work: no workdir made.


def test_conditional_configs_are_checked():
  from diffusion_lm import config_utils
  from diffusion_lm.errors import ConfigError
  for overrides, phrase in (({"data.mode": "pack"}, "mode=pad"), ({"model.kind": "masked"}, "does not train on"),
                            ({"data.conditional": False, "data.source_dropout": 0.1}, "needs --config.data.conditional"),
                            ({"data.conditional": False, "sample.predicted_length": True}, "predicted_length reads"),
                            ({"model.kind": "autoregressive", "sample.predicted_length": True},
                             "predicted_length reads"),
                            ({"data.conditional": False, "sample.source_coverage": 1.0}, "source_coverage steers"),
                            ({"model.parameterization": "direct", "sample.source_coverage": 1.0},
                             "source_coverage steers"),
                            ({"sample.source_coverage": -1.0}, "source_coverage=-1.0 is out of range"),
                            ({"data.conditional": False, "data.distill_from": "/tmp/ar"}, "distill_from replaces")):
    with pytest.raises(ConfigError, match=phrase):
      config_utils.validate(tiny_config(**{"data.conditional": True, **overrides}))
