"""Model FLOPs of a training step, counted from the config (the numerator of MFU).

Matmuls only, 2 FLOPs per multiply-add. For a sequence of L tokens, width D, MLP width F,
N blocks (heads × head_dim = D), vocabulary V, diffused embedding width d:

  per block, forward:   attention projections Q, K, V, out   8·L·D²
                        attention scores QKᵀ and weights·V    4·L²·D  (the full L×L, as computed:
                                                                       causal masking skips nothing)
                        MLP in and out                        4·L·D·F
  denoiser, forward:    input projection 2·L·d_in·D (d_in = 2d with self-conditioning, else d),
                        time MLP 4·D² (once per sequence), output projection 2·L·D·d ("direct") or
                        2·L·D·V ("categorical"), and where the objective uses them the rounding
                        logits x Eᵀ (2·L·d·V) or the categorical mean softmax(logits)·E (2·L·V·d)
  autoregressive:       output head 2·L·D·V

  train step = B · (3 · Σ forward passes that get gradients + 1 · Σ forward-only passes)

Backward costs twice the forward (gradients with respect to activations and to weights), so a
trained pass costs 3×. Which passes an objective makes: "e2e" one denoiser pass (x̂0) plus the
rounding head on x0; "cdcd" one pass (logits); "vlb" two (x̂0 at t, logits at t=0); with
self-conditioning one more forward-only pass over the whole batch (its output is masked and
stop-gradiented). Not counted: layer norms, softmax, GELU, losses, the optimizer, embedding
lookups; XLA's own count (`compiled.cost_analysis()`) includes those and is a few percent higher.

Each model kind counts its own train step from these pieces (kinds/*.train_step_flops);
`kinds.train_step_flops(config, vocab_size)` asks the config's kind.

Example:
  >>> from configs import bench
  >>> kinds.train_step_flops(bench.get_config(), vocab_size=1000) / 1e9   # GFLOP per step
"""

import ml_collections


def block_forward_flops(length: int, d_model: int, mlp_dim: int) -> int:
  """Forward FLOPs of one Transformer block on one sequence of `length` tokens."""
  projections = 8 * length * d_model * d_model
  attention = 4 * length * length * d_model
  mlp = 4 * length * d_model * mlp_dim
  return projections + attention + mlp


def backbone_forward_flops(model_config: ml_collections.ConfigDict, length: int) -> int:
  """Forward FLOPs of the Transformer backbone (all blocks) on one sequence."""
  return model_config.num_layers * block_forward_flops(length, model_config.d_model, model_config.mlp_dim)


def denoiser_forward_flops(model_config: ml_collections.ConfigDict, length: int, vocab_size: int,
                           uses_logits: bool, uses_x0: bool) -> int:
  """Forward FLOPs of one denoiser pass on one sequence, counting the heads whose outputs are used."""
  d_model, embed_dim = model_config.d_model, model_config.embed_dim
  input_dim = 2 * embed_dim if model_config.self_conditioning else embed_dim
  flops = 2 * length * input_dim * d_model + 4 * d_model * d_model + backbone_forward_flops(model_config, length)
  if model_config.parameterization == "categorical":
    flops += 2 * length * d_model * vocab_size  # Logits are the output; x̂0 = softmax(logits) E.
    if uses_x0:
      flops += 2 * length * vocab_size * embed_dim
  else:
    flops += 2 * length * d_model * embed_dim  # x̂0 is the output; logits = x̂0 Eᵀ + b.
    if uses_logits:
      flops += 2 * length * embed_dim * vocab_size
  return flops


def token_model_train_step_flops(config: ml_collections.ConfigDict, vocab_size: int) -> int:
  """A train step of a model over token ids with a vocabulary head (autoregressive, masked):
  3 × (backbone + 2·L·D·V) per sequence, one pass trained.

  Example:
    >>> token_model_train_step_flops(e2e_ar.get_config(), vocab_size=1000)
  """
  model_config, length = config.model, config.data.seq_len
  forward = backbone_forward_flops(model_config, length) + 2 * length * model_config.d_model * vocab_size
  return config.train.batch_size * 3 * forward


def sampling_step_flops(config: ml_collections.ConfigDict, vocab_size: int, batch_size: int) -> int:
  """Forward FLOPs of one diffusion sampling step: a denoiser pass for x̂0, plus clamping if on.

  Example:
    >>> sampling_step_flops(config, vocab_size=1000, batch_size=64)
  """
  length, embed_dim = config.data.seq_len, config.model.embed_dim
  clamp = 2 * length * embed_dim * vocab_size if config.sample.clamp else 0
  return batch_size * (denoiser_forward_flops(config.model, length, vocab_size, False, True) + clamp)
