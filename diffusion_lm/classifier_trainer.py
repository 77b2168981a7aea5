"""Training the semantic classifier of a diffusion workdir (the library behind the
`train_classifier` binary).

Trained on the noisy latents z_t = α_t E[w] + σ_t ε of the E2E training references, where E is
the (frozen, EMA) embedding table of a trained diffusion workdir and the labels are the fields of
each reference's meaning representation (semantic_classifier.LabelSpace).

Example:
  >>> info = train_classifier("runs/e2e", num_steps=2000)
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_lm import pipeline, workdir as workdir_lib
from diffusion_lm.data import batching
from diffusion_lm.diffusion import process
from diffusion_lm.diffusion.model_fns import bind_denoiser
from diffusion_lm.errors import UserError
from diffusion_lm.models.classifier import LatentClassifier
from diffusion_lm.semantic_classifier import LabelSpace, SemanticClassifier, e2e_pairs, init_params


def labelled_rows(pipe, refs: list[str], mrs: list[str], label_space: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
  """(token rows [N, L], labels [N, fields]) of E2E references and their MRs, in the model's layout."""
  tokens_NL = batching.encode_corpus(refs, pipe.tokenizer, pipe.config.data.seq_len, "pad")
  return tokens_NL, np.stack([label_space.labels(mr) for mr in mrs])


def train_classifier(workdir: str, num_steps: int = 2000, batch_size: int = 64, learning_rate: float = 1e-3,
                     d_model: int = 64, num_layers: int = 2, seed: int = 0, log=print) -> dict:
  """Trains the semantic classifier on `workdir`'s E2E latents and saves it there.

  Args:
    workdir: a trained diffusion workdir (its latest checkpoint's EMA embeddings are used).
    num_steps: optimiser steps.
    batch_size: references per step.
    learning_rate: AdamW peak learning rate (cosine decay).
    d_model: classifier width.
    num_layers: classifier Transformer blocks.
    seed: data order, noise and init.
    log: where progress lines go.

  Returns:
    Metrics: train loss, validation accuracy per noise level, seconds.

  Example:
    >>> metrics = train_classifier("runs/e2e", num_steps=2000)
  """
  if num_steps < 1 or batch_size < 1:
    raise UserError("--steps and --batch_size must be >= 1")
  start = time.perf_counter()
  workdir_lib.check_writable(workdir)  # The classifier is saved there: fail now, not after training.
  pipe = pipeline.load(workdir)
  seq_len = pipe.config.data.seq_len
  refs, mrs = e2e_pairs(pipe.config.data, "train")
  label_space = LabelSpace.from_mrs(mrs)
  tokens_NL, labels_NF = labelled_rows(pipe, refs, mrs, label_space)
  val_tokens, val_labels = (rows[:512] for rows in labelled_rows(pipe, *e2e_pairs(pipe.config.data, "validation"),
                                                                  label_space))

  # The table the sampler moves in (normalised if the model normalises it), and its schedule.
  embedding_VD = jnp.asarray(jax.device_get(bind_denoiser(pipe.model, pipe.params).embedding_table))
  log_snr_fn = pipe.log_snr_fn
  module = LatentClassifier(value_counts=label_space.value_counts, max_len=seq_len, d_model=d_model,
                            num_layers=num_layers, num_heads=4, mlp_dim=4 * d_model)
  rng = jax.random.key(seed)
  params = init_params(module, jax.random.fold_in(rng, 0), embedding_VD.shape[-1])
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, num_steps // 10 + 1),
                                                             num_steps + 1), weight_decay=0.01)

  def noisy_latents(tokens_BL, t_B, key):
    alpha_B, sigma_B = process.alpha_sigma(log_snr_fn(t_B))
    clean_BLD = jnp.take(embedding_VD, tokens_BL, axis=0)
    return process.diffuse(clean_BLD, alpha_B, sigma_B, jax.random.normal(key, clean_BLD.shape))

  def loss_fn(params, tokens_BL, labels_BF, key):
    time_key, noise_key = jax.random.split(key)
    t_B = jax.random.uniform(time_key, (tokens_BL.shape[0],))
    logits_BFV = module.apply({"params": params}, noisy_latents(tokens_BL, t_B, noise_key), t_B)
    return jnp.mean(jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_BFV, labels_BF), axis=-1))

  @jax.jit
  def train_step(params, opt_state, tokens_BL, labels_BF, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BL, labels_BF, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def accuracy(params, tokens_BL, labels_BF, t, key):
    t_B = jnp.full((tokens_BL.shape[0],), t)
    predicted_BF = jnp.argmax(module.apply({"params": params}, noisy_latents(tokens_BL, t_B, key), t_B), -1)
    mentioned_BF = labels_BF > 0
    return jnp.sum((predicted_BF == labels_BF) & mentioned_BF) / jnp.maximum(jnp.sum(mentioned_BF), 1)

  opt_state = optimizer.init(params)
  order = np.random.default_rng(seed)
  last_loss = None
  for step in range(1, num_steps + 1):
    rows = order.integers(0, len(tokens_NL), batch_size)
    params, opt_state, loss = train_step(params, opt_state, tokens_NL[rows], labels_NF[rows],
                                         jax.random.fold_in(rng, step))
    if step % max(1, num_steps // 10) == 0 or step == num_steps:
      last_loss = float(loss)
      log(f"classifier step {step}/{num_steps}: loss {last_loss:.3f}")
  # Accuracy on the mentioned fields of validation references, per noise level.
  val_accuracy = {f"t={t}": float(accuracy(params, val_tokens, val_labels, t, jax.random.key(1)))
                  for t in (0.0, 0.3, 0.6, 0.9)}
  info = {"diffusion_step": pipe.step, "embed_dim": int(embedding_VD.shape[-1]), "num_steps": num_steps,
          "batch_size": batch_size, "final_train_loss": last_loss,
          "validation_accuracy_on_mentioned_fields": val_accuracy,
          "seconds": round(time.perf_counter() - start, 1)}
  directory = SemanticClassifier(module, params, label_space, info).save(workdir)
  log(f"Saved the classifier to {directory}: validation accuracy (mentioned fields) {val_accuracy}")
  return info
