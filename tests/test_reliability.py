"""Reliability, end to end: preemption, kills, corrupt checkpoints, NaN and bad input.

Every test runs `python -m diffusion_lm.train` in subprocesses on the tiny model and a small
generated corpus; RELIABILITY.md maps each guarantee to the test here that proves it. All runs
share one config (so one compiled train step, through a shared persistent compilation cache)
and one uninterrupted reference run whose per-step losses the others must reproduce. Under
pytest-xdist the workers build that reference once, under a file lock, and share it.
"""

import contextlib
import fcntl
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_XLA_FLAGS

NUM_STEPS = 60
PREEMPTED_EXIT_CODE = 143  # cli.PREEMPTED_EXIT_CODE; literal so the test reads on its own.
DIVERGED_EXIT_CODE = 3  # cli.DIVERGED_EXIT_CODE.
INTERRUPTED_EXIT_CODE = 130  # cli.INTERRUPTED_EXIT_CODE.
WORDS = ("the a pub cafe restaurant near river city centre serves cheap food family friendly rating "
         "high low price Eagle Mill Wrestlers is in has with and of English Italian coffee shop").split()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """A directory every xdist worker of this session shares, and a lock over it."""
  base = tmp_path_factory.getbasetemp()
  directory = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "reliability_shared"
  directory.mkdir(exist_ok=True)

  @contextlib.contextmanager
  def locked():
    with open(directory / ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      yield directory
  return locked


@pytest.fixture(scope="module")
def env(shared):
  """Subprocess environment: the repo on the path, one compilation cache for every run. No LLVM
  optimisation: it halves compile time here and every run (the reference too) uses it."""
  with shared() as directory:
    return {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_COMPILATION_CACHE_DIR": str(directory / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "XLA_FLAGS": TEST_XLA_FLAGS, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def corpus(shared):
  """(train file, validation file): short random sentences, fast to tokenize and build."""
  rng = random.Random(0)
  paths = []
  with shared() as directory:
    for name, lines in (("train.txt", 300), ("valid.txt", 40)):
      path = directory / name
      if not path.exists():  # Written once: tfds names the dataset after the files' mtimes.
        path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " .\n"
                                for _ in range(lines)))
      paths.append(str(path))
  return tuple(paths)


def train_args(workdir, corpus, **overrides) -> list[str]:
  """Flags of the shared run: every step logged, a checkpoint every 10 steps, no sampling."""
  settings = {"train.num_steps": NUM_STEPS, "train.log_every": 1, "train.eval_every": 1000,
              "train.checkpoint_every": 10, "train.num_samples": 0, "data.name": "text_files",
              "data.train_files": corpus[0], "data.validation_files": corpus[1], **overrides}
  return ["--config=configs/tiny.py", f"--workdir={workdir}"] + [
      f"--config.{key}={value}" for key, value in settings.items()]


class Run:
  """One `diffusion_lm.train` subprocess; output goes to files (a full pipe would block it)."""

  def __init__(self, args, env, log_prefix):
    self.stdout_path, self.stderr_path = f"{log_prefix}.stdout", f"{log_prefix}.stderr"
    with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
      self.process = subprocess.Popen([sys.executable, "-m", "diffusion_lm.train", *args], cwd=REPO_ROOT,
                                      env=env, stdout=stdout, stderr=stderr)

  def wait(self, timeout=300) -> int:
    return self.process.wait(timeout=timeout)

  @property
  def stdout(self) -> str:
    with open(self.stdout_path) as f:
      return f.read()

  @property
  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()

  def tail(self) -> str:
    return (self.stdout[-1500:] + "\n---stderr---\n" + self.stderr[-3000:])


def run_to_end(args, env, log_prefix, timeout=300) -> Run:
  run = Run(args, env, log_prefix)
  run.wait(timeout)
  return run


