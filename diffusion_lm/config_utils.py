"""Config checks and (de)serialisation, in one place, run before any work starts.

Example:
  >>> validate(config)           # raises ConfigError with one line naming the field and the fix
  >>> config = from_dict(to_dict(config))
"""

import ast
import json
import math

import ml_collections

from configs import base
from diffusion_lm import kinds
from diffusion_lm.data import batching, datasets, tokenizer
from diffusion_lm.diffusion import objectives, samplers, schedules
from diffusion_lm.errors import CheckpointError, ConfigError
from diffusion_lm.models import denoiser, transformer

# Each field's allowed values, read from the registry that implements them.
CHOICES = {
    "data.name": datasets.SOURCES,
    "data.e2e_source": datasets.E2E_SOURCES,
    "data.text_field": datasets.E2E_TEXT_FIELDS,
    "data.tokenizer": tokenizer.MODEL_TYPES,
    "data.mode": batching.ENCODE_MODES,
    "model.kind": tuple(kinds.KINDS),
    "model.parameterization": denoiser.PARAMETERIZATIONS,
    "model.time_conditioning": denoiser.TIME_CONDITIONINGS,
    "model.dtype": transformer.COMPUTE_DTYPES,
    "model.attention": tuple(transformer.ATTENTION_IMPLEMENTATIONS),
    "model.positions": transformer.POSITIONS,
    "diffusion.schedule": (*schedules.SCHEDULES, "learned"),
    "diffusion.objective": tuple(objectives.OBJECTIVES),
    "sample.sampler": tuple(samplers.STEPS),
}

# (field, lowest allowed value, highest allowed value or None).
RANGES = (
    ("data.seq_len", 2, None), ("data.vocab_size", 8, None),
    ("model.embed_dim", 1, None), ("model.d_model", 1, None), ("model.num_layers", 1, None),
    ("model.num_heads", 1, None), ("model.mlp_dim", 1, None), ("model.dropout", 0.0, 0.99),
    ("diffusion.num_timesteps", 1, None), ("diffusion.self_cond_rate", 0.0, 1.0),
    ("train.num_steps", 0, None), ("train.batch_size", 1, None), ("train.learning_rate", 0.0, None),
    ("train.warmup_steps", 0, None), ("train.weight_decay", 0.0, None), ("train.grad_clip", 0.0, None),
    ("train.ema_decay", 0.0, 1.0), ("train.log_every", 1, None), ("train.eval_every", 1, None),
    ("train.eval_batches", 1, None), ("train.checkpoint_every", 1, None), ("train.keep_checkpoints", 1, None),
    ("train.num_samples", 0, None), ("sample.steps", 1, None), ("sample.temperature", 1e-3, None),
    ("diffusion.time_warp_bins", 2, None), ("data.source_dropout", 0.0, 0.99), ("sample.model_time_floor", 0.0, 1.0),
    ("mesh.cpu_devices", 1, None), ("sample.source_coverage", 0.0, None), ("sample.renoise_correlation", -0.99, 0.99),
)

# Fields that fix the shapes of the parameters: a checkpoint only restores if they agree.
SHAPE_FIELDS = ("data.seq_len", "data.conditional", "data.tokenizer", "data.vocab_size", "model.kind", "model.embed_dim",
                "model.d_model", "model.num_layers", "model.num_heads", "model.mlp_dim",
                "model.parameterization", "model.self_conditioning", "model.tie_embeddings", "diffusion.time_warping",
                "diffusion.time_warp_bins", "model.time_conditioning", "model.positions")


