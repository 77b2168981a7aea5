"""Two real processes (gloo CPU collectives) train, are stopped, resume and sample, exactly as one.

`launch/local_multiprocess.sh 2` runs two train processes with one CPU device each; they are
stopped with SIGTERM mid-run (they agree on a step, save a checkpoint and exit 143), restarted
with the same command (they resume from that checkpoint) and finish with samples. One process with
two fake devices, the same mesh and the same global batch, must log the same loss at every step
and write the same samples.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_XLA_FLAGS

NUM_STEPS = 60
TRAIN_FLAGS = ["--config=configs/tiny.py", "--config.model.num_layers=1", f"--config.train.num_steps={NUM_STEPS}",
               "--config.train.log_every=1", f"--config.train.eval_every={NUM_STEPS}",
               f"--config.train.checkpoint_every={NUM_STEPS}", "--config.sample.steps=4",
               "--config.train.num_samples=2"]
LAUNCHER = os.path.join(REPO_ROOT, "launch", "local_multiprocess.sh")
PREEMPTED_EXIT_CODE = 143


def write_corpus(directory) -> list[str]:
  """A small synthetic corpus (reading 42k E2E rows would dominate the run): the data flags."""
  rng = np.random.default_rng(0)
  words = [["the", "a", "one"], ["small", "red", "old", "quiet", "busy"], ["pub", "cafe", "shop", "hotel"],
           ["near", "by", "beside"], ["river", "centre", "station", "park"]]
  paths = {}
  for split, rows in (("train", 400), ("validation", 40)):
    clause = lambda: " ".join(rng.choice(options) for options in words)
    lines = [f"{clause()} , {clause()} ." for _ in range(rows)]  # 12 words: rows are mostly text.
    paths[split] = os.path.join(directory, f"{split}.txt")
    with open(paths[split], "w") as f:
      f.write("\n".join(lines) + "\n")
  return ["--config.data.name=text_files", f"--config.data.train_files={paths['train']}",
          f"--config.data.validation_files={paths['validation']}"]


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
  return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # No LLVM optimisation (compiles twice as fast here; both sides alike), and a compilation cache
  # shared by the runs, so the restarted processes reuse the first run's executables.
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  return {**os.environ, "PYTHONPATH": REPO_ROOT, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": TEST_XLA_FLAGS, "JAX_COMPILATION_CACHE_DIR": cache,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def losses_by_step(workdir):
  records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  steps = [r["step"] for r in records]
  assert len(steps) == len(set(steps)), "one writer (process 0), each step logged once"
  return {r["step"]: r["train/loss"] for r in records}


def launch(env, workdir, data_flags, num_processes=2):
  return subprocess.Popen([LAUNCHER, str(num_processes), f"--workdir={workdir}", *TRAIN_FLAGS, *data_flags],
                          cwd=REPO_ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_once_training(process, workdir, timeout_s=300):
  """SIGTERM to the launcher (which forwards it) once process 0 has logged a training step."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + timeout_s
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.monotonic() < deadline, "no training step logged in time"
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  return process.communicate(timeout=timeout_s)[0]


def test_two_processes_stop_resume_and_match_one_process(env, data_flags, tmp_path):
  workdir, reference_dir = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  timings = {}

  start = time.perf_counter()
  output = stop_once_training(launch(env, workdir, data_flags), workdir)
  timings["stopped_run"] = time.perf_counter() - start
  stopped_at = max(losses_by_step(workdir))
  assert "Stopped by a preemption notice" in output, output[-3000:]
  assert stopped_at < NUM_STEPS, "stopped before the end"
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped_at)], "both processes saved it"

  start = time.perf_counter()
  resumed = launch(env, workdir, data_flags)
  output = resumed.communicate(timeout=600)[0]
  timings["resumed_run"] = time.perf_counter() - start
  assert resumed.returncode == 0, output[-3000:]
  assert f"Resuming from the checkpoint at step {stopped_at}" in output
  assert f"[0] Trained to step {NUM_STEPS}" in output
  assert "[1] Trained" not in output, "only process 0 reports"

  start = time.perf_counter()
  reference = subprocess.run([sys.executable, "-m", "diffusion_lm.train", f"--workdir={reference_dir}", *TRAIN_FLAGS,
                              *data_flags],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                             env={**env, "XLA_FLAGS": env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"})
  timings["one_process"] = time.perf_counter() - start
  assert reference.returncode == 0, reference.stderr[-3000:]
  print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

  two, one = losses_by_step(workdir), losses_by_step(reference_dir)
  assert sorted(two) == sorted(one) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-6)
  samples = [open(os.path.join(d, "samples", f"step_{NUM_STEPS}.txt")).read() for d in (workdir, reference_dir)]
  assert samples[0] == samples[1]
  assert len(samples[0].splitlines()) == 2 and samples[0].split(), "two non-empty samples"