def logged_losses(workdir) -> list[tuple[int, float]]:
  """(step, train loss) for every line of metrics.jsonl, repeats after a resume included."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def wait_until_logged(workdir, run, count, timeout=300) -> None:
  """Waits until metrics.jsonl holds `count` loss lines (or the run ends)."""
  deadline = time.monotonic() + timeout
  while len(logged_losses(workdir)) < count and run.process.poll() is None:
    assert time.monotonic() < deadline, "the run made no progress"
    time.sleep(0.02)


def complete_steps(workdir) -> list[int]:
  """Committed checkpoint steps (orbax's `<step>` directories; unfinished saves end in -tmp)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def assert_matches_reference(losses, reference, steps_from=1):
  """Each logged (step, loss) with step >= steps_from equals the uninterrupted run's loss."""
  checked = [(step, loss) for step, loss in losses if step >= steps_from]
  assert checked, "nothing was logged"
  for step, loss in checked:
    np.testing.assert_allclose(loss, reference[step], rtol=1e-6, err_msg=f"step {step}")


@pytest.fixture(scope="module")
def reference(shared, corpus, env):
  """The uninterrupted run: (workdir, {step: loss}); checkpoints at 40, 50 and 60 are kept."""
  with shared() as directory:
    workdir = directory / "reference"
    if not (directory / "reference_done").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      run = run_to_end(train_args(workdir, corpus), env, str(directory / "reference_log"))
      assert run.process.returncode == 0, run.tail()
      (directory / "reference_done").write_text("ok")
  losses = dict(logged_losses(workdir))
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return workdir, losses


def test_sigterm_saves_the_current_step_and_the_resume_matches_an_uninterrupted_run(
    reference, corpus, env, tmp_path):
  _, reference_losses = reference
  workdir = tmp_path / "run"
  run = Run(train_args(workdir, corpus), env, str(tmp_path / "first"))
  wait_until_logged(workdir, run, 3)
  run.process.send_signal(signal.SIGTERM)
  assert run.wait() == PREEMPTED_EXIT_CODE, run.tail()
  stopped = logged_losses(workdir)[-1][0]
  assert 3 <= stopped < NUM_STEPS, "the signal arrived mid-run"
  assert f"saved a checkpoint at step {stopped}" in run.stdout, run.tail()
  assert "Traceback" not in run.stderr, run.tail()
  assert complete_steps(workdir)[-1] == stopped, "a checkpoint at the step it stopped at, not the last 10"

  resumed = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "second"))
  assert resumed.process.returncode == 0, resumed.tail()
  assert f"Resuming from the checkpoint at step {stopped}" in resumed.stdout
  losses = logged_losses(workdir)
  assert [step for step, _ in losses] == list(range(1, NUM_STEPS + 1)), "each step ran once"
  assert_matches_reference(losses, reference_losses)


def test_ctrl_c_saves_the_current_step_and_exits_130(reference, corpus, env, tmp_path):
  workdir = tmp_path / "run"
  run = Run(train_args(workdir, corpus), env, str(tmp_path / "first"))
  wait_until_logged(workdir, run, 3)
  run.process.send_signal(signal.SIGINT)
  assert run.wait() == INTERRUPTED_EXIT_CODE, run.tail()
  stopped = logged_losses(workdir)[-1][0]
  assert 3 <= stopped < NUM_STEPS, "the signal arrived mid-run"
  assert f"Stopped by Ctrl-C (SIGINT) at step {stopped}; saved a checkpoint at step {stopped}" in run.stdout
  assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.tail()
  assert complete_steps(workdir)[-1] == stopped


def test_one_trainer_per_workdir_and_a_killed_ones_lock_does_not_block(reference, corpus, env, tmp_path):
  workdir = tmp_path / "run"
  first = Run(train_args(workdir, corpus, **{"train.num_steps": 100_000}), env, str(tmp_path / "first"))  # Runs on.
  wait_until_logged(workdir, first, 2)
  second = run_to_end(train_args(workdir, corpus, **{"train.learning_rate": 0.01}), env, str(tmp_path / "second"))
  assert second.process.returncode == 2, second.tail()
  errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and f"another trainer is running in {workdir} (pid {first.process.pid} on" in errors[0]
  assert "Traceback" not in second.stderr
  first.process.kill()  # SIGKILL: the lock dies with the process, its file stays.
  first.wait()
  assert os.path.exists(workdir / "trainer.lock")
  third = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "third"))
  assert third.process.returncode == 0, third.tail()


