"""Sharded training on 8 fake CPU devices: same numbers as one device, weights really sharded.

The device count is fixed when jax starts, so the 8-device checks run once, in a subprocess of
this file (`python tests/test_parallel.py OUT_DIR` with XLA_FLAGS set), which writes its
measurements to JSON; the tests below assert on them. Random tokens and a 64-word vocabulary
(divisible by every mesh axis) keep it free of data loading and fast.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_XLA_FLAGS, tiny_config

MESHES = {"1x1x1": (1, 1, 1), "8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2)}
FSDP_MESH = (1, 8, 1)
NUM_STEPS = 4
CHECKPOINT_STEP = 2  # The 2x4x1 run saves here; other meshes restore and run the rest.
VOCAB = 64


# No LLVM optimisation: halves compile time on this 2-core machine; every mesh compiles alike.
WORKER_XLA_FLAGS = f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}"


def worker_config():
  """The tiny config with one block (sharding, not depth, is under test)."""
  return tiny_config(**{"data.vocab_size": VOCAB, "train.num_steps": NUM_STEPS, "train.warmup_steps": 1,
                        "train.batch_size": 8, "model.num_layers": 1})


def run_worker(out_dir: str) -> None:
  """Everything that needs 8 devices; writes out_dir/results.json."""
  import jax
  import ml_collections

  from diffusion_lm import checkpoint, config_utils, kinds, parallel, pipeline, train_state, trainer
  
  assert jax.device_count() == 8, jax.devices()
  timings = {}
  config = worker_config()
  model = kinds.get(config.model.kind).build_model(config, VOCAB)
  optimizer = train_state.make_optimizer(config.train)
  root_key = jax.random.key(config.seed)
  batches = np.random.default_rng(0).integers(2, VOCAB, (NUM_STEPS, config.train.batch_size,
                                                         config.data.seq_len)).astype(np.int32)
  jitted = {}  # mesh shape -> (mesh, init_fn, abstract_state, train_step)

  def setup(shape):
    if shape not in jitted:
      mesh_config = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape)))
      mesh = parallel.make_mesh(mesh_config, jax.devices()[:int(np.prod(shape))])
      with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
        init_fn, abstract_state, shardings = train_state.state_shapes_and_shardings(model, config, optimizer, mesh)
      step = jax.jit(trainer.make_train_step(model, config, optimizer),
                     in_shardings=(shardings, parallel.batch_sharding(mesh), None),
                     out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
      jitted[shape] = (mesh, init_fn, abstract_state, step)
    return jitted[shape]

  def run_steps(shape, state, start, stop, on_step=None):
    mesh, _, _, step_fn = setup(shape)
    losses = []
    with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
      for step in range(start, stop):
        batch = jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), batches[step])
        state, metrics = step_fn(state, batch, root_key)
        losses.append(float(metrics["loss"]))
        if on_step:
          on_step(step + 1, state)
    return state, losses

  initial_host_state = None

  def init(shape):
    """The 1-device init, laid out on `shape`'s shardings (one init compile, not five)."""
    nonlocal initial_host_state
    if initial_host_state is None:
      mesh, init_fn, _, _ = setup(MESHES["1x1x1"])
      with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
        initial_host_state = jax.device_get(init_fn(jax.random.fold_in(root_key, train_state.PARAMS_KEY)))
    abstract_state = setup(shape)[2]
    return jax.device_put(initial_host_state, jax.tree.map(lambda leaf: leaf.sharding, abstract_state))

  def host_params(state):
    return {"/".join(str(k.key) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state["params"]))[0]}

  # 1. The same steps on every mesh.
  checkpointer = checkpoint.Checkpointer(os.path.join(out_dir, "workdir"), keep=2)

  def save_at_checkpoint_step(step, state):
    if step == CHECKPOINT_STEP:
      checkpointer.save(step, state, config_utils.to_dict(config))
      checkpointer.wait()  # The next step donates these buffers.

  losses, params, final_states = {}, {}, {}
  for name, shape in MESHES.items():
    start = time.perf_counter()
    state, losses[name] = run_steps(shape, init(shape), 0, NUM_STEPS,
                                    save_at_checkpoint_step if name == "2x4x1" else None)
    params[name] = host_params(state)
    final_states[name] = state
    timings[f"train_{name}"] = time.perf_counter() - start
  reference = params["1x1x1"]
  param_diffs = {name: max(float(np.max(np.abs(p[k] - reference[k]))) for k in reference)
                 for name, p in params.items()}

  # 2. The checkpoint saved on 2x4x1 at step 2, restored on 8x1x1 and on one device.
  restored_losses, restored_specs = {}, {}
  for name in ("8x1x1", "1x1x1"):
    start = time.perf_counter()
    _, _, abstract_state, _ = setup(MESHES[name])
    state = checkpointer.restore(CHECKPOINT_STEP, abstract_state)
    restored_specs[name] = all(leaf.sharding == target.sharding for leaf, target in
                               zip(jax.tree.leaves(state), jax.tree.leaves(abstract_state), strict=True))
    state, restored_losses[name] = run_steps(MESHES[name], state, CHECKPOINT_STEP, NUM_STEPS)
    timings[f"restore_{name}"] = time.perf_counter() - start
  checkpointer.close()

  # 3. fsdp=8: what each device really holds, per weight and in total.
  start = time.perf_counter()
  fsdp_state = init(FSDP_MESH)
  devices = jax.devices()
  shards = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(fsdp_state["params"])[0]:
    shards["/".join(str(k.key) for k in path)] = {
        "shape": list(leaf.shape), "spec": str(leaf.sharding.spec),
        "shard_shapes": sorted({tuple(s.data.shape) for s in leaf.addressable_shards}),
        "devices": len({s.device for s in leaf.addressable_shards})}
  device_bytes = {group: sum(s.data.nbytes for leaf in jax.tree.leaves(fsdp_state[group])
                             for s in leaf.addressable_shards if s.device == devices[0])
                  for group in ("params", "ema_params", "opt_state")}
  timings["fsdp_init"] = time.perf_counter() - start

  # 4. Sampling on the 2x2x2 mesh (sharded EMA params) equals sampling on one device.
  start = time.perf_counter()
  samples = {}
  for name in ("1x1x1", "2x2x2"):
    mesh = setup(MESHES[name])[0]
    generator = pipeline.Pipeline(config, model, final_states[name]["ema_params"], tokenizer=None, mesh=mesh)
    samples[name] = generator.sample_tokens(num_samples=4, steps=2, seed=0).tolist()
  timings["sampling"] = time.perf_counter() - start

  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump({"losses": losses, "param_diffs": param_diffs, "restored_losses": restored_losses,
               "restored_specs": restored_specs, "fsdp_shards": shards, "fsdp_device_bytes": device_bytes,
               "samples": samples, "timings": timings}, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("parallel"))
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": WORKER_XLA_FLAGS}
  run = subprocess.run([sys.executable, os.path.abspath(__file__), out_dir], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-4000:]
  with open(os.path.join(out_dir, "results.json")) as f:
    return json.load(f)


