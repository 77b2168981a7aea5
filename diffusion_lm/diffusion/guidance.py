"""Classifier guidance on the noisy latents, as in Diffusion-LM (Li et al. 2022, §5.2).

At every reverse step the sampler proposes z_s ~ q(z_s | z_t, x̂0) with mean μ and std σ. Guidance
replaces the mean by a few Adagrad steps on

    maximise_y   λ · log p(y | z_t) + log p(c | y, s),   log p(y | z_t) = −‖y − μ‖² / (2σ²) + const,

started at y = μ, and then adds the step's noise σ ε (none for DDIM). λ (`fluency_weight`) trades
fluency against control; `step_size` is Adagrad's learning rate; the optimiser is fresh at
each diffusion step. Any differentiable `log p(c | z, t)` works; constraints compose by summing
their log-probabilities (`combine`).

`Guidance` is a `flax.struct` pytree: classifier params and targets are traced arrays, the
log-prob function and the step settings are static, so a jitted sampler compiles once per
setting and reuses the compilation for any targets.

Example:
  >>> guide = Guidance(log_prob_fn=classifier_log_prob, params=classifier_params,
  ...                  targets=jnp.array([[[food, italian]]]), fluency_weight=0.01, step_size=0.1)
  >>> tokens = samplers.sample(fns, rng, (8, 64), 200, log_snr_fn, guidance=guide)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffusion_lm.diffusion import samplers
from diffusion_lm.diffusion.process import alpha_sigma, posterior_mean_std

# (params, z [B, L, d], t [B], targets) → log p(c | z, t) [B].
LogProbFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]

_MIN_VARIANCE = 1e-6  # Keeps the fluency term finite if a schedule reaches σ_s = 0.

# Default λ, Adagrad step size and steps: above Diffusion-LM's 0.01 / 0.1 / 3 in each of our grids
# (E2E validation with the 25k-step default model: 83.1 vs 74.2 %; test with a 10k-step model:
# 72.9 vs 64.1 %; BENCHMARKS.md, "Control"). A weaker fluency pull and bigger steps: less fluent,
# more on target; Diffusion-LM's setting with best_of=8 is the fluent alternative.
FLUENCY_WEIGHT, STEP_SIZE, NUM_STEPS = 0.001, 0.5, 5


@struct.dataclass
class Guidance:
  """A differentiable control objective and Diffusion-LM's update settings.

  Attributes:
    log_prob_fn: log p(c | z, t) per row; must be the same object across calls to reuse
      compilations.
    params: the scorer's parameters (any pytree of arrays).
    targets: what to steer towards (any pytree of arrays the scorer reads).
    fluency_weight: λ, the weight of log p(z_s | z_t) (default 0.001; Diffusion-LM: 0.01 and up).
    step_size: Adagrad learning rate (default 0.5; Diffusion-LM: 0.1).
    num_steps: Adagrad steps per diffusion step (default 5; Diffusion-LM: 3).

  Example:
    >>> guide = Guidance(classifier.log_prob_fn, classifier.params, targets_1C2, fluency_weight=0.001)
    >>> samplers.sample(fns, rng, (4, 64), 50, log_snr_fn, guidance=guide)
  """
  log_prob_fn: LogProbFn = struct.field(pytree_node=False)
  params: Any
  targets: Any
  fluency_weight: float = struct.field(pytree_node=False, default=FLUENCY_WEIGHT)
  step_size: float = struct.field(pytree_node=False, default=STEP_SIZE)
  num_steps: int = struct.field(pytree_node=False, default=NUM_STEPS)

  def log_prob(self, z_BLD: jax.Array, t_B: jax.Array) -> jax.Array:
    """log p(c | z, t) per row [B]."""
    return self.log_prob_fn(self.params, z_BLD, t_B, self.targets)

  def refine(self, mean_BLD: jax.Array, std: jax.Array, s: jax.Array) -> jax.Array:
    """Adagrad steps from y = μ on λ‖y − μ‖²/(2σ²) − log p(c | y, s), summed over rows."""
    t_B = jnp.full((mean_BLD.shape[0],), s)
    variance = jnp.maximum(std ** 2, _MIN_VARIANCE)

    def loss(y_BLD):
      fluency_B = 0.5 * jnp.sum((y_BLD - mean_BLD) ** 2, axis=(1, 2)) / variance
      return jnp.sum(self.fluency_weight * fluency_B - self.log_prob(y_BLD, t_B))

    # torch.optim.Adagrad's defaults, as Diffusion-LM ran it: with no initial accumulator the first
    # step moves every coordinate by `step_size`, however small the classifier's gradient is.
    optimizer = optax.adagrad(self.step_size, initial_accumulator_value=0.0, eps=1e-10)

    def adagrad_step(_, carry):
      y_BLD, opt_state = carry
      updates, opt_state = optimizer.update(jax.grad(loss)(y_BLD), opt_state)
      return optax.apply_updates(y_BLD, updates), opt_state

    refined_BLD, _ = jax.lax.fori_loop(0, self.num_steps, adagrad_step, (mean_BLD, optimizer.init(mean_BLD)))
    return refined_BLD

  def step(self, step_fn, noisy_BLD, x0_BLD, log_snr_t, log_snr_s, s, rng):
    """A guided version of `step_fn` (samplers.ancestral_step or samplers.ddim_step)."""
    mean_BLD, std = posterior_mean_std(noisy_BLD, x0_BLD, *alpha_sigma(log_snr_t), *alpha_sigma(log_snr_s))
    if step_fn is samplers.renoise_step:  # q(z_s | x̂0): mean α_s x̂0, std σ_s.
      alpha_s, std = alpha_sigma(log_snr_s)
      mean_BLD = alpha_s * x0_BLD
    noise_std = std
    if step_fn is samplers.ddim_step:  # Deterministic: guide the DDIM point, add no noise.
      mean_BLD, noise_std = step_fn(noisy_BLD, x0_BLD, log_snr_t, log_snr_s, rng), 0.0
    refined_BLD = self.refine(mean_BLD, std, s)
    return refined_BLD + noise_std * jax.random.normal(rng, noisy_BLD.shape)


@dataclasses.dataclass(frozen=True)
class _SumOfLogProbs:
  """log p(c₁ … c_n | z, t) = Σ_i log p(c_i | z, t) over independent scorers (hashable)."""
  fns: tuple[LogProbFn, ...]

  def __call__(self, params, z_BLD, t_B, targets):
    return sum(fn(p, z_BLD, t_B, c) for fn, p, c in zip(self.fns, params, targets))


def combine(*guides: Guidance) -> Guidance:
  """One Guidance whose log-prob is the sum of the given ones' (settings from the first).

  Example:
    >>> both = combine(semantic_guide, another_scorer_guide)
  """
  if not guides:
    raise ValueError("combine() needs at least one Guidance")
  if len(guides) == 1:
    return guides[0]
  first = guides[0]
  return Guidance(log_prob_fn=_SumOfLogProbs(tuple(g.log_prob_fn for g in guides)),
                  params=tuple(g.params for g in guides), targets=tuple(g.targets for g in guides),
                  fluency_weight=first.fluency_weight, step_size=first.step_size, num_steps=first.num_steps)


def field_value_log_prob(logits_BFV: jax.Array, targets_BC2: jax.Array) -> jax.Array:
  """Σ_c log softmax(logits[b, field_c])[value_c] per row; rows of `targets_BC2` with field -1 are skipped.

  Composing constraints (food=Italian and area=riverside) is this sum of log-probabilities.

  Example:
    >>> field_value_log_prob(logits_BFV, jnp.array([[[4, 2], [6, 1]]]))  # two constraints, one row
  """
  log_probs_BFV = jax.nn.log_softmax(logits_BFV, axis=-1)
  # Targets [1, C, 2] (or [C, 2]) apply to every row.
  targets_BC2 = jnp.broadcast_to(targets_BC2, logits_BFV.shape[:1] + targets_BC2.shape[-2:])
  fields_BC, values_BC = targets_BC2[..., 0], targets_BC2[..., 1]
  picked_BC = jnp.take_along_axis(
      jnp.take_along_axis(log_probs_BFV, jnp.maximum(fields_BC, 0)[..., None], axis=1),
      values_BC[..., None], axis=2)[..., 0]
  return jnp.sum(jnp.where(fields_BC >= 0, picked_BC, 0.0), axis=-1)