def test_a_second_sample_call_compiles_nothing(reference, env, tmp_path):
  """The binaries keep compiled programs in a persistent cache: the second call adds no entry."""
  cache = tmp_path / "cache"
  sample_env = {key: value for key, value in env.items() if not key.startswith("JAX_")}
  sample_env["DIFFUSION_LM_COMPILATION_CACHE"] = str(cache)
  entries = []
  for attempt in range(2):
    result = subprocess.run([sys.executable, "-m", "diffusion_lm.sample", f"--workdir={reference[0]}",
                             "--num_samples=2", "--steps=5"], cwd=REPO_ROOT, env=sample_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    entries.append(sorted(os.listdir(cache)))
  assert entries[0], "the first call filled the cache"
  assert entries[1] == entries[0], "the second call compiled nothing new"


def test_sigkill_at_random_points_always_resumes_from_a_complete_checkpoint(reference, corpus, env, tmp_path):
  _, reference_losses = reference
  workdir = tmp_path / "run"
  args = train_args(workdir, corpus, **{"train.checkpoint_every": 1, "train.keep_checkpoints": 2})
  rng = random.Random(8)
  expected_resume, kills_mid_save = None, 0
  for attempt in range(5):
    logged_before = len(logged_losses(workdir))
    run = Run(args, env, str(tmp_path / f"killed_{attempt}"))
    wait_until_logged(workdir, run, logged_before + 1)  # Past start-up: it is training and saving.
    time.sleep(rng.uniform(0.0, 0.3))
    assert run.process.poll() is None, "the run finished before it could be killed: " + run.tail()
    run.process.kill()
    run.wait()
    if expected_resume is not None:
      assert f"Resuming from the checkpoint at step {expected_resume}" in run.stdout, run.tail()
    # Killed mid-save, the newest step may be an unfinished tmp directory: never a step here.
    expected_resume = complete_steps(workdir)[-1] if complete_steps(workdir) else None
    kills_mid_save += bool(glob.glob(f"{workdir}/checkpoints/*.orbax-checkpoint-tmp"))
    assert "Traceback" not in run.stderr, run.tail()
  print(f"{kills_mid_save} of 5 kills left an unfinished save behind")  # Informative: timing varies.

  # The last run only has to finish: checkpoints every 10 steps (the losses do not depend on it).
  final = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "final"))
  assert final.process.returncode == 0, final.tail()
  if expected_resume is not None:
    assert f"Resuming from the checkpoint at step {expected_resume}" in final.stdout, final.tail()
  assert complete_steps(workdir)[-1] == NUM_STEPS
  losses = logged_losses(workdir)
  assert {step for step, _ in losses} == set(range(1, NUM_STEPS + 1))
  assert_matches_reference(losses, reference_losses)  # Repeated steps included: same data, same keys.


