"""End to end on the tiny config: train → checkpoint → resume → sample, and bad input."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_config
from diffusion_lm.errors import ConfigError


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_losses(records):
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def run_binary(module, *args, env_extra=None):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny run of 20 steps with checkpoints at 10 and 20."""
  from diffusion_lm.train import train
  workdir = str(tmp_path_factory.mktemp("e2e_run"))
  result = train(tiny_config(), workdir)
  assert result["step"] == 20
  return workdir


def test_training_writes_checkpoints_metrics_and_samples(trained_workdir):
  assert sorted(os.listdir(os.path.join(trained_workdir, "checkpoints"))) >= ["10", "20"]
  losses = train_losses(read_metrics(trained_workdir))
  assert sorted(losses) == [5, 10, 15, 20]
  assert all(np.isfinite(list(losses.values())))
  for step in (10, 20):
    with open(os.path.join(trained_workdir, "samples", f"step_{step}.txt")) as f:
      assert len(f.read().strip().splitlines()) == 2
  assert os.path.exists(os.path.join(trained_workdir, "tokenizer.model"))


def test_resume_continues_with_identical_losses(trained_workdir, tmp_path):
  from diffusion_lm.train import train
  uninterrupted = train_losses(read_metrics(trained_workdir))
  # Simulate a run that died after its step-10 checkpoint: copy the workdir without step 20.
  resumed_dir = str(tmp_path / "resumed")
  shutil.copytree(trained_workdir, resumed_dir)
  shutil.rmtree(os.path.join(resumed_dir, "checkpoints", "20"))
  os.remove(os.path.join(resumed_dir, "metrics.jsonl"))
  result = train(tiny_config(), resumed_dir)
  assert result["step"] == 20
  resumed = train_losses(read_metrics(resumed_dir))
  assert sorted(resumed) == [15, 20], "the step counter continues from 10"
  for step in (15, 20):
    np.testing.assert_allclose(resumed[step], uninterrupted[step], rtol=1e-6)


def test_finished_run_is_not_retrained(trained_workdir):
  from diffusion_lm.train import train
  before = len(read_metrics(trained_workdir))
  assert train(tiny_config(), trained_workdir)["step"] == 20
  assert len(read_metrics(trained_workdir)) == before


def test_sample_binary_and_load_agree(trained_workdir, tmp_path):
  import diffusion_lm
  output = tmp_path / "samples.txt"
  result = run_binary("diffusion_lm.sample", f"--workdir={trained_workdir}", "--num_samples=3", "--steps=5",
                      "--seed=7", f"--output={output}")
  assert result.returncode == 0, result.stderr[-2000:]
  printed = result.stdout.strip().splitlines()
  assert len(printed) == 3
  assert output.read_text().strip().splitlines() == printed
  pipe = diffusion_lm.load(trained_workdir)
  assert pipe.step == 20
  assert pipe.sample(3, steps=5, seed=7) == printed, "same seed, same samples"


def test_sample_binary_takes_sample_settings(trained_workdir):
  import diffusion_lm
  settings = ["--sample_setting=sampler=renoise", "--sample_setting=renoise_correlation=-0.6"]
  result = run_binary("diffusion_lm.sample", f"--workdir={trained_workdir}", "--num_samples=3", "--steps=5",
                      "--seed=7", *settings)
  assert result.returncode == 0, result.stderr[-2000:]
  pipe = diffusion_lm.load(trained_workdir)
  pipe.config.sample.sampler, pipe.config.sample.renoise_correlation = "renoise", -0.6
  assert pipe.sample(3, steps=5, seed=7) == result.stdout.strip().splitlines()
  assert len(pipe.sample(3, steps=5, seed=7, sampler="ancestral")) == 3  # Another sampler ignores ρ, as --sampler does.
  result = run_binary("diffusion_lm.sample", f"--workdir={trained_workdir}", "--sample_setting=renoise_correlation=-2")
  assert_one_line_error(result, "sample.renoise_correlation=-2.0 is out of range")
  assert result.returncode == 2


@pytest.mark.parametrize("setting, needle", [
    ("renoise_correlation=-2", "renoise_correlation=-2.0 is out of range"),
    ("steps=many", "'many' is not of type int"),
    ("draw_tokens=maybe", "'maybe' is not a bool"),
    ("stepz=50", "FIELD one of config.sample's: clamp, draw_tokens"),
    ("steps", "FIELD one of config.sample's"),
])
def test_bad_sample_settings_name_the_problem(setting, needle):
  from configs import e2e
  from diffusion_lm import config_utils
  with pytest.raises(ConfigError, match=re.escape(needle)):
    config_utils.apply_sample_settings(e2e.get_config(), [setting])
  config = config_utils.apply_sample_settings(e2e.get_config(), ["renoise_correlation=0", "draw_tokens=true"])
  assert (config.sample.renoise_correlation, config.sample.draw_tokens) == (0.0, True)


def assert_one_line_error(result, *needles):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  for needle in needles:
    assert needle in result.stderr, result.stderr[-2000:]


