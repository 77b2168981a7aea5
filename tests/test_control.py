"""Control on a tiny model: anchors, templates, length, editing, guidance, MBR and bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny diffusion run (20 steps: guidance needs a denoiser that reacts to z) with a tiny classifier."""
  from diffusion_lm.train import train
  from diffusion_lm.classifier_trainer import train_classifier
  workdir = str(tmp_path_factory.mktemp("control_run"))
  train(tiny_config(**{"train.num_samples": 0, "train.num_steps": 20}), workdir)
  train_classifier(workdir, num_steps=40, batch_size=32, d_model=16, num_layers=1, log=lambda line: None)
  return workdir


@pytest.fixture(scope="module")
def pipe(workdir):
  import diffusion_lm
  return diffusion_lm.load(workdir)


def test_anchored_tokens_appear_exactly_where_pinned_in_every_sample(pipe):
  from diffusion_lm import control
  plan = control.build_plan(pipe.tokenizer, pipe.config.data.seq_len, anchors={0: "The", 3: "pub", 6: "."},
                            length=9)
  # Batch 4 and 5 steps throughout, so the tests share one compiled sampler.
  tokens, mask = plan.batch(4)
  rows = pipe.sample_tokens(4, steps=5, seed=3, anchor_tokens=tokens, anchor_mask=mask,
                            anchor_words_only=np.stack([plan.words_only_L] * 4))
  np.testing.assert_array_equal(rows[:, plan.mask_L], tokens[:, plan.mask_L])
  assert (rows[:, 9] == pipe.tokenizer.eos_id).all() and (rows[:, 10:] == pipe.tokenizer.pad_id).all()
  for text in pipe.infill(anchors={0: "The", 3: "pub", 6: "."}, length=9, num_samples=4, steps=5, seed=3):
    words = text.split()
    assert len(words) == 9 and (words[0], words[3], words[6]) == ("The", "pub", "."), text


def test_template_fixed_words_survive(pipe):
  template = "The __ is a __ __ near __ ."
  texts = pipe.infill(template, num_samples=4, steps=5, seed=1)
  assert len(texts) == 4
  fixed = ["The", "is", "a", "near", "."]
  for text in texts:
    words = iter(text.split())
    assert all(any(w == f for w in words) for f in fixed), (template, text)  # In order.
    assert len(text.split()) <= 9


def test_prefix_suffix_and_mbr(pipe):
  texts = pipe.infill(prefix="The", suffix="near the riverside .", length=10, num_samples=2, steps=5, mbr=2)
  assert len(texts) == 2
  for text in texts:
    assert text.startswith("The ") and text.endswith("near the riverside ."), text


def test_mbr_picks_the_consensus_candidate():
  from diffusion_lm import text_metrics
  candidates = ["a pub near the river .", "cheese cheese", "a pub near the river in the centre .", "a pub ."]
  assert text_metrics.mbr_select(candidates) in (0, 2)
  assert text_metrics.corpus_bleu(["The Eagle is a pub ."], [["the eagle is a pub."]]) == pytest.approx(1.0)


def test_editing_at_strength_zero_returns_the_draft(pipe):
  draft = "The pub is near the riverside ."
  assert pipe.edit(draft, 0.0, num_samples=2, steps=5) == [draft, draft]


def test_editing_keeps_pinned_words(pipe):
  texts = pipe.edit("The pub is near the riverside .", 0.8, num_samples=4, steps=5, seed=2, keep=["pub", 0])
  for text in texts:
    assert text.split()[:2] == ["The", "pub"], text


def test_guidance_raises_the_classifier_score(pipe, workdir):
  from diffusion_lm.diffusion.model_fns import bind_denoiser
  from diffusion_lm.semantic_classifier import SemanticClassifier
  classifier = SemanticClassifier.load(workdir)
  pairs = classifier.parse(["food=Italian"])
  guide = classifier.guidance(pairs, batch_size=1, fluency_weight=0.001, step_size=0.5, num_steps=3)
  embedding = bind_denoiser(pipe.model, pipe.params).embedding_table
  unguided = pipe.sample_tokens(12, steps=5, seed=5)
  guided = pipe.sample_tokens(12, steps=5, seed=5, guidance=guide)
  unguided_score = classifier.score_tokens(unguided, embedding, pairs).mean()
  guided_score = classifier.score_tokens(guided, embedding, pairs).mean()
  assert guided_score > unguided_score + 0.05, (guided_score, unguided_score)


def test_best_of_keeps_the_candidate_the_classifier_rates_highest(pipe):
  guide = pipe.guidance(["food=Italian"], fluency_weight=0.001, step_size=0.5)
  # best_of=4 for one sample draws the same 4 rows as 4 samples with the same seed and steps.
  candidates = pipe.sample(4, steps=5, seed=7, guidance=guide)
  chosen = pipe.sample(1, steps=5, seed=7, guidance=guide, best_of=4)[0]
  scores = pipe.control_scores(guide, candidates)
  assert chosen in candidates and len(set(np.round(scores, 4))) > 1, (candidates, scores)
  assert pipe.control_scores(guide, [chosen])[0] == pytest.approx(scores.max(), abs=1e-4), (chosen, candidates, scores)


