"""The train state: its layout, optimizer, EMA, and where each part lives on the mesh.

A state is a dict {"step", "params", "ema_params", "opt_state"} plus the model kind's extra
entries (kinds/*.init_extra_state, e.g. the time-warp table). Checkpoints hold exactly this tree;
`state_shapes_and_shardings` gives its abstract form on a mesh, which restoring needs.

Example:
  >>> optimizer = make_optimizer(config.train)
  >>> init_fn, abstract_state, shardings = state_shapes_and_shardings(model, config, optimizer, mesh)
  >>> state = init_fn(jax.random.fold_in(jax.random.key(config.seed), PARAMS_KEY))
"""

import jax
import jax.numpy as jnp
import optax

from diffusion_lm import kinds, parallel

# Random keys are folded from the root seed by purpose, then by step.
PARAMS_KEY, TRAIN_KEY, EVAL_KEY, SAMPLE_KEY = 0, 1, 2, 3


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW with linear warm-up, cosine decay to zero and global-norm clipping."""
  learning_rate = optax.warmup_cosine_decay_schedule(
      0.0, train_config.learning_rate, train_config.warmup_steps,
      max(train_config.num_steps, train_config.warmup_steps + 1), end_value=0.0)
  clip = [optax.clip_by_global_norm(train_config.grad_clip)] if train_config.grad_clip > 0 else []
  multiplier = train_config.get("embedding_lr_multiplier", 1.0)
  # Only when asked: the extra transform changes the optimizer state's structure (older checkpoints).
  faster = [optax.masked(optax.scale(multiplier), _embedding_leaves)] if multiplier != 1.0 else []
  return optax.chain(*clip, optax.adamw(learning_rate, weight_decay=train_config.weight_decay), *faster)


EMBEDDING_PARAMS = ("embedding", "learned_schedule")  # The diffused space and its schedule (Plaid's faster group).


def _embedding_leaves(params):
  """True for the leaves under a top-level EMBEDDING_PARAMS entry."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[0], "key", None) in EMBEDDING_PARAMS, params)


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
  """Warmed-up EMA decay min(max, (1+step)/(10+step)), so short runs are not dominated by init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def state_shapes_and_shardings(model, config, optimizer, mesh):
  """(init function, abstract state, shardings) for the train state on `mesh`."""
  kind = kinds.get(config.model.kind)

  def init_state(rng):
    params = kind.init_variables(model, config, rng)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
            "opt_state": optimizer.init(params), **kind.init_extra_state(config)}
  boxed_abstract = jax.eval_shape(init_state, jax.random.key(0))
  shardings = parallel.shardings_for(boxed_abstract, mesh, parallel.logical_rules(config.mesh))
  abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                          parallel.strip_boxes(boxed_abstract), shardings)
  init_fn = jax.jit(lambda rng: parallel.strip_boxes(init_state(rng)), out_shardings=shardings)
  return init_fn, abstract, shardings