def test_unknown_config_key_is_rejected(tmp_path):
  result = run_binary("diffusion_lm.train", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                      "--config.train.num_stepz=3")
  assert_one_line_error(result, "num_stepz")


def test_wrong_value_type_is_rejected(tmp_path):
  result = run_binary("diffusion_lm.train", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                      "--config.train.num_steps=many")
  assert_one_line_error(result, "num_steps")


def test_invalid_value_is_rejected(tmp_path):
  result = run_binary("diffusion_lm.train", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                      "--config.diffusion.schedule=wiggly")
  assert_one_line_error(result, "error: --config.diffusion.schedule='wiggly' is not valid")
  assert result.returncode == 2


def test_missing_data_file_is_rejected(tmp_path):
  result = run_binary("diffusion_lm.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
                      "--config.data.name=text_files", f"--config.data.train_files={tmp_path / 'nope.txt'}")
  assert_one_line_error(result, "nope.txt")
  assert result.returncode == 2


def test_checkpoint_of_another_model_shape_is_rejected(trained_workdir, tmp_path):
  workdir = tmp_path / "other"
  shutil.copytree(trained_workdir, workdir)
  result = run_binary("diffusion_lm.train", "--config=configs/tiny.py", f"--workdir={workdir}",
                      "--config.model.d_model=48", "--config.train.num_steps=30")
  assert_one_line_error(result, "different model", "model.d_model")
  assert result.returncode == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted(os.listdir(os.path.join(trained_workdir, "checkpoints")))


def test_sampling_an_empty_workdir_is_a_clear_error(tmp_path):
  result = run_binary("diffusion_lm.sample", f"--workdir={tmp_path}")
  assert_one_line_error(result, "no checkpoint")


def test_sampling_settings_changed_on_a_loaded_pipeline_take_effect(trained_workdir):
  import diffusion_lm
  pipe = diffusion_lm.load(trained_workdir)
  default = pipe.sample_tokens(3, steps=5, seed=7)
  pipe.config.sample.draw_tokens = True  # After a compiled call with the default settings.
  drawn, again = pipe.sample_tokens(3, steps=5, seed=7), pipe.sample_tokens(3, steps=5, seed=7)
  np.testing.assert_array_equal(drawn, again)
  assert not np.array_equal(drawn, default), "draw_tokens must reach the sampler"
  pipe.config.sample.draw_tokens = False
  np.testing.assert_array_equal(pipe.sample_tokens(3, steps=5, seed=7), default)


def test_silent_acceptance_cases_now_say_something(trained_workdir, tmp_path, capsys):
  """Issue 19's item 8: each decided as refuse, warn, or allow with a line."""
  from diffusion_lm import evaluation
  from diffusion_lm.errors import CheckpointError
  from diffusion_lm.train import train
  # Another objective on a resumed workdir: refused, naming both.
  copy = str(tmp_path / "copy")
  shutil.copytree(trained_workdir, copy)
  with pytest.raises(CheckpointError, match="trained with --config.diffusion.objective='e2e', not 'cdcd'"):
    train(tiny_config(**{"diffusion.objective": "cdcd", "train.num_steps": 30}), copy)
  # num_steps=0: the initial model is saved (step 0), with a line saying so.
  fresh = str(tmp_path / "fresh")
  train(tiny_config(**{"train.num_steps": 0, "train.num_samples": 0}), fresh)
  assert "nothing to train; saved the initial model as step 0" in capsys.readouterr().out
  assert os.listdir(os.path.join(fresh, "checkpoints")) == ["0"]
  # A vocabulary too small for the text: warned.
  train(tiny_config(**{"data.vocab_size": 8, "train.num_steps": 1, "train.num_samples": 0}), str(tmp_path / "tiny_vocab"))
  assert "of the training tokens are <unk> with --config.data.vocab_size=8" in capsys.readouterr().err
  # Evaluating text longer than the model's rows: warned.
  long_text = tmp_path / "long.txt"
  long_text.write_text(" ".join(["the pub"] * 20) + "\n")
  evaluation.evaluate(trained_workdir, text_file=str(long_text), num_t_samples=2, batch_size=8, write=False,
                      progress=False)
  assert "1 of 1 sequences are longer than the model's seq_len=16 and were cut" in capsys.readouterr().err


def test_a_reader_with_every_checkpoint_corrupt_says_so_without_starting_afresh(trained_workdir, tmp_path, capsys):
  import glob
  import diffusion_lm
  from diffusion_lm.errors import CheckpointError
  copy = tmp_path / "copy"
  shutil.copytree(trained_workdir, copy)
  for step in ("10", "20"):
    victim = max(glob.glob(f"{copy}/checkpoints/{step}/state/**/d/*", recursive=True), key=os.path.getsize)
    os.truncate(victim, os.path.getsize(victim) // 2)
  with pytest.raises(CheckpointError, match="every checkpoint in .* is corrupt"):
    diffusion_lm.load(str(copy))
  warnings = capsys.readouterr().err
  assert "no older checkpoint is left" in warnings and "starting afresh" not in warnings
  assert os.path.isdir(copy / "checkpoints" / "20"), "a reader never moves checkpoints"
