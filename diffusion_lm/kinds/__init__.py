"""The registry of model kinds: `config.model.kind` names one entry.

Adding a kind is one new module here that builds a `ModelKind` (kinds/base.py) and one line in
`KINDS`; the trainer, the eval binary, `pipeline.load`, the config's choice list and the FLOP
count pick it up from here.

Example:
  >>> kind = kinds.get(config.model.kind)
  >>> model = kind.build_model(config, tokenizer.vocab_size)
"""

from diffusion_lm.errors import ConfigError
from diffusion_lm.kinds import autoregressive, diffusion, masked
from diffusion_lm.kinds.base import ModelKind

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (diffusion.KIND, autoregressive.KIND, masked.KIND)}


def get(name: str) -> ModelKind:
  """The kind called `name`; a ConfigError listing the kinds otherwise."""
  if name not in KINDS:
    raise ConfigError(f"--config.model.kind={name!r} is not valid; choose one of {', '.join(KINDS)}")
  return KINDS[name]


def train_step_flops(config, vocab_size: int) -> int:
  """Model FLOPs of one optimizer step of `config`'s kind (matmuls only; see flops.py).

  Example:
    >>> train_step_flops(bench.get_config(), vocab_size=1000) / 1e9   # GFLOP per step
  """
  return get(config.model.kind).train_step_flops(config, vocab_size)


__all__ = ["KINDS", "ModelKind", "get", "train_step_flops"]
