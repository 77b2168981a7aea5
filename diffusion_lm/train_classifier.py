"""The semantic-content classifier for guidance: p(field = value | z_t, t) on E2E latents.

Trained on the noisy latents z_t = α_t E[w] + σ_t ε of the E2E training references, where E is
the (frozen, EMA) embedding table of a trained diffusion workdir and the labels are the fields
of each reference's meaning representation (`name[The Eagle], food[Italian], …`); a field the
MR does not mention is labelled "none". It is saved under `WORKDIR/classifier/` and loaded by
`Pipeline.guidance([...])` and `python -m diffusion_lm.sample --control=food=Italian`.

Example:
  python -m diffusion_lm.train_classifier --workdir=runs/e2e --steps=2000
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from flax import serialization

from diffusion_lm import cli, control
from diffusion_lm.diffusion import guidance as guidance_lib
from diffusion_lm.diffusion import schedules
from diffusion_lm.diffusion.model_fns import bind_denoiser
from diffusion_lm.errors import UserError
from diffusion_lm.models.classifier import LatentClassifier

CLASSIFIER_DIR = "classifier"
E2E_FIELDS = ("name", "eatType", "priceRange", "customer rating", "near", "food", "area", "familyFriendly")
NONE_VALUE = "none"  # Label of a field the MR does not mention (index 0 of every field).
_MR_ITEM = re.compile(r"\s*([^,\[\]]+?)\s*\[([^\]]*)\]")


def parse_mr(mr: str) -> dict[str, str]:
  """`"name[The Eagle], food[Italian]"` → {"name": "The Eagle", "food": "Italian"}.

  Example:
    >>> parse_mr("name[Blue Spice], eatType[coffee shop], area[city centre]")["area"]
    'city centre'
  """
  return {field: value.strip() for field, value in _MR_ITEM.findall(mr)}


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """Fields and their values (sorted; "none" is index 0 of each field, not listed here).

  Example:
    >>> space = LabelSpace.from_mrs(["name[A], food[Italian]", "food[French]"])
    >>> space.index("food", "Italian"), space.labels("food[French]")
    ((5, 2), array([0, 0, 0, 0, 0, 1, 0, 0], dtype=int32))
  """
  fields: tuple[str, ...]
  values: Mapping[str, tuple[str, ...]]

  @classmethod
  def from_mrs(cls, mrs: Sequence[str], fields: Sequence[str] = E2E_FIELDS) -> LabelSpace:
    seen = {field: set() for field in fields}
    for mr in mrs:
      for field, value in parse_mr(mr).items():
        if field in seen:
          seen[field].add(value)
    return cls(tuple(fields), {field: tuple(sorted(seen[field])) for field in fields})

  @property
  def value_counts(self) -> tuple[int, ...]:
    return tuple(len(self.values[field]) + 1 for field in self.fields)

  def index(self, field: str, value: str) -> tuple[int, int]:
    """(field index, value index) of a (canonically spelled) pair."""
    return self.fields.index(field), self.values[field].index(value) + 1

  def labels(self, mr: str) -> np.ndarray:
    """int32 [num_fields]: each field's value index, 0 where absent or unseen."""
    parsed = parse_mr(mr)
    return np.array([self.values[f].index(parsed[f]) + 1 if parsed.get(f) in self.values[f] else 0
                     for f in self.fields], np.int32)

  def to_json(self) -> dict:
    return {"fields": list(self.fields), "values": {f: list(v) for f, v in self.values.items()}}

  @classmethod
  def from_json(cls, data: dict) -> LabelSpace:
    return cls(tuple(data["fields"]), {f: tuple(v) for f, v in data["values"].items()})


