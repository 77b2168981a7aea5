"""The trainer library: `train(config, workdir)` and `dry_run(config)` (the train binary's work).

Re-running on a workdir resumes from its latest checkpoint (the data order and the random keys
are pure functions of the seed and the step, so a resumed run continues exactly); a finished run
is not retrained. The loop is the same for every model kind: what differs (model, loss, extra
train state, sampling) comes from `kinds.get(config.model.kind)`.

Example:
  >>> from configs import tiny
  >>> metrics = train(tiny.get_config(), "/tmp/tiny")
"""

import time

import jax
import numpy as np
import optax
from tqdm import tqdm

from diffusion_lm import (checkpoint, config_utils, distillation, kinds, metrics, numerics, parallel,
                          workdir as workdir_lib)
from diffusion_lm.data import batching, datasets
from diffusion_lm.data.layout import PAD_ID, PAIR_SEPARATOR, UNK_ID, split_pair
from diffusion_lm.errors import TrainingDivergedError
from diffusion_lm.lock import TrainerLock
from diffusion_lm.preemption import PreemptionWatcher
from diffusion_lm.train_state import (EVAL_KEY, PARAMS_KEY, TRAIN_KEY, ema_decay_at, make_optimizer,
                                      state_shapes_and_shardings)


def make_train_step(model, config, optimizer):
  """One optimizer step: (state, tokens, root_key) → (new state, metrics)."""
  kind = kinds.get(config.model.kind)
  loss_fn = kind.make_loss_fn(model, config)

  def train_step(state, tokens_BL, root_key):
    step_key = jax.random.fold_in(jax.random.fold_in(root_key, TRAIN_KEY), state["step"])
    time_key, step_key = jax.random.split(step_key)
    t_B = kind.train_times(state, time_key, tokens_BL.shape[0])
    (loss, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], tokens_BL, step_key, True, t_B)
    per_example = {k: step_metrics.pop(k) for k in list(step_metrics) if k.startswith("per_example/")}
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay_at(state["step"], config.train.ema_decay)
    ema_params = optax.incremental_update(params, state["ema_params"], 1.0 - decay)
    step_metrics = {**step_metrics, "grad_norm": optax.tree.norm(grads)}
    new_state = {**state, "step": state["step"] + 1, "params": params, "ema_params": ema_params,
                 "opt_state": opt_state, **kind.update_extra_state(state, per_example)}
    # Which of loss / grads / new params went NaN or Inf; the host reads it at log boundaries.
    step_metrics["nonfinite"] = numerics.nonfinite_code(loss, step_metrics["grad_norm"], optax.tree.norm(params))
    if config.train.skip_nonfinite_steps:  # Drop the update; the step (and its batch) still counts.
      new_state = {**numerics.keep_finite_update(step_metrics["nonfinite"], new_state, state),
                   "step": new_state["step"]}
    return new_state, step_metrics
  return train_step


def make_eval_step(model, config):
  """Validation loss of the EMA parameters on one batch, with a fixed key per batch index."""
  loss_fn = kinds.get(config.model.kind).make_loss_fn(model, config)

  def eval_step(ema_params, tokens_BL, root_key, batch_index):
    key = jax.random.fold_in(jax.random.fold_in(root_key, EVAL_KEY), batch_index)
    metrics = loss_fn(ema_params, tokens_BL, key, False)[1]
    return {k: v for k, v in metrics.items() if not k.startswith("per_example/")}
  return eval_step


UNKNOWN_WARNING_FRACTION = 0.2  # Above this share of <unk> tokens a vocabulary is too small to learn from.


def warn_if_mostly_unknown(tokens_NL: np.ndarray, vocab_size: int) -> None:
  """One warning line when the training text is mostly <unk> (a vocabulary far too small)."""
  text_BL = tokens_NL != PAD_ID
  fraction = float(np.sum((tokens_NL == UNK_ID) & text_BL) / max(1, np.sum(text_BL)))
  if fraction > UNKNOWN_WARNING_FRACTION:
    parallel.warn(f"{100 * fraction:.0f}% of the training tokens are <unk> with --config.data.vocab_size={vocab_size}; "
                  "the model will mostly learn to write <unk>: raise it (or use a new --workdir if a tokenizer "
                  "was already trained there)")


