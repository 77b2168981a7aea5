"""Training: `train(config, workdir)` as a library function, plus the absl binary.

Re-running the same command on a workdir resumes from its latest checkpoint (the data order and
the random keys are pure functions of the seed and the step, so the resumed run continues
exactly); a finished run is not retrained.

Example:
  python -m diffusion_lm.train --config=configs/e2e.py --workdir=/tmp/e2e \
      --config.train.num_steps=20000
"""

import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from diffusion_lm import checkpoint, cli, config_utils, metrics, numerics, parallel, tasks
from diffusion_lm.data import datasets, pipeline as data_pipeline
from diffusion_lm.data.tokenizer import Tokenizer
from diffusion_lm.diffusion import objectives, time_warping
from diffusion_lm.errors import TrainingDivergedError, UserError
from diffusion_lm.models import build_model

# Random keys are folded from the root seed by purpose, then by step.
PARAMS_KEY, TRAIN_KEY, EVAL_KEY, SAMPLE_KEY = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.model"
TIME_WARP_DECAY = 0.99  # EMA decay of the per-bin loss profile behind time warping.


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW with linear warm-up, cosine decay to zero and global-norm clipping."""
  learning_rate = optax.warmup_cosine_decay_schedule(
      0.0, train_config.learning_rate, train_config.warmup_steps,
      max(train_config.num_steps, train_config.warmup_steps + 1), end_value=0.0)
  clip = [optax.clip_by_global_norm(train_config.grad_clip)] if train_config.grad_clip > 0 else []
  return optax.chain(*clip, optax.adamw(learning_rate, weight_decay=train_config.weight_decay))


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
  """Warmed-up EMA decay min(max, (1+step)/(10+step)), so short runs are not dominated by init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def strip_boxes(tree):
  """Plain arrays from logically-annotated ones (without the sharding constraint `nn.unbox` adds)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def state_shapes_and_shardings(model, config, optimizer, mesh):
  """(init function, abstract state, shardings) for the train state on `mesh`."""
  def init_state(rng):
    params = tasks.init_variables(model, config, rng)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
             "opt_state": optimizer.init(params)}
    if config.model.kind == "diffusion" and config.diffusion.time_warping:
      state["time_warp"] = time_warping.initial_loss_table(config.diffusion.time_warp_bins)
    return state
  boxed_abstract = jax.eval_shape(init_state, jax.random.key(0))
  shardings = parallel.shardings_for(boxed_abstract, mesh, parallel.logical_rules(config.mesh))
  abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                          strip_boxes(boxed_abstract), shardings)
  init_fn = jax.jit(lambda rng: strip_boxes(init_state(rng)), out_shardings=shardings)
  return init_fn, abstract, shardings


def make_train_step(model, config, optimizer):
  """One optimizer step: (state, tokens, root_key) → (new state, metrics)."""
  loss_fn = tasks.make_loss_fn(model, config)

  def train_step(state, tokens_BL, root_key):
    step_key = jax.random.fold_in(jax.random.fold_in(root_key, TRAIN_KEY), state["step"])
    time_key, step_key = jax.random.split(step_key)
    t_B = None
    if "time_warp" in state:  # Warped times: t = F⁻¹(u) for stratified u.
      t_B = time_warping.warp(state["time_warp"], objectives.low_discrepancy_times(time_key, tokens_BL.shape[0]))
    (loss, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], tokens_BL, step_key, True, t_B)
    per_example = {k: step_metrics.pop(k) for k in list(step_metrics) if k.startswith("per_example/")}
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay_at(state["step"], config.train.ema_decay)
    ema_params = optax.incremental_update(params, state["ema_params"], 1.0 - decay)
    step_metrics = {**step_metrics, "grad_norm": optax.tree.norm(grads)}
    new_state = {**state, "step": state["step"] + 1, "params": params, "ema_params": ema_params,
                 "opt_state": opt_state}
    if "time_warp" in state:
      new_state["time_warp"] = time_warping.update_loss_table(
          state["time_warp"], per_example["per_example/t"], per_example["per_example/loss"], TIME_WARP_DECAY)
    # Which of loss / grads / new params went NaN or Inf; the host reads it at log boundaries.
    step_metrics["nonfinite"] = numerics.nonfinite_code(loss, step_metrics["grad_norm"], optax.tree.norm(params))
    if config.train.skip_nonfinite_steps:  # Drop the update; the step (and its batch) still counts.
      new_state = {**numerics.keep_finite_update(step_metrics["nonfinite"], new_state, state),
                   "step": new_state["step"]}
    return new_state, step_metrics
  return train_step


def make_eval_step(model, config):
  """Validation loss of the EMA parameters on one batch, with a fixed key per batch index."""
  loss_fn = tasks.make_loss_fn(model, config)

  def eval_step(ema_params, tokens_BL, root_key, batch_index):
    key = jax.random.fold_in(jax.random.fold_in(root_key, EVAL_KEY), batch_index)
    metrics = loss_fn(ema_params, tokens_BL, key, False)[1]
    return {k: v for k, v in metrics.items() if not k.startswith("per_example/")}
  return eval_step


def load_or_train_tokenizer(workdir: str, data_config, train_texts: list[str]) -> Tokenizer:
  """The workdir's tokenizer, trained on the training split the first time."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  # Only process 0 looks and trains, and every process meets at the barrier: a process that saw
  # the file appear and skipped the barrier would desynchronise the collectives that follow.
  if jax.process_index() == 0 and not os.path.exists(path):
    Tokenizer.train(train_texts, path[: -len(".model")], data_config.tokenizer, data_config.vocab_size)
  cli.sync_processes("tokenizer")
  try:
    return Tokenizer.load(path)
  except (RuntimeError, OSError, ValueError) as error:  # sentencepiece raises RuntimeError.
    raise UserError(f"{path} is not a readable tokenizer ({str(error).strip().splitlines()[0]}); "
                    "restore the file the checkpoints were trained with, or use a new --workdir") from None