def test_truncated_or_corrupt_latest_checkpoints_are_set_aside_and_never_loaded(
    reference, corpus, env, tmp_path):
  reference_dir, reference_losses = reference
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  os.remove(workdir / "metrics.jsonl")
  assert complete_steps(workdir) == [40, 50, 60]
  truncated = max(glob.glob(f"{workdir}/checkpoints/60/state/**/d/*", recursive=True), key=os.path.getsize)
  size = os.path.getsize(truncated)
  os.truncate(truncated, size // 2)
  flipped = max(glob.glob(f"{workdir}/checkpoints/50/state/**/d/*", recursive=True), key=os.path.getsize)
  with open(flipped, "r+b") as f:  # Same size, different bytes: orbax alone would load garbage.
    f.seek(os.path.getsize(flipped) // 2)
    f.write(b"\x7f" * 8)

  run = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "resume"))
  assert run.process.returncode == 0, run.tail()
  warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: checkpoint")]
  assert len(warnings) == 2, run.tail()
  assert f"{workdir}/checkpoints/60 is corrupt" in warnings[0] and "truncated" in warnings[0]
  assert f"moved it to {workdir}/checkpoints/60.corrupt" in warnings[0]
  assert f"{workdir}/checkpoints/50 is corrupt" in warnings[1] and "corrupted" in warnings[1]
  assert "Resuming from the checkpoint at step 40" in run.stdout
  # Kept for inspection, byte for byte, and the run went on to write fresh checkpoints.
  aside = truncated.replace("/checkpoints/60/", "/checkpoints/60.corrupt/")
  assert os.path.getsize(aside) == size // 2
  assert os.path.exists(flipped.replace("/checkpoints/50/", "/checkpoints/50.corrupt/"))
  assert complete_steps(workdir) == [40, 50, 60]
  assert_matches_reference(logged_losses(workdir), reference_losses, steps_from=41)


def test_a_truncated_checkpoint_without_checksums_falls_back_to_an_older_one(reference, corpus, env, tmp_path):
  """Item 6 of issue 19: no manifest to catch it, so the failed restore sets it aside instead."""
  reference_dir, reference_losses = reference
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  os.remove(workdir / "metrics.jsonl")
  os.remove(workdir / "checkpoints" / "60" / "checksums.json")  # As written by an older version.
  truncated = max(glob.glob(f"{workdir}/checkpoints/60/state/**/d/*", recursive=True), key=os.path.getsize)
  os.truncate(truncated, os.path.getsize(truncated) // 2)
  run = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "resume"))
  assert run.process.returncode == 0, run.tail()
  warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: checkpoint")]
  assert len(warnings) == 1 and "has no checksums.json and does not restore" in warnings[0], run.tail()
  assert f"moved it to {workdir}/checkpoints/60.corrupt, using step 50" in warnings[0]
  assert "Resuming from the checkpoint at step 50" in run.stdout
  assert_matches_reference(logged_losses(workdir), reference_losses)


@pytest.fixture
def small_disk(tmp_path):
  """A 1.6 MB tmpfs (room for two tiny checkpoints), unmounted afterwards; skips without root."""
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount_point)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_on_sample_output_is_one_line_without_checkpoint_talk(reference, env, small_disk):
  filler = small_disk / "filler"
  with open(filler, "wb", buffering=0) as f:  # Fill the tmpfs to the last byte (unbuffered: nothing left to flush).
    try:
      while True:
        f.write(b"\0" * 4096)
    except OSError:
      pass
  result = subprocess.run([sys.executable, "-m", "diffusion_lm.sample", f"--workdir={reference[0]}", "--num_samples=2",
                           "--steps=3", f"--output={small_disk / 'samples.txt'}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert len(errors) == 1 and "No space left on device" in errors[0] and "checkpoint" not in errors[0], errors


def test_a_full_disk_keeps_the_older_checkpoints_and_says_so(reference, corpus, env, small_disk, tmp_path):
  from diffusion_lm import checkpoint
  workdir = small_disk / "run"
  full = run_to_end(train_args(workdir, corpus), env, str(tmp_path / "full"))
  assert full.process.returncode == 1, full.tail()
  error = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and "Traceback" not in error[0], full.tail()
  # The checkpoint write or a metrics write hits the full disk first, whichever comes first.
  assert "no space left on device" in error[0].lower(), error[0]
  kept = complete_steps(workdir)
  assert kept and kept[-1] < NUM_STEPS, full.tail()
  for step in kept:  # Committed checkpoints are whole: a resume (tested above) can use them.
    assert checkpoint.verify_manifest(f"{workdir}/checkpoints/{step}") is None
  assert os.path.exists(f"{workdir}/checkpoints/{step}/{checkpoint.MANIFEST_FILE}")


def restored_state_is_finite(step_directory) -> bool:
  import jax
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(step_directory, "state"))
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))