def test_every_mesh_gives_the_same_losses_and_params(results):
  reference = results["losses"]["1x1x1"]
  for name, losses in results["losses"].items():
    np.testing.assert_allclose(losses, reference, rtol=2e-5, err_msg=name)
  for name, diff in results["param_diffs"].items():
    assert diff < 1e-4, f"{name}: params differ from one device by {diff}"


def test_checkpoint_from_one_mesh_continues_on_another(results):
  expected = results["losses"]["2x4x1"][CHECKPOINT_STEP:]
  for name, losses in results["restored_losses"].items():
    np.testing.assert_allclose(losses, expected, rtol=2e-5, err_msg=f"restored on {name}")
  assert all(results["restored_specs"].values()), "restored onto the new mesh's shardings"


def test_fsdp_holds_an_eighth_of_every_sharded_weight(results):
  sharded = {name: w for name, w in results["fsdp_shards"].items() if "fsdp" in w["spec"]}
  assert len(sharded) >= 14, "all large matrices, positions and LayerNorms shard over fsdp"
  for name, weight in sharded.items():
    axis = [i for i, part in enumerate(eval_spec(weight["spec"])) if part == "fsdp"][0]
    expected = list(weight["shape"])
    expected[axis] //= 8
    assert weight["shard_shapes"] == [expected], name
    assert weight["devices"] == 8, name