class _Run:
  """One call of `train`: the model, data, mesh and writers, and the loop's named steps."""

  def __init__(self, config, workdir: str, preemption: PreemptionWatcher):
    config_utils.validate(config)
    self.config, self.workdir, self.preemption = config, workdir, preemption
    self.kind = kinds.get(config.model.kind)
    self.mesh = parallel.make_mesh(config.mesh)  # Bad mesh sizes, rules or batch sizes fail before any work.
    self.rules = parallel.logical_rules(config.mesh)
    parallel.check_batch_size(config.train.batch_size, self.mesh)
    datasets.check_data_files(config.data)  # Missing, empty, blank or non-UTF-8 files: one line, exit 2.
    if config.data.distill_from:
      distillation.check_teacher(config.data.distill_from, workdir)
    workdir_lib.check_writable(workdir)
    self.lock = TrainerLock(workdir).acquire()  # A second trainer on this workdir stops here.
    try:
      self._build(config, workdir)
    except BaseException:
      self.lock.release()
      raise

  def _build(self, config, workdir: str) -> None:
    """Data, tokenizer, model, optimizer, checkpointer and writers (the lock is held)."""
    train_texts = datasets.load_texts(config.data, "train")
    self.tokenizer = workdir_lib.load_or_train_tokenizer(workdir, config.data, train_texts)
    if config.data.distill_from:  # After the tokenizer: the student keeps the data's vocabulary (and the teacher's).
      train_texts = distillation.distilled_texts(train_texts, config.data.distill_from, workdir, config.seed)
    encode = lambda texts: batching.encode_corpus(texts, self.tokenizer, config.data.seq_len, config.data.mode,
                                                  config.data.conditional)
    self.train_tokens = encode(train_texts)
    warn_if_mostly_unknown(self.train_tokens, config.data.vocab_size)
    validation_texts = datasets.load_texts(config.data, "validation")
    self.validation_tokens = encode(validation_texts)
    # A conditional model's training-time samples are outputs for the first validation sources.
    self.sample_sources = list(dict.fromkeys(split_pair(text)[0] for text in validation_texts))[
        :config.train.num_samples] if config.data.conditional else []
    self.model = self.kind.build_model(config, self.tokenizer.vocab_size)
    self.optimizer = make_optimizer(config.train)
    self.root_key = jax.random.key(config.seed)
    self.checkpointer = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    self.writer = metrics.MetricWriter(workdir)
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    self.checkpoint_metadata = {"tokenizer_sha256": checkpoint.file_sha256(self.tokenizer.model_file)}
    self.nonfinite = numerics.NonFiniteMonitor()
    self.pipeline = None  # Made at the first evaluation that samples (see `sample`).

  def to_device(self, rows: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, rows)

  def local_batch(self, source: batching.BatchSource, index: int) -> jax.Array:
    return self.to_device(source.batch(index, jax.process_index(), jax.process_count()))

  def init_or_restore(self) -> dict:
    """A fresh state, or the latest valid checkpoint's (corrupt ones are set aside with a warning)."""
    init_fn, abstract_state, self.state_shardings = state_shapes_and_shardings(
        self.model, self.config, self.optimizer, self.mesh)
    latest = self.checkpointer.latest_valid_step()
    if latest is not None:
      config_utils.check_same_shapes(self.checkpointer.restore_config(latest), self.config, self.workdir)
      self.checkpointer.check_tokenizer(latest, self.tokenizer.model_file)
      latest, state = self.checkpointer.restore_newest(latest, abstract_state)
    if latest is None:
      return init_fn(jax.random.fold_in(self.root_key, PARAMS_KEY))
    if parallel.is_chief():
      print(f"Resuming from the checkpoint at step {latest} in {self.workdir}.")
    return state

  def compile_steps(self) -> None:
    self.train_step = jax.jit(make_train_step(self.model, self.config, self.optimizer),
                              in_shardings=(self.state_shardings, self.batch_sharding, None),
                              out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
                              donate_argnums=(0,))
    self.eval_step = jax.jit(make_eval_step(self.model, self.config), out_shardings=parallel.replicated(self.mesh))

  def check_finite(self, progress: tqdm) -> None:
    """At a boundary: stop (or warn, when skipping) if a step since the last look was NaN/Inf."""
    report = self.nonfinite.poll()
    if report is None:
      return
    if not self.config.train.skip_nonfinite_steps:
      progress.close()  # So the error starts a line of its own.
      self.checkpointer.close()  # Pending saves hold earlier, checked states: finish them.
      kept = self.checkpointer.latest_step()
      raise TrainingDivergedError(
          f"{report.describe()}; stopped without saving (last good checkpoint: "
          f"{f'step {kept} in {self.checkpointer.directory}' if kept is not None else 'none'}); lower "
          "--config.train.learning_rate or set --config.train.skip_nonfinite_steps=True")
    parallel.warn(f"{report.describe()}; skipped {report.new_bad_steps} such step(s) since the last "
                  f"report ({report.total_bad_steps} in all)")

  def log(self, step: int, step_metrics: dict, steps_in_window: int, seconds: float, progress: tqdm) -> dict:
    """Writes the step's metrics and throughput; returns them as `train/…` scalars."""
    step_metrics = jax.device_get(step_metrics)
    throughput = {"steps_per_second": steps_in_window / seconds,
                  "tokens_per_second": steps_in_window * self.config.train.batch_size * self.config.data.seq_len
                  / seconds}
    logged = {f"train/{k}": float(v) for k, v in step_metrics.items()} | {
        f"train/{k}": v for k, v in throughput.items()}
    if self.config.train.skip_nonfinite_steps:
      logged["train/skipped_steps"] = self.nonfinite.total_bad_steps
    self.writer.write(step, logged)
    progress.set_postfix(loss=f"{step_metrics['loss']:.3f}", tok_s=f"{throughput['tokens_per_second']:.0f}")
    return logged

  def sample(self, state: dict) -> list[str]:
    """The kind's samples from the EMA weights, or none (num_samples=0 or a kind that does not).

    One pipeline for the whole run: later evaluations reuse its compiled sampler.
    """
    if not (self.config.train.num_samples and self.kind.samples_while_training):
      return []
    if self.pipeline is None:
      self.pipeline = self.kind.make_pipeline(self.config, self.model, state, self.tokenizer, self.mesh, None)
    self.pipeline.use_weights(state["ema_params"], state.get("time_warp"))
    if self.sample_sources:
      outputs = self.pipeline.generate(self.sample_sources, seed=self.config.seed)
      return [f"{source}{PAIR_SEPARATOR}{output}" for source, output in zip(self.sample_sources, outputs)]
    return self.pipeline.sample(self.config.train.num_samples, seed=self.config.seed)

  def evaluate_and_sample(self, step: int, state: dict) -> tuple[dict, list[str]]:
    """Validation loss of the EMA weights (and samples, written to WORKDIR/samples/step_N.txt)."""
    source = batching.BatchSource(self.validation_tokens, self.config.train.batch_size, seed=self.config.seed,
                                  shuffle=False)
    results = [self.eval_step(state["ema_params"], self.local_batch(source, i), self.root_key, i)
               for i in range(self.config.train.eval_batches)]
    scalars = {f"validation/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
    self.writer.write(step, scalars)
    samples = self.sample(state)
    if samples:
      workdir_lib.write_samples(self.workdir, step, samples)
    return scalars, samples

  def save(self, step: int, state: dict) -> None:
    self.checkpointer.save(step, state, config_utils.to_dict(self.config), self.checkpoint_metadata)

  def loop(self) -> dict:
    """Steps from the restored (or initial) state to `num_steps`, logging, evaluating and saving."""
    config, num_steps = self.config, self.config.train.num_steps
    state = self.init_or_restore()
    self.compile_steps()
    source = batching.BatchSource(self.train_tokens, config.train.batch_size, seed=config.seed,
                                  source_dropout=config.data.source_dropout)
    step = int(state["step"])
    last_metrics, samples, preempted = {}, [], False
    if step >= num_steps and self.checkpointer.latest_step() is not None and parallel.is_chief():
      print(f"{self.workdir} already holds a finished run (step {step} of {num_steps}); not retraining.")
    progress = tqdm(total=num_steps, initial=step, desc="train", disable=not parallel.is_chief(),
                    dynamic_ncols=True, mininterval=2.0)
    next_batch = self.local_batch(source, step) if step < num_steps else None
    window_start, window_steps = time.perf_counter(), 0
    at = lambda every: step % every == 0 or step == num_steps
    while step < num_steps:
      state, step_metrics = self.train_step(state, next_batch, self.root_key)
      step += 1
      window_steps += 1
      next_batch = self.local_batch(source, step) if step < num_steps else None  # Overlaps the device step.
      progress.update(1)
      self.nonfinite.record(step, step_metrics.pop("nonfinite"))
      preempted = self.preemption.should_stop(step) and step < num_steps  # At the last step, just finish.
      if preempted or any(at(n) for n in (config.train.log_every, config.train.eval_every,
                                          config.train.checkpoint_every)):
        self.check_finite(progress)  # Only where the loop syncs anyway, and before anything is saved.
      if at(config.train.log_every):
        last_metrics = self.log(step, step_metrics, window_steps, time.perf_counter() - window_start, progress)
        window_start, window_steps = time.perf_counter(), 0
      if preempted:  # Save now and go: the grace period is short, so no evaluation or sampling.
        self.save(step, state)
        break
      if at(config.train.eval_every):
        scalars, samples = self.evaluate_and_sample(step, state)
        last_metrics |= scalars
        window_start, window_steps = time.perf_counter(), 0  # Evaluation time is not throughput.
      if at(config.train.checkpoint_every):
        self.save(step, state)
    progress.close()
    if num_steps == 0 and self.checkpointer.latest_step() is None:  # The initial model, to sample or score.
      self.save(0, state)
      if parallel.is_chief():
        print(f"--config.train.num_steps=0: nothing to train; saved the initial model as step 0 in {self.workdir}.")
    if not samples and not preempted:
      samples = self.sample(state)
    return {"step": step, "samples": samples, "preempted": preempted,
            "stop_signal": self.preemption.stop_signal if preempted else None, **last_metrics}


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the model `config` describes in `workdir`; returns the last metrics.

  On SIGTERM, Ctrl-C (or a preemption notice on a pod) it saves a checkpoint at the current step
  and returns early with `preempted=True` and `stop_signal`; NaN/Inf raises TrainingDivergedError (see numerics.py).

  Example:
    >>> from configs import tiny
    >>> metrics = train(tiny.get_config(), "/tmp/tiny")
  """
  with PreemptionWatcher() as preemption:  # Restores the previous signal handlers after.
    run = _Run(config, workdir, preemption)
    try:
      with parallel.activate(run.mesh, run.rules):
        result = run.loop()
      run.checkpointer.close()  # Waits for the last async save: after this the checkpoint is on disk.
      run.writer.close()
    finally:
      run.lock.release()
  if result["preempted"] and parallel.is_chief():
    cause = "Ctrl-C (SIGINT)" if result["stop_signal"] == "SIGINT" else "a preemption notice (SIGTERM)"
    print(f"Stopped by {cause} at step {result['step']}; saved a checkpoint at step "
          f"{result['step']} in {run.checkpointer.directory}. Run the same command again to resume.", flush=True)
  return result


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
  model = kinds.get(config.model.kind).build_model(config, config.data.vocab_size)
  with parallel.activate(mesh, parallel.logical_rules(config.mesh)):
    _, abstract_state, _ = state_shapes_and_shardings(model, config, make_optimizer(config.train), mesh)
  return parallel.sharding_report(abstract_state, mesh)