def get_field(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted fields in place, as `--config.a.b=v` would; returns the config.

  Example:
    >>> apply_overrides(config, {"train.num_steps": 600, "model.embed_dim": 32})
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    section = config
    for parent in parents:
      section = section[parent]
    section[leaf] = value
  return config


def parse_typed(text: str, current):
  """`text` as the type of a field's current value (bools accept True/False/true/false/1/0).

  Example:
    >>> parse_typed("0.7", 1.0), parse_typed("false", True)
    (0.7, False)
  """
  if isinstance(current, bool):
    if text.lower() in ("true", "1"):
      return True
    if text.lower() in ("false", "0"):
      return False
    raise ConfigError(f"{text!r} is not a bool; use True or False")
  if isinstance(current, str):
    return text
  try:
    return type(current)(ast.literal_eval(text))
  except (ValueError, SyntaxError, TypeError):
    raise ConfigError(f"{text!r} is not of type {type(current).__name__}") from None


def override_fields(config: ml_collections.ConfigDict, items, where: str = "") -> ml_collections.ConfigDict:
  """Sets each "section.field=value" item in place, the value read as the field's current type.

  Example:
    >>> override_fields(pipe.config, ["sample.warped_grid=false", "sample.temperature=0.7"])
  """
  for item in items:
    field, equals, text = item.partition("=")
    if not equals:
      raise ConfigError(f"override {item!r}{f' in {where!r}' if where else ''} is not field=value")
    *parents, leaf = field.strip().split(".")
    section = config
    try:
      for parent in parents:
        section = section[parent]
      current = section[leaf]
    except (KeyError, AttributeError):
      raise ConfigError(f"override {item!r}: the config has no field {field!r}") from None
    try:
      section[leaf] = parse_typed(text.strip(), current)
    except ConfigError as error:
      raise ConfigError(f"override {item!r}{f' in {where!r}' if where else ''}: {error}") from None
  return config


def apply_sample_settings(config: ml_collections.ConfigDict, settings: list[str]) -> ml_collections.ConfigDict:
  """Sets `config.sample` fields from "FIELD=VALUE" strings (the sample binary's --sample_setting), typed as the
  field is, and validates the result; raises ConfigError on an unknown field or a bad value.

  Example:
    >>> apply_sample_settings(config, ["renoise_correlation=-0.6", "draw_tokens=true"])
  """
  for setting in settings:
    field, equals, _ = setting.partition("=")
    if not equals or field not in config.sample:
      raise ConfigError(f"--sample_setting={setting!r} is not FIELD=VALUE with FIELD one of config.sample's: "
                        f"{', '.join(sorted(config.sample))}")
  override_fields(config, [f"sample.{setting}" for setting in settings], "--sample_setting")
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every constrained field; raises ConfigError naming the first bad one."""
  for field, choices in CHOICES.items():
    value = get_field(config, field)
    if value not in choices:
      raise ConfigError(f"--config.{field}={value!r} is not valid; choose one of {', '.join(choices)}")
  for field, value in _flat_items(to_dict(config)):
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every range check below.
      raise ConfigError(f"--config.{field}={value} is not a finite number; give a real value")
  for field, low, high in RANGES:
    value = get_field(config, field)
    if value < low or (high is not None and value > high):
      bound = f">= {low}" if high is None else f"in [{low}, {high}]"
      raise ConfigError(f"--config.{field}={value} is out of range; it must be {bound}")
  if config.model.d_model % config.model.num_heads:
    raise ConfigError(f"--config.model.num_heads={config.model.num_heads} must divide "
                      f"--config.model.d_model={config.model.d_model}")
  if config.model.get("positions") == "rotary" and (config.model.d_model // config.model.num_heads) % 2:
    raise ConfigError(f"--config.model.positions=rotary turns pairs of each head's dimensions, so "
                      f"d_model / num_heads must be even (it is {config.model.d_model // config.model.num_heads}); "
                      f"change --config.model.num_heads or --config.model.d_model")
  if config.model.attention == "cudnn" and config.model.dtype != "bfloat16":
    raise ConfigError("--config.model.attention=cudnn needs --config.model.dtype=bfloat16 (cuDNN fused "
                      "attention runs in 16-bit); or use --config.model.attention=auto")
  if config.diffusion.schedule == "learned" and config.diffusion.objective != "vlb":
    raise ConfigError("--config.diffusion.schedule=learned needs --config.diffusion.objective=vlb "
                      "(other objectives would push the schedule towards no noise)")
  max_log_snr = config.diffusion.get("max_log_snr")
  if max_log_snr is not None and config.diffusion.schedule not in schedules.MAX_LOG_SNR_SCHEDULES:
    raise ConfigError(f"--config.diffusion.max_log_snr sets the low-noise end of the "
                      f"{' or '.join(schedules.MAX_LOG_SNR_SCHEDULES)} schedule, not of "
                      f"{config.diffusion.schedule!r}; leave it unset")
  if max_log_snr is not None and not 0.0 < max_log_snr <= 11.5:
    raise ConfigError(f"--config.diffusion.max_log_snr={max_log_snr} is out of range; it must be in (0, 11.5] "
                      f"(log-SNR at t = 0: above 0 the final tokens are read from a mostly clean vector)")
  if config.diffusion.time_warping and config.diffusion.objective == "vlb":
    raise ConfigError("--config.diffusion.time_warping=True reweights t and would bias the vlb objective; "
                      "use a learned schedule for variance reduction instead")
  if config.model.time_conditioning != "input" and config.model.kind != "diffusion":
    raise ConfigError(f"--config.model.time_conditioning={config.model.time_conditioning} is for the diffusion "
                      f"denoiser; the {config.model.kind} kind does not use it (leave it at input)")
  if config.sample.get("model_time_floor") and config.model.kind != "diffusion":
    raise ConfigError(f"--config.sample.model_time_floor is the continuous diffusion sampler's; the "
                      f"{config.model.kind} kind does not use it (leave it at 0)")
  # Other kinds ignore the continuous sampler's settings (configs/e2e_ar.py inherits configs/e2e.py's).
  if config.sample.renoise_correlation and config.model.kind == "diffusion" and config.sample.sampler != "renoise":
    raise ConfigError(f"--config.sample.renoise_correlation shapes the renoise sampler's noise, not "
                      f"{config.sample.sampler}'s; set --config.sample.sampler=renoise or leave it 0")
  if config.sample.get("predicted_length") and not (config.data.conditional and config.model.kind == "diffusion"):
    raise ConfigError("--config.sample.predicted_length reads a target's length off a conditional continuous "
                      "diffusion model's source; this config is not one (leave it False)")
  coverage = config.sample.source_coverage
  if coverage and not (config.data.conditional and config.model.kind == "diffusion"
                       and config.model.parameterization == "categorical"):
    raise ConfigError("--config.sample.source_coverage steers a conditional continuous diffusion model's logits "
                      "(categorical parameterization) towards its source's words; this config is not one (leave it 0)")
  if config.data.conditional and config.data.mode != "pad":
    raise ConfigError("--config.data.conditional=True needs --config.data.mode=pad (one source and target per row)")
  if config.data.conditional and not kinds.get(config.model.kind).conditional:
    raise ConfigError(f"--config.model.kind={config.model.kind} does not train on (source, target) pairs; use "
                      f"{' or '.join(k for k, v in kinds.KINDS.items() if v.conditional)}")
  if config.data.source_dropout and not config.data.conditional:
    raise ConfigError("--config.data.source_dropout needs --config.data.conditional=True")
  if config.data.get("distill_from") and not config.data.conditional:
    raise ConfigError("--config.data.distill_from replaces each source's targets; it needs "
                      "--config.data.conditional=True")
  if config.data.name == "tfds" and not config.data.get("tfds_name"):
    raise ConfigError("--config.data.name=tfds needs --config.data.tfds_name=NAME, e.g. lm1b")
  if config.data.name == "text_files" and not config.data.train_files:
    raise ConfigError("--config.data.name=text_files needs --config.data.train_files=PATH[,PATH...]")


def _flat_items(tree: dict, prefix: str = ""):
  """(dotted field, value) for every leaf of a nested dict."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat_items(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def from_dict(config_dict: dict) -> ml_collections.ConfigDict:
  """The config saved as `config_dict`; fields added to configs/base.py since then get their defaults.

  Defaults of new fields keep the old behaviour, so checkpoints written before a field existed
  still load (e.g. model.normalize_embeddings=False).
  """
  config = base.get_config().to_dict()

  def merge(defaults: dict, saved: dict) -> dict:
    return {**defaults, **{k: merge(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict)
                           else v for k, v in saved.items()}}
  return ml_collections.ConfigDict(merge(config, config_dict))


def check_same_shapes(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
  """Raises CheckpointError if the checkpoint's model shape (or a diffusion model's objective) differs."""
  saved_config = from_dict(saved)
  if config.model.kind == "diffusion" and saved_config.diffusion.objective != config.diffusion.objective:
    raise CheckpointError(
        f"{where} holds a checkpoint trained with --config.diffusion.objective={saved_config.diffusion.objective!r}, "
        f"not {config.diffusion.objective!r}; resume with the same objective or use a new --workdir")
  saved_multiplier = saved_config.train.get("embedding_lr_multiplier", 1.0)  # 1.0 before the field existed.
  if (saved_multiplier != 1.0) != (config.train.embedding_lr_multiplier != 1.0):  # Optimizer-state layout.
    raise CheckpointError(
        f"{where} holds a checkpoint trained with --config.train.embedding_lr_multiplier={saved_multiplier}, "
        f"not {config.train.embedding_lr_multiplier} (its optimizer state differs); resume with "
        f"--config.train.embedding_lr_multiplier={saved_multiplier} or use a new --workdir")
  for field in SHAPE_FIELDS:
    try:
      saved_value = get_field(saved_config, field)
    except (KeyError, AttributeError):
      continue
    if saved_value != get_field(config, field):
      raise CheckpointError(
          f"{where} holds a checkpoint of a different model ({field}: checkpoint {saved_value!r}, "
          f"config {get_field(config, field)!r}); use a new --workdir or the checkpoint's config")