def test_dry_run_reports_the_real_shards_and_bytes(results):
  run = subprocess.run(
      [sys.executable, "-m", "diffusion_lm.train", "--config=configs/tiny.py", "--dry_run", "--dry_run_devices=8",
       "--config.mesh.data=1", "--config.mesh.fsdp=8", f"--config.data.vocab_size={VOCAB}",
       f"--config.train.batch_size={worker_config().train.batch_size}",
       f"--config.model.num_layers={worker_config().model.num_layers}"],
      cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT}, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  report = parse_dry_run(run.stdout)
  shards = results["fsdp_shards"]
  assert report["num_params"] == sum(int(np.prod(w["shape"])) for w in shards.values())
  assert set(report["weights"]) == set(shards)
  for name, per_device_shape in report["weights"].items():
    assert [list(per_device_shape)] == [list(s) for s in shards[name]["shard_shapes"]], name
  for group, actual in results["fsdp_device_bytes"].items():
    assert report["bytes"][group] == actual, group


def test_sampling_on_a_mesh_matches_one_device(results):
  assert results["samples"]["2x2x2"] == results["samples"]["1x1x1"]


def test_bad_mesh_batch_and_rules_are_one_line_errors():
  from diffusion_lm import parallel
  from diffusion_lm.errors import ConfigError, UserError
  mesh_config = lambda data, fsdp, tensor: types.SimpleNamespace(data=data, fsdp=fsdp, tensor=tensor)
  assert parallel.mesh_shape(mesh_config(-1, 4, 1), 8) == (2, 4, 1)
  with pytest.raises(ConfigError, match="needs 16 devices but 8"):
    parallel.mesh_shape(mesh_config(2, 8, 1), 8)
  with pytest.raises(ConfigError, match="not divisible by 3"):
    parallel.mesh_shape(mesh_config(-1, 3, 1), 8)
  fake_mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 1})
  with pytest.raises(UserError, match="batch_size=12 is not divisible by the data-parallel size 8"):
    parallel.check_batch_size(12, fake_mesh, process_count=1)
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    parallel.check_batch_size(8, types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 1}), 3)
  rules = dict(parallel.logical_rules(tiny_config(**{"mesh.rules": "embed=,vocab=data+tensor"}).mesh))
  assert rules["embed"] is None and rules["vocab"] == ("data", "tensor") and rules["mlp"] == "tensor"
  with pytest.raises(ConfigError, match="unknown mesh axis"):
    parallel.parse_rules("embed=model")
  with pytest.raises(ConfigError, match="name=axis"):
    parallel.parse_rules("embedding=fsdp")