def check_workdir_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise UserError(f"--workdir={workdir} is not writable ({error.strerror}); choose another directory")


def write_samples(workdir: str, step: int, lines: list[str]) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  with open(os.path.join(workdir, "samples", f"step_{step}.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the model `config` describes in `workdir`; returns the last metrics.

  On SIGTERM (or a preemption notice on a pod) it saves a checkpoint at the current step and
  returns early with `preempted=True`; NaN/Inf raises TrainingDivergedError (see numerics.py).

  Example:
    >>> from configs import tiny
    >>> metrics = train(tiny.get_config(), "/tmp/tiny")
  """
  with checkpoint.PreemptionWatcher() as preemption:  # Restores the previous SIGTERM handler after.
    return _train(config, workdir, preemption)


def _train(config, workdir: str, preemption: checkpoint.PreemptionWatcher) -> dict:
  """`train`, with `preemption` saying when to save and stop."""
  from diffusion_lm import pipeline  # Imported here: pipeline imports train's helpers.

  config_utils.validate(config)
  mesh = parallel.make_mesh(config.mesh)  # Bad mesh sizes, rules or batch sizes fail before any work.
  rules = parallel.logical_rules(config.mesh)
  parallel.check_batch_size(config.train.batch_size, mesh)
  datasets.check_data_files(config.data)  # Missing, empty, blank or non-UTF-8 files: one line, exit 2.
  check_workdir_writable(workdir)
  train_texts = datasets.load_texts(config.data, "train")
  tokenizer = load_or_train_tokenizer(workdir, config.data, train_texts)
  train_tokens = data_pipeline.encode_corpus(train_texts, tokenizer, config.data.seq_len, config.data.mode)
  validation_tokens = data_pipeline.encode_corpus(
      datasets.load_texts(config.data, "validation"), tokenizer, config.data.seq_len, config.data.mode)

  model = build_model(config, tokenizer.vocab_size)
  optimizer = make_optimizer(config.train)
  root_key = jax.random.key(config.seed)
  checkpointer = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  writer = metrics.MetricWriter(workdir)
  batch_sharding = parallel.batch_sharding(mesh)

  with parallel.activate(mesh, rules):
    init_fn, abstract_state, state_shardings = state_shapes_and_shardings(model, config, optimizer, mesh)
    latest = checkpointer.latest_valid_step()  # Skips (and sets aside) corrupt checkpoints, with a warning.
    if latest is None:
      state = init_fn(jax.random.fold_in(root_key, PARAMS_KEY))
    else:
      config_utils.check_same_shapes(checkpointer.restore_config(latest), config, workdir)
      checkpointer.check_tokenizer(latest, tokenizer.model_file)
      state = checkpointer.restore(latest, abstract_state)
      if jax.process_index() == 0:
        print(f"Resuming from the checkpoint at step {latest} in {workdir}.")
    train_step = jax.jit(make_train_step(model, config, optimizer),
                         in_shardings=(state_shardings, batch_sharding, None),
                         out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model, config), out_shardings=parallel.replicated(mesh))

    source = data_pipeline.BatchSource(train_tokens, config.train.batch_size, seed=config.seed)
    to_device = lambda rows: jax.make_array_from_process_local_data(batch_sharding, rows)
    fetch = lambda step: to_device(source.batch(step, jax.process_index(), jax.process_count()))

    def evaluate_and_sample(step, state):
      val_source = data_pipeline.BatchSource(validation_tokens, config.train.batch_size, seed=config.seed,
                                             shuffle=False)
      results = [eval_step(state["ema_params"], to_device(val_source.batch(i, jax.process_index(),
                                                                          jax.process_count())), root_key, i)
                 for i in range(config.train.eval_batches)]
      scalars = {f"validation/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
      writer.write(step, scalars)
      samples = []
      if config.train.num_samples and config.model.kind == "diffusion":
        generator = pipeline.Pipeline(config, model, state["ema_params"], tokenizer, mesh,
                                      time_warp_table=state.get("time_warp"))
        samples = generator.sample(config.train.num_samples, seed=config.seed)
        write_samples(workdir, step, samples)
      return scalars, samples

    step = int(state["step"])
    num_steps = config.train.num_steps
    last_metrics, samples = {}, []
    if step >= num_steps:
      if jax.process_index() == 0:
        print(f"{workdir} already holds a finished run (step {step} of {num_steps}); not retraining.")
    progress = tqdm(total=num_steps, initial=step, desc="train", disable=jax.process_index() != 0,
                    dynamic_ncols=True, mininterval=2.0)
    next_batch = fetch(step) if step < num_steps else None
    window_start, window_steps = time.perf_counter(), 0
    checkpoint_metadata = {"tokenizer_sha256": checkpoint.file_sha256(tokenizer.model_file)}
    nonfinite, preempted = numerics.NonFiniteMonitor(), False

    def check_finite():
      """At a boundary: stop (or warn, when skipping) if a step since the last look was NaN/Inf."""
      report = nonfinite.poll()
      if report is None:
        return
      if not config.train.skip_nonfinite_steps:
        progress.close()  # So the error starts a line of its own.
        checkpointer.close()  # Pending saves hold earlier, checked states: finish them.
        kept = checkpointer.latest_step()
        raise TrainingDivergedError(
            f"{report.describe()}; stopped without saving (last good checkpoint: "
            f"{f'step {kept} in {checkpointer.directory}' if kept is not None else 'none'}); lower "
            "--config.train.learning_rate or set --config.train.skip_nonfinite_steps=True")
      checkpoint.warn(f"{report.describe()}; skipped {report.new_bad_steps} such step(s) since the last "
                      f"report ({report.total_bad_steps} in all)")

    while step < num_steps:
      state, step_metrics = train_step(state, next_batch, root_key)
      step += 1
      window_steps += 1
      next_batch = fetch(step) if step < num_steps else None  # Overlaps the device step.
      progress.update(1)
      nonfinite.record(step, step_metrics.pop("nonfinite"))
      preempted = preemption.should_stop(step) and step < num_steps  # At the last step, just finish.
      every = (config.train.log_every, config.train.eval_every, config.train.checkpoint_every)
      if preempted or step == num_steps or any(step % n == 0 for n in every):
        check_finite()  # Only where the loop syncs anyway, and before anything is saved.
      if step % config.train.log_every == 0 or step == num_steps:
        step_metrics = jax.device_get(step_metrics)
        elapsed = time.perf_counter() - window_start
        throughput = {"steps_per_second": window_steps / elapsed,
                      "tokens_per_second": window_steps * config.train.batch_size * config.data.seq_len / elapsed}
        last_metrics = {f"train/{k}": float(v) for k, v in step_metrics.items()} | {
            f"train/{k}": v for k, v in throughput.items()}
        if config.train.skip_nonfinite_steps:
          last_metrics["train/skipped_steps"] = nonfinite.total_bad_steps
        writer.write(step, last_metrics)
        progress.set_postfix(loss=f"{step_metrics['loss']:.3f}", tok_s=f"{throughput['tokens_per_second']:.0f}")
        window_start, window_steps = time.perf_counter(), 0
      if preempted:  # Save now and go: the grace period is short, so no evaluation or sampling.
        checkpointer.save(step, state, config_utils.to_dict(config), checkpoint_metadata)
        break
      if step % config.train.eval_every == 0 or step == num_steps:
        scalars, samples = evaluate_and_sample(step, state)
        last_metrics |= scalars
        window_start, window_steps = time.perf_counter(), 0  # Evaluation time is not throughput.
      if step % config.train.checkpoint_every == 0 or step == num_steps:
        checkpointer.save(step, state, config_utils.to_dict(config), checkpoint_metadata)
    progress.close()
    if not samples and not preempted and config.train.num_samples and config.model.kind == "diffusion":
      samples = pipeline.Pipeline(config, model, state["ema_params"], tokenizer, mesh,
                                      time_warp_table=state.get("time_warp")).sample(
          config.train.num_samples, seed=config.seed)
  checkpointer.close()  # Waits for the last async save: after this the checkpoint is on disk.
  writer.close()
  if preempted and jax.process_index() == 0:
    print(f"Stopped by a preemption notice (SIGTERM) at step {step}; saved a checkpoint at step {step} in "
          f"{checkpointer.directory}. Run the same command again to resume.", flush=True)
  return {"step": step, "samples": samples, "preempted": preempted, **last_metrics}


FLAGS = flags.FLAGS


def dry_run(config) -> dict:
  """Builds the train state on the mesh abstractly (no data, no memory) and reports its cost.

  The vocabulary is `config.data.vocab_size` (exact for unigram/bpe tokenizers, an upper bound
  for "word"). Returns `parallel.sharding_report(...)`: parameter count, per-device bytes of
  params / EMA / optimizer state, and each weight's sharding.

  Example:
    >>> from configs import lm1b_pod
    >>> print(parallel.format_report(dry_run(lm1b_pod.get_config())))
  """
  config_utils.validate(config)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(config.train.batch_size, mesh)
  model = build_model(config, config.data.vocab_size)
  with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
    _, abstract_state, _ = state_shapes_and_shardings(model, config, make_optimizer(config.train), mesh)
  return parallel.sharding_report(abstract_state, mesh)


def main(argv):
  del argv
  if FLAGS.dry_run:
    if FLAGS.dry_run_devices:  # Plan for a pod on a laptop: that many fake CPU devices.
      parallel.use_fake_cpu_devices(FLAGS.dry_run_devices)
    print(parallel.format_report(dry_run(cli.config_from_flag())))
    return
  if not FLAGS.workdir:
    raise UserError("--workdir is required (only --dry_run runs without one)")
  parallel.initialize_from_flags()  # Before anything touches a device; no-op for one process.
  result = train(cli.config_from_flag(), FLAGS.workdir)
  if result["preempted"]:
    sys.exit(cli.PREEMPTED_EXIT_CODE)
  if jax.process_index() == 0:
    print(f"Trained to step {result['step']} in {FLAGS.workdir}.")
    if result.get("samples"):
      print("Samples:")
      print("\n".join(result["samples"]))


def run():
  """Console-script entry point (`diffusion-lm-train`)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/e2e.py.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and the tokenizer.")
  flags.DEFINE_bool("dry_run", False, "Build the model on the mesh abstractly and print parameter count, "
                    "per-device bytes and each weight's sharding; do not train.")
  flags.DEFINE_integer("dry_run_devices", 0, "With --dry_run: plan for this many devices (fake CPU "
                       "devices), e.g. 32 for a v5e-32; 0 = the devices present.")
  parallel.define_distributed_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(main)


if __name__ == "__main__":
  run()
