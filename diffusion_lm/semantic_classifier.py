"""The semantic-content classifier: E2E meaning representations as labels, and the trained
p(field = value | z_t, t) on diffusion latents that guidance steers by.

Labels come from each reference's meaning representation (`name[The Eagle], food[Italian], …`);
a field the MR does not mention is labelled "none". A trained classifier lives in
`WORKDIR/classifier/` (classifier_trainer.py writes it); `Pipeline.guidance([...])` and
`python -m diffusion_lm.sample --control=food=Italian` load it.

Example:
  >>> classifier = SemanticClassifier.load("runs/e2e")
  >>> guide = classifier.guidance(["food=Italian"], batch_size=8)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from diffusion_lm import control, parallel
from diffusion_lm.data import datasets
from diffusion_lm.diffusion import guidance as guidance_lib
from diffusion_lm.errors import UserError
from diffusion_lm.models.classifier import LatentClassifier

CLASSIFIER_DIR = "classifier"
PARAMS_FILE, META_FILE = "params.msgpack", "classifier.json"
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
    """Writes WORKDIR/classifier/ atomically: both files go to a new directory that replaces the
    old one in one rename, and classifier.json holds the sha256 of params.msgpack."""
    directory = os.path.join(workdir, CLASSIFIER_DIR)
    staging = f"{directory}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    params_bytes = serialization.to_bytes(self.params)
    with open(os.path.join(staging, PARAMS_FILE), "wb") as f:
      f.write(params_bytes)
    architecture = {k: getattr(self.module, k) for k in ("max_len", "d_model", "num_layers", "num_heads", "mlp_dim")}
    with open(os.path.join(staging, META_FILE), "w") as f:
      json.dump({"architecture": architecture, "labels": self.label_space.to_json(), "info": self.info,
                 "params_sha256": hashlib.sha256(params_bytes).hexdigest()}, f, indent=1)
    if os.path.isdir(directory):  # The old classifier stays whole until the new one is complete.
      replaced = f"{directory}.old"
      shutil.rmtree(replaced, ignore_errors=True)
      os.rename(directory, replaced)
      os.rename(staging, directory)
      shutil.rmtree(replaced)
    else:
      os.rename(staging, directory)
    return directory

  @classmethod
  def load(cls, workdir: str) -> SemanticClassifier:
    """Loads `WORKDIR/classifier/`; a UserError with the training command if it is missing."""
    directory = os.path.join(workdir, CLASSIFIER_DIR)
    meta_path = os.path.join(directory, "classifier.json")
    if not os.path.exists(meta_path):
      if os.path.isdir(f"{directory}.old"):  # A save stopped between its two renames: the old one is whole.
        raise UserError(f"no semantic classifier in {directory}, but the previous one is intact in "
                        f"{directory}.old (a save was interrupted); rename it back, or retrain")
      raise UserError(f"no semantic classifier in {directory}; train one with "
                      f"python -m diffusion_lm.train_classifier --workdir={workdir}")
    retrain = f"retrain it: python -m diffusion_lm.train_classifier --workdir={workdir}"
    try:
      with open(meta_path) as f:
        meta = json.load(f)
      label_space = LabelSpace.from_json(meta["labels"])
      module = LatentClassifier(value_counts=label_space.value_counts, **meta["architecture"])
      embed_dim = meta["info"]["embed_dim"]
    except (OSError, ValueError, KeyError, TypeError) as error:
      raise UserError(f"{meta_path} is unreadable ({type(error).__name__}: {str(error)[:100]}); {retrain}") from None
    params_path = os.path.join(directory, PARAMS_FILE)
    try:
      with open(params_path, "rb") as f:
        params_bytes = f.read()
    except OSError as error:
      raise UserError(f"{params_path} is unreadable ({error.strerror}); {retrain}") from None
    expected = meta.get("params_sha256")  # Classifiers saved before checksums have none.
    if expected and hashlib.sha256(params_bytes).hexdigest() != expected:
      raise UserError(f"{params_path} does not match its checksum in {META_FILE} (truncated or corrupted); {retrain}")
    # Only the tree structure is needed to restore into: shapes, no initialisation.
    template = jax.eval_shape(lambda: init_params(module, jax.random.key(0), embed_dim))
    try:
      params = jax.tree.map(jnp.asarray, serialization.from_bytes(template, params_bytes))
    except (ValueError, KeyError, TypeError) as error:
      raise UserError(f"{params_path} is not this classifier's parameters ({type(error).__name__}); {retrain}") from None
    return cls(module, params, label_space, meta["info"])


def init_params(module: LatentClassifier, rng: jax.Array, embed_dim: int):
  # Jitted: an eager init compiles every small op on its own (~100 compilations).
  init = jax.jit(lambda key: parallel.strip_boxes(module.init(key, jnp.zeros((1, module.max_len, embed_dim)),
                                                      jnp.zeros((1,)))["params"]))
  return init(rng)


def e2e_pairs(data_config, split: str) -> tuple[list[str], list[str]]:
  """(references, their MRs) of an E2E split, in the same order.

  Example:
    >>> refs, mrs = e2e_pairs(pipe.config.data, "test")
  """
  if data_config.name != "e2e":
    raise UserError(f"the semantic classifier needs an E2E workdir (data.name='e2e'), not {data_config.name!r}")
  as_dict = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  refs = datasets.load_texts(ml_collections.ConfigDict({**as_dict, "text_field": "ref"}), split)
  mrs = datasets.load_texts(ml_collections.ConfigDict({**as_dict, "text_field": "mr"}), split)
  return refs, mrs