class SemanticClassifier:
  """A trained `LatentClassifier` with its label space; builds `Guidance` for field=value targets.

  Example:
    >>> classifier = SemanticClassifier.load("runs/e2e")
    >>> guide = classifier.guidance(["food=Italian"], batch_size=8)
  """

  def __init__(self, module: LatentClassifier, params, label_space: LabelSpace, info: dict | None = None):
    self.module, self.params, self.label_space, self.info = module, params, label_space, info or {}

    def log_prob(params, z_BLD, t_B, targets_BC2):
      return guidance_lib.field_value_log_prob(self.module.apply({"params": params}, z_BLD, t_B), targets_BC2)
    self.log_prob_fn = log_prob  # One object per classifier, so jitted samplers are reused.

  def parse(self, specs: Sequence[str]) -> list[tuple[str, str]]:
    """Validated (field, value) pairs from `field=value` strings (see control.parse_controls)."""
    return control.parse_controls(specs, self.label_space.values)

  def targets(self, pairs: Sequence[tuple[str, str]] | Sequence[Sequence[tuple[str, str]]],
              batch_size: int) -> np.ndarray:
    """int32 [B, C, 2]: the same pairs for every row, or one list of pairs per row (padded with -1)."""
    per_row = pairs if pairs and isinstance(pairs[0], list) else [list(pairs)] * batch_size
    if len(per_row) != batch_size:
      raise ValueError(f"{len(per_row)} rows of targets for a batch of {batch_size}")
    width = max(1, max(len(row) for row in per_row))
    targets = np.full((batch_size, width, 2), -1, np.int32)
    for b, row in enumerate(per_row):
      for c, (field, value) in enumerate(row):
        targets[b, c] = self.label_space.index(field, value)
    targets[..., 1] = np.maximum(targets[..., 1], 0)
    return targets

  def guidance(self, specs_or_pairs, batch_size: int, fluency_weight: float = guidance_lib.FLUENCY_WEIGHT,
               step_size: float = guidance_lib.STEP_SIZE,
               num_steps: int = guidance_lib.NUM_STEPS) -> guidance_lib.Guidance:
    """Guidance towards `["food=Italian", ...]` (or parsed pairs, or one list per row).

    Example:
      >>> classifier.guidance(["food=Italian", "area=riverside"], batch_size=4, fluency_weight=0.01)
    """
    pairs = specs_or_pairs
    if specs_or_pairs and isinstance(specs_or_pairs[0], str):
      pairs = self.parse(specs_or_pairs)
    return guidance_lib.Guidance(log_prob_fn=self.log_prob_fn, params=self.params,
                                 targets=jnp.asarray(self.targets(pairs, batch_size)),
                                 fluency_weight=fluency_weight, step_size=step_size, num_steps=num_steps)

  def score_tokens(self, tokens_BL: np.ndarray, embedding_VD, pairs) -> np.ndarray:
    """log p(c | E[w], t=0) per row: how strongly the classifier sees the targets in finished text."""
    tokens_BL = np.asarray(tokens_BL)
    targets = jnp.asarray(self.targets(pairs, len(tokens_BL)))
    clean_BLD = jnp.take(jnp.asarray(embedding_VD), tokens_BL, axis=0)
    return np.asarray(self.log_prob_fn(self.params, clean_BLD, jnp.zeros(len(tokens_BL)), targets))

  def save(self, workdir: str) -> str:
    directory = os.path.join(workdir, CLASSIFIER_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "params.msgpack"), "wb") as f:
      f.write(serialization.to_bytes(self.params))
    architecture = {k: getattr(self.module, k) for k in ("max_len", "d_model", "num_layers", "num_heads", "mlp_dim")}
    with open(os.path.join(directory, "classifier.json"), "w") as f:
      json.dump({"architecture": architecture, "labels": self.label_space.to_json(), "info": self.info}, f, indent=1)
    return directory

  @classmethod
  def load(cls, workdir: str) -> SemanticClassifier:
    """Loads `WORKDIR/classifier/`; a UserError with the training command if it is missing."""
    directory = os.path.join(workdir, CLASSIFIER_DIR)
    meta_path = os.path.join(directory, "classifier.json")
    if not os.path.exists(meta_path):
      raise UserError(f"no semantic classifier in {directory}; train one with "
                      f"python -m diffusion_lm.train_classifier --workdir={workdir}")
    with open(meta_path) as f:
      meta = json.load(f)
    label_space = LabelSpace.from_json(meta["labels"])
    module = LatentClassifier(value_counts=label_space.value_counts, **meta["architecture"])
    # Only the tree structure is needed to restore into: shapes, no initialisation.
    template = jax.eval_shape(lambda: init_params(module, jax.random.key(0), meta["info"]["embed_dim"]))
    with open(os.path.join(directory, "params.msgpack"), "rb") as f:
      params = jax.tree.map(jnp.asarray, serialization.from_bytes(template, f.read()))
    return cls(module, params, label_space, meta["info"])