@pytest.mark.parametrize("call, needles", [
    (lambda p: p.infill(" ".join(["__"] * 40), steps=2), ["need 40 positions", "holds 15"]),
    (lambda p: p.infill(anchors={20: "pub"}, steps=2), ["need 21 positions"]),
    (lambda p: p.infill("The Zyzzyva is a __ .", steps=2), ["'Zyzzyva'"]),
    (lambda p: p.edit("A pub .", 1.5), ["strength=1.5", "[0, 1]"]),
    (lambda p: p.edit("A pub .", -0.1), ["outside [0, 1]"]),
    (lambda p: p.sample(2, steps=2, length=99), ["length=99"]),
    (lambda p: p.guidance(["cuisine=Italian"]), ["unknown control field 'cuisine'", "food"]),
    (lambda p: p.guidance(["food=Klingon"]), ["unknown value 'Klingon' for food", "Italian"]),
    (lambda p: p.sample(2, steps=2, best_of=2), ["best_of", "give guidance"]),
    (lambda p: p.sample(2, steps=2, guidance=["food=Italian"], best_of=2, mbr=2), ["mbr", "best_of"]),
    # The API checks what the sample binary checks, in its words (issue 19).
    (lambda p: p.sample(num_samples=-2), ["--num_samples and --steps must be >= 1", "num_samples=-2"]),
    (lambda p: p.sample(2, steps=-5), ["--num_samples and --steps must be >= 1", "steps=-5"]),
    (lambda p: p.sample(2, steps=0), ["steps=0"]),
    (lambda p: p.infill(anchors={"3": "pub"}, length=6), ["anchor positions are 0-based ints"]),
    (lambda p: p.edit(None, 0.5), ["the draft to edit must be a string"]),
    (lambda p: p.infill("The __ .", blank=""), ["--blank=''", "no spaces"]),
])
def test_bad_input_is_one_clear_line(pipe, call, needles):
  from diffusion_lm.errors import UserError
  with pytest.raises(UserError) as error:
    call(pipe)
  message = str(error.value)
  assert "\n" not in message
  for needle in needles:
    assert needle in message, message


def test_load_checks_its_arguments(workdir):
  import diffusion_lm
  from diffusion_lm.errors import UserError
  with pytest.raises(UserError, match="the workdir must be a path"):
    diffusion_lm.load(None)
  with pytest.raises(UserError, match="step must be an int"):
    diffusion_lm.load(workdir, step="20")


def test_sample_binary_controls(workdir):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT}
  run = lambda *args: subprocess.run([sys.executable, "-m", "diffusion_lm.sample", f"--workdir={workdir}",
                                      "--steps=3", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                                     text=True, timeout=300)
  result = run("--infill=The __ is a __ .", "--num_samples=2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "read only" not in result.stderr, "orbax's read-only notices are not shown to a reader"
  assert [line.split()[0] for line in result.stdout.strip().splitlines()] == ["The", "The"]
  result = run("--infill=The Zyzzyva is __ .")
  assert result.returncode == 2 and "Traceback" not in result.stderr and "'Zyzzyva'" in result.stderr
  # Guidance with the classifier's pick of 2, at a score temperature set from the command line.
  result = run("--control=food=Italian", "--best_of=2", "--temperature=0.7", "--num_samples=2", "--seed=4")
  assert result.returncode == 0, result.stderr[-2000:]
  import diffusion_lm
  pipe = diffusion_lm.load(workdir)
  pipe.config.sample.temperature = 0.7
  expected = pipe.sample(2, steps=3, seed=4, guidance=["food=Italian"], best_of=2)
  assert result.stdout.strip().splitlines() == expected
  result = run("--temperature=0")  # Greedy is an autoregressive notion; a score temperature must be > 0.
  assert result.returncode == 2 and "Traceback" not in result.stderr and "score temperature" in result.stderr
  result = run(f"--output={workdir}")  # A directory: refused before any sampling.
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert f"--output={workdir} is a directory; give a file path" in result.stderr


def test_a_damaged_classifier_is_one_line_naming_the_file(workdir, tmp_path):
  import shutil
  from diffusion_lm.errors import UserError
  from diffusion_lm.semantic_classifier import CLASSIFIER_DIR, META_FILE, PARAMS_FILE, SemanticClassifier
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(workdir, CLASSIFIER_DIR), copy / CLASSIFIER_DIR)
  assert SemanticClassifier.load(str(copy)).label_space.fields  # The intact copy loads.
  params = copy / CLASSIFIER_DIR / PARAMS_FILE
  params.write_bytes(params.read_bytes()[:100])
  with pytest.raises(UserError, match=f"{PARAMS_FILE} does not match its checksum.*retrain it"):
    SemanticClassifier.load(str(copy))
  (copy / CLASSIFIER_DIR / META_FILE).write_text("{not json")
  with pytest.raises(UserError, match=f"{META_FILE} is unreadable.*retrain it"):
    SemanticClassifier.load(str(copy))
  assert not os.path.exists(os.path.join(workdir, CLASSIFIER_DIR + ".partial")), "the save left no staging directory"
