"""What a model kind is: everything the trainer, the scorer, the loader and the FLOP count ask of it.

One `ModelKind` per kind (kinds/diffusion.py, kinds/autoregressive.py); kinds/__init__.py is the
registry that `config.model.kind` names an entry of. The train loop, the eval binary,
`pipeline.load` and `kinds.train_step_flops` never switch on the kind: they call these fields.

Example:
  >>> kind = kinds.get("diffusion")
  >>> model = kind.build_model(config, vocab_size=1000)
  >>> loss, metrics = kind.make_loss_fn(model, config)(params, tokens_BL, key, True)
"""

import dataclasses
from collections.abc import Callable
from typing import Any

LossFn = Callable[..., tuple[Any, dict]]  # (params, tokens_BL, rng, train, t_B=None) → (loss, metrics)


def no_extra_state(config) -> dict:
  """A kind whose train state is params, EMA params and optimizer state only."""
  del config
  return {}


def no_train_times(state: dict, key, batch_size: int):
  """Times drawn inside the loss (or none at all): nothing for the train step to choose."""
  del state, key, batch_size
  return None


def no_state_update(state: dict, per_example: dict) -> dict:
  """No train-state entry changes beside the optimizer's."""
  del state, per_example
  return {}


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """One kind of model, as the rest of the project sees it.

  Attributes:
    name: the `config.model.kind` value.
    build_model: (config, vocab_size) → the Flax module.
    init_variables: (model, config, rng) → boxed variables for a batch of one sequence.
    make_loss_fn: (model, config) → loss(params, tokens_BL, rng, train, t_B=None) → (loss, metrics);
      metrics named "per_example/…" go to `update_extra_state`, not to the logs.
    init_extra_state: config → train-state entries beside params / EMA / optimizer state
      (diffusion: CDCD's time-warp loss table).
    train_times: (state, key, batch_size) → the batch's times for the loss, or None.
    update_extra_state: (state, per-example metrics) → updated extra entries.
    row_fn: (model, config, scoring.ScoringOptions) → a row function for `scoring.score_rows`.
    report: (per-row figures, options) → the eval report (a bound or an exact NLL).
    make_pipeline: (config, model, state, tokenizer, mesh, step) → the inference pipeline.
    train_step_flops: (config, vocab_size) → model FLOPs of one optimizer step.
    samples_while_training: whether the train loop writes samples at each evaluation.
    conditional: whether it trains on (source, target) rows (`config.data.conditional`).
  """
  name: str
  build_model: Callable
  init_variables: Callable
  make_loss_fn: Callable[..., LossFn]
  row_fn: Callable
  report: Callable
  make_pipeline: Callable
  train_step_flops: Callable[..., int]
  init_extra_state: Callable[..., dict] = no_extra_state
  train_times: Callable = no_train_times
  update_extra_state: Callable[..., dict] = no_state_update
  samples_while_training: bool = False
  conditional: bool = False
