"""The continuous-embedding diffusion LM as a model kind: the denoiser, its objectives (e2e / cdcd
/ vlb), CDCD's time warping as extra train state, the likelihood bound, and the sampling pipeline.

Example:
  python -m diffusion_lm.train --config=configs/e2e.py --workdir=/tmp/e2e
"""

import jax
import jax.numpy as jnp

from diffusion_lm import flops, scoring
from diffusion_lm.diffusion import objectives, time_warping
from diffusion_lm.data.layout import source_mask
from diffusion_lm.diffusion.model_fns import bind_denoiser, with_clean_positions
from diffusion_lm.diffusion_pipeline import Pipeline
from diffusion_lm.kinds.base import ModelKind
from diffusion_lm.models.denoiser import Denoiser, denoiser_from_config

TIME_WARP_DECAY = 0.99  # EMA decay of the per-bin loss profile behind time warping.


def build_model(config, vocab_size: int) -> Denoiser:
  return denoiser_from_config(config.model, vocab_size, config.data.seq_len, config.diffusion.schedule,
                              config.diffusion.get("max_log_snr"))


def init_variables(model, config, rng):
  noisy = jnp.zeros((1, config.data.seq_len, config.model.embed_dim))
  return model.init(rng, noisy, jnp.zeros((1,)), noisy if config.model.self_conditioning else None)


def make_loss_fn(model, config):
  """The objective `config.diffusion.objective` names, on the bound denoiser; a conditional row's
  source is shown clean and only its target is noised and counted (DiffuSeq's partial noising)."""
  objective = objectives.get_objective(config.diffusion.objective)
  conditional = config.data.conditional

  def diffusion_loss(params, tokens_BL, rng, train: bool, t_B=None):
    noise_rng, dropout_rng = jax.random.split(rng)
    use_dropout = train and config.model.dropout > 0
    fns = bind_denoiser(model, params, dropout_rng if use_dropout else None)
    target_BL = None
    if conditional:
      source_BL = source_mask(tokens_BL)
      fns, target_BL = with_clean_positions(fns, tokens_BL, source_BL), ~source_BL
    return objective(fns, tokens_BL, noise_rng, fns.log_snr, config.diffusion.num_timesteps,
                     config.diffusion.self_cond_rate, t_B, target_BL)
  return diffusion_loss


def init_extra_state(config) -> dict:
  """CDCD time warping's loss profile over t, when it is on."""
  if not config.diffusion.time_warping:
    return {}
  return {"time_warp": time_warping.initial_loss_table(config.diffusion.time_warp_bins)}


def train_times(state: dict, key, batch_size: int):
  """Warped times t = F⁻¹(u) for stratified u (time warping); None: the objective draws them."""
  if "time_warp" not in state:
    return None
  return time_warping.warp(state["time_warp"], objectives.low_discrepancy_times(key, batch_size))


def update_extra_state(state: dict, per_example: dict) -> dict:
  if "time_warp" not in state:
    return {}
  return {"time_warp": time_warping.update_loss_table(
      state["time_warp"], per_example["per_example/t"], per_example["per_example/loss"], TIME_WARP_DECAY)}


def make_pipeline(config, model, state, tokenizer, mesh, step) -> Pipeline:
  return Pipeline(config, model, state["ema_params"], tokenizer, mesh, step, state.get("time_warp"))


def train_step_flops(config, vocab_size: int) -> int:
  """The passes each objective trains (flops.py's module doc), ×3, plus self-conditioning's forward."""
  model_config, length, batch_size = config.model, config.data.seq_len, config.train.batch_size
  objective = config.diffusion.objective
  pass_flops = lambda logits, x0: flops.denoiser_forward_flops(model_config, length, vocab_size, logits, x0)
  if objective == "e2e":
    trained = pass_flops(False, True) + 2 * length * model_config.embed_dim * vocab_size  # + rounding head on x0
  elif objective == "cdcd":
    trained = pass_flops(True, False)
  else:  # vlb: x̂0 at t and logits at t = 0.
    trained = pass_flops(False, True) + pass_flops(True, False)
  forward_only = pass_flops(False, True) if model_config.self_conditioning else 0
  return batch_size * (3 * trained + forward_only)


KIND = ModelKind(
    name="diffusion", build_model=build_model, init_variables=init_variables, make_loss_fn=make_loss_fn,
    row_fn=scoring.likelihood_row_fn, report=scoring.bound_report, make_pipeline=make_pipeline,
    train_step_flops=train_step_flops, init_extra_state=init_extra_state, train_times=train_times,
    update_extra_state=update_extra_state, samples_while_training=True, conditional=True)