def test_distributed_flags_are_checked_and_one_process_needs_nothing():
  from diffusion_lm import parallel
  from diffusion_lm.errors import UserError
  with pytest.raises(UserError, match="go together"):
    parallel.initialize_distributed("127.0.0.1:1234", num_processes=2)
  with pytest.raises(UserError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    parallel.initialize_distributed("127.0.0.1:1234", num_processes=2, process_id=2)
  assert parallel.initialize_distributed("127.0.0.1:1234", num_processes=1, process_id=0) is False


def test_tfds_data_needs_a_name():
  from diffusion_lm import config_utils
  from diffusion_lm.errors import ConfigError
  with pytest.raises(ConfigError, match="tfds_name"):
    config_utils.validate(tiny_config(**{"data.name": "tfds"}))


def test_lm1b_pod_plans_onto_a_v5e_32():
  run = subprocess.run([sys.executable, "-m", "diffusion_lm.train", "--config=configs/lm1b_pod.py", "--dry_run",
                        "--dry_run_devices=32"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT},
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "mesh: data=2 × fsdp=16 × tensor=1 (32 devices)" in run.stdout
  report = parse_dry_run(run.stdout)
  assert report["num_params"] == 340_292_608  # The figures quoted in configs/lm1b_pod.py and the README.
  assert report["bytes"]["total"] == 374_254_092
  assert report["weights"]["backbone/block_0/mlp/wi/kernel"] == (64, 4096)  # 1024 / fsdp=16.


def eval_spec(text: str) -> tuple:
  """PartitionSpec('fsdp', None) → ('fsdp', None) (the worker stores specs as text)."""
  inner = text[text.index("(") + 1: text.rindex(")")]
  return tuple(None if part.strip() == "None" else part.strip().strip("'") for part in inner.split(",") if part.strip())


def parse_dry_run(stdout: str) -> dict:
  lines = stdout.splitlines()
  num_params = int(next(l for l in lines if l.startswith("parameters:")).split(":")[1].replace(",", ""))
  bytes_line = next(l for l in lines if l.startswith("per-device bytes:")).split(":", 1)[1]
  group_bytes = {part.split()[0]: int(part.split()[1].replace(",", "")) for part in bytes_line.split(", ")
                 if part.strip() and part.split()[0] in ("params", "ema_params", "opt_state", "total")}
  header = next(i for i, l in enumerate(lines) if l.startswith("weight "))
  weights = {}
  for line in lines[header + 1:]:
    if not line.strip():
      break
    name = line.split()[0]
    weights[name] = tuple(int(x) for x in line[line.rindex("(") + 1: line.rindex(")")].split(",") if x.strip())
  return {"num_params": num_params, "bytes": group_bytes, "weights": weights}


if __name__ == "__main__":
  run_worker(sys.argv[1])


def test_the_train_binary_splits_a_cpu_host_as_config_mesh_cpu_devices_says():
  """configs/e2e.py trains on one XLA device per core of a 2-core CPU; any config can ask for N; an explicit
  XLA flag (mesh tests, launchers) wins; 0 is one line."""
  def dry_run(*args, xla_flags=TEST_XLA_FLAGS):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "XLA_FLAGS": xla_flags}
    return subprocess.run([sys.executable, "-m", "diffusion_lm.train", "--dry_run", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  shipped = dry_run("--config=configs/e2e.py")
  assert shipped.returncode == 0, shipped.stderr[-3000:]
  assert shipped.stdout.splitlines()[0] == "mesh: data=2 × fsdp=1 × tensor=1 (2 devices)"
  asked = dry_run("--config=configs/tiny.py", "--config.mesh.cpu_devices=4")
  assert asked.returncode == 0, asked.stderr[-3000:]
  assert asked.stdout.splitlines()[0] == "mesh: data=4 × fsdp=1 × tensor=1 (4 devices)"
  explicit = dry_run("--config=configs/e2e.py", xla_flags=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8")
  assert explicit.stdout.splitlines()[0] == "mesh: data=8 × fsdp=1 × tensor=1 (8 devices)", explicit.stderr[-3000:]
  bad = dry_run("--config=configs/tiny.py", "--config.mesh.cpu_devices=0")
  assert bad.returncode == 2 and bad.stderr.strip() == (
      "error: --config.mesh.cpu_devices=0 is out of range; it must be an integer >= 1"), bad.stderr[-3000:]


def test_two_cpu_devices_repeat_a_run_exactly_and_resume_it_exactly(tmp_path):
  """The main job's default split (mesh.cpu_devices = 2) keeps the CPU's guarantees: the same run twice
  gives the same losses, and a run resumed from its step-10 checkpoint continues on the same path."""
  def train(workdir):
    args = ["--config=configs/tiny.py", "--config.mesh.cpu_devices=2", "--config.train.num_steps=20",
            "--config.train.num_samples=0", "--config.train.log_every=5", "--config.train.checkpoint_every=10",
            "--config.train.eval_every=100", f"--workdir={workdir}"]
    run = subprocess.run([sys.executable, "-m", "diffusion_lm.train", *args], cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": REPO_ROOT, "XLA_FLAGS": TEST_XLA_FLAGS},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return {row["step"]: row["train/loss"] for row in map(json.loads, f) if "train/loss" in row}
  first, second = train(str(tmp_path / "a")), train(str(tmp_path / "b"))
  assert first == second and sorted(first) == [5, 10, 15, 20]
  resumed_dir = tmp_path / "resumed"
  shutil.copytree(tmp_path / "b", resumed_dir)
  shutil.rmtree(resumed_dir / "checkpoints" / "20")
  os.remove(resumed_dir / "metrics.jsonl")
  assert train(str(resumed_dir)) == {15: first[15], 20: first[20]}