def _strip_boxes(tree):
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def init_params(module: LatentClassifier, rng: jax.Array, embed_dim: int):
  # Jitted: an eager init compiles every small op on its own (~100 compilations).
  init = jax.jit(lambda key: _strip_boxes(module.init(key, jnp.zeros((1, module.max_len, embed_dim)),
                                                      jnp.zeros((1,)))["params"]))
  return init(rng)


def e2e_pairs(data_config, split: str) -> tuple[list[str], list[str]]:
  """(references, their MRs) of an E2E split, in the same order.

  Example:
    >>> refs, mrs = e2e_pairs(pipe.config.data, "test")
  """
  from diffusion_lm.data import datasets
  if data_config.name != "e2e":
    raise UserError(f"the semantic classifier needs an E2E workdir (data.name='e2e'), not {data_config.name!r}")
  as_dict = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  refs = datasets.load_texts(ml_collections.ConfigDict({**as_dict, "text_field": "ref"}), split)
  mrs = datasets.load_texts(ml_collections.ConfigDict({**as_dict, "text_field": "mr"}), split)
  return refs, mrs


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
  from diffusion_lm import pipeline
  from diffusion_lm.data import pipeline as data_pipeline
  if num_steps < 1 or batch_size < 1:
    raise UserError("--steps and --batch_size must be >= 1")
  start = time.perf_counter()
  pipe = pipeline.load(workdir)
  config = pipe.config
  refs, mrs = e2e_pairs(config.data, "train")
  val_refs, val_mrs = e2e_pairs(config.data, "validation")
  label_space = LabelSpace.from_mrs(mrs)
  seq_len = config.data.seq_len
  tokens_NL = data_pipeline.encode_corpus(refs, pipe.tokenizer, seq_len, "pad")
  labels_NF = np.stack([label_space.labels(mr) for mr in mrs])
  val_tokens = data_pipeline.encode_corpus(val_refs, pipe.tokenizer, seq_len, "pad")[:512]
  val_labels = np.stack([label_space.labels(mr) for mr in val_mrs])[:512]

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
    alpha_B, sigma_B = schedules.alpha_sigma(log_snr_fn(t_B))
    clean_BLD = jnp.take(embedding_VD, tokens_BL, axis=0)
    return alpha_B[:, None, None] * clean_BLD + sigma_B[:, None, None] * jax.random.normal(key, clean_BLD.shape)

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


FLAGS = flags.FLAGS


def main(argv):
  del argv
  train_classifier(FLAGS.workdir, FLAGS.steps, FLAGS.batch_size, FLAGS.learning_rate, FLAGS.d_model,
                   FLAGS.num_layers, FLAGS.seed)


def run():
  """Console-script entry point (`diffusion-lm-train-classifier`)."""
  flags.DEFINE_string("workdir", None, "A trained E2E diffusion workdir; the classifier is saved in it.")
  flags.DEFINE_integer("steps", 2000, "Optimiser steps.")
  flags.DEFINE_integer("batch_size", 64, "References per step.")
  flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
  flags.DEFINE_integer("d_model", 64, "Classifier width.")
  flags.DEFINE_integer("num_layers", 2, "Classifier Transformer blocks.")
  flags.DEFINE_integer("seed", 0, "Seed for data order, noise and initialisation.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