def test_nonfinite_updates_stop_the_run_or_are_skipped(corpus, env, tmp_path):
  # A learning rate of 1e30 blows the parameters up within the first steps after warm-up starts.
  blow_up = {"train.learning_rate": 1e30, "train.num_steps": 8, "train.checkpoint_every": 1}
  stop_dir, skip_dir = tmp_path / "stop", tmp_path / "skip"
  stop = Run(train_args(stop_dir, corpus, **blow_up), env, str(tmp_path / "stop"))
  skip = Run(train_args(skip_dir, corpus, **blow_up, **{"train.skip_nonfinite_steps": True}), env,
             str(tmp_path / "skip"))

  assert stop.wait() == DIVERGED_EXIT_CODE, stop.tail()
  error = [line for line in stop.stderr.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and "Traceback" not in stop.stderr, stop.tail()
  assert "became NaN or Inf at step " in error[0] and "norm" in error[0]
  bad_step = int(error[0].split("at step ")[1].split(";")[0])
  assert f"last good checkpoint: step {bad_step - 1} in " in error[0]
  assert complete_steps(stop_dir)[-1] == bad_step - 1, "the last good step is kept, nothing after it is saved"
  assert restored_state_is_finite(f"{stop_dir}/checkpoints/{bad_step - 1}")

  assert skip.wait() == 0, skip.tail()
  assert "warning: the " in skip.stderr and "skipped" in skip.stderr
  with open(skip_dir / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if "train/loss" in line][-1]
  assert last["step"] == 8 and last["train/skipped_steps"] > 0 and np.isfinite(last["train/loss"])
  assert restored_state_is_finite(f"{skip_dir}/checkpoints/8"), "only finite updates were applied"


def test_when_one_process_dies_the_other_stops_with_an_error_at_once(corpus, env, tmp_path):
  import socket
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  workdir = tmp_path / "run"
  args = train_args(workdir, corpus, **{"train.num_steps": 1000, "model.num_layers": 1}) + [
      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  mp_env = {**env, "JAX_PLATFORMS": "cpu"}
  survivor = Run(args + ["--process_id=0"], mp_env, str(tmp_path / "process_0"))
  victim = Run(args + ["--process_id=1"], mp_env, str(tmp_path / "process_1"))
  wait_until_logged(workdir, survivor, 2)  # Both are in the training loop, in collectives.
  victim.process.kill()
  killed_at = time.monotonic()
  assert survivor.wait(timeout=180) == 1, survivor.tail()
  assert time.monotonic() - killed_at < 60, "bounded by the peer's socket closing, not a 100 s heartbeat"
  assert "error: process 0 of 2: another process died or became unreachable" in survivor.stderr, survivor.tail()
  assert "Traceback" not in survivor.stderr, survivor.tail()


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, exit 2, and (where no checkpoint is involved) before
# the workdir is even created. The cases run as concurrent processes to keep the module fast.
# ----------------------------------------------------------------------------------------------


def _bad_input_cases(tmp, corpus, reference_dir):
  """name → (args, extra env, expected message fragments, workdir that must not be created)."""
  non_utf8 = tmp / "latin1.txt"
  non_utf8.write_bytes(b"a fine line\nthe caf\xe9 is near the river\n")
  blank = tmp / "blank.txt"
  blank.write_text("\n   \n\n")
  empty = tmp / "empty.txt"
  empty.write_text("")
  a_file = tmp / "a_file"
  a_file.write_text("not a directory")
  # Two workdirs whose checkpoints were trained with another tokenizer / an unreadable one.
  other_tokenizer, broken_tokenizer = tmp / "other_tokenizer", tmp / "broken_tokenizer"
  for workdir in (other_tokenizer, broken_tokenizer):
    shutil.copytree(reference_dir, workdir)
  from diffusion_lm.data.tokenizer import Tokenizer
  Tokenizer.train(["a different corpus of words entirely", "so a different vocabulary"],
                  str(other_tokenizer / "tokenizer"), "word", 200)
  with open(broken_tokenizer / "tokenizer.model", "r+b") as f:
    f.truncate(100)

  def case(name, overrides, needles, env_extra=None, fresh=True, workdir=None):
    workdir = workdir or tmp / f"workdir_{name}"
    return name, (train_args(workdir, corpus, **overrides), env_extra or {}, needles,
                  workdir if fresh else None)

  more = {"train.num_steps": NUM_STEPS + 10}
  return dict([
      case("negative_steps", {"train.num_steps": -5}, ["--config.train.num_steps=-5 is out of range"]),
      case("seq_len_below_2", {"data.seq_len": 1}, ["--config.data.seq_len=1 is out of range", ">= 2"]),
      case("nan_learning_rate", {"train.learning_rate": "nan"},
           ["--config.train.learning_rate=nan is not a finite number"]),
      case("batch_not_divisible", {"train.batch_size": 3}, ["batch_size=3 is not divisible", "size 2"],
           env_extra={"XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"}),
      case("mesh_not_matching_devices", {"mesh.data": 3}, ["needs 3 devices but 1 are available"]),
      case("empty_data_file", {"data.train_files": str(empty)}, [f"{empty}", "is empty"]),
      case("blank_data_file", {"data.train_files": str(blank)}, [f"{blank}", "only blank lines"]),
      case("non_utf8_text", {"data.train_files": str(non_utf8)}, [f"{non_utf8}, line 2", "not UTF-8"]),
      case("missing_validation_split", {"data.validation_files": ""}, ["no validation files configured"]),
      case("unwritable_workdir", {}, [f"{a_file}/workdir is not writable"], workdir=a_file / "workdir"),
      case("tokenizer_not_matching_checkpoint", more,
           [f"{other_tokenizer}/tokenizer.model is not the tokenizer", "was trained with"],
           fresh=False, workdir=other_tokenizer),
      case("unreadable_tokenizer", more, [f"{broken_tokenizer}/tokenizer.model is not a readable tokenizer"],
           fresh=False, workdir=broken_tokenizer),
      case("train_file_is_a_directory", {"data.train_files": str(tmp)}, [f"{tmp}", "is a directory"]),
  ])


@pytest.fixture(scope="module")
def bad_input_results(shared, corpus, env, reference):
  """name → what its run did; all cases start at once, and once per session (xdist workers share)."""
  with shared() as directory:
    results_file = directory / "bad_input_results.json"
    if not results_file.exists():
      tmp = directory / "bad_input"
      shutil.rmtree(tmp, ignore_errors=True)
      tmp.mkdir()
      cases = _bad_input_cases(tmp, corpus, reference[0])
      runs = {name: (Run(args, {**env, **env_extra}, str(tmp / name)), needles, fresh)
              for name, (args, env_extra, needles, fresh) in cases.items()}
      for run, _, _ in runs.values():
        run.wait()
      results_file.write_text(json.dumps({
          name: {"returncode": run.process.returncode, "stderr": run.stderr, "tail": run.tail(),
                 "needles": needles, "workdir_created": fresh is not None and os.path.exists(fresh)}
          for name, (run, needles, fresh) in runs.items()}))
    return json.loads(results_file.read_text())


@pytest.mark.parametrize("name", [
    "negative_steps", "seq_len_below_2", "nan_learning_rate", "batch_not_divisible",
    "mesh_not_matching_devices", "empty_data_file", "blank_data_file", "non_utf8_text",
    "missing_validation_split", "unwritable_workdir", "tokenizer_not_matching_checkpoint",
    "unreadable_tokenizer", "train_file_is_a_directory"])
def test_bad_input_gives_one_line_and_exit_2(bad_input_results, name):
  result = bad_input_results[name]
  assert result["returncode"] == 2, result["tail"]
  assert "Traceback" not in result["stderr"], result["tail"]
  errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result["tail"]
  for needle in result["needles"]:
    assert needle in errors[0], errors[0]
  assert not result["workdir_created"], "validation runs before any work (the workdir is not created)"
