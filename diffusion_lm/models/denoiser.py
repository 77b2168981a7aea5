"""The diffusion denoiser f_θ(z_t, t, [x̂0_prev]) → (logits, x̂0).

It owns the learned token embedding table E ∈ R^{V×d} (the diffused space) and two output
parameterisations:
  - "direct" (Diffusion-LM): predict x̂0 ∈ R^{L×d}; logits = x̂0 Eᵀ + b (tied rounding head).
  - "categorical" (Plaid / CDCD): predict logits; x̂0 = softmax(logits) E.

Example:
  >>> model = Denoiser(vocab_size=100, embed_dim=16, d_model=64, num_layers=2, num_heads=2,
  ...                  mlp_dim=128, max_len=32)
  >>> tokens = jnp.zeros((2, 32), jnp.int32)
  >>> params = model.init(jax.random.key(0), jnp.zeros((2, 32, 16)), jnp.zeros((2,)))
  >>> logits, x0 = model.apply(params, jnp.zeros((2, 32, 16)), jnp.full((2,), 0.5))
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_lm import axes
from diffusion_lm.diffusion import process, schedules
from diffusion_lm.models import transformer


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of t ∈ [0, 1] (scaled by 1000 as in DDPM-style models)."""
  half = dim // 2
  frequencies = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
  angles_BH = 1000.0 * t_B[:, None] * frequencies[None, :]
  return jnp.concatenate([jnp.sin(angles_BH), jnp.cos(angles_BH)], axis=-1)


PARAMETERIZATIONS = ("direct", "categorical")  # What the network outputs (see the module doc).
# How the network sees t: "input" adds its embedding to every position's input; "adaln_zero"
# modulates every block by it (DiT's adaLN-zero, as in MDLM and Duo) through a time vector of
# width d_model // 4, so the modulation adds ~10 % parameters rather than ~40 %.
TIME_CONDITIONINGS = ("input", "adaln_zero")


class Denoiser(nn.Module):
  """Bidirectional Transformer denoiser over noisy token embeddings."""

  vocab_size: int
  embed_dim: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout: float = 0.0
  parameterization: str = "direct"
  self_conditioning: bool = False
  normalize_embeddings: bool = False
  schedule: str = "sqrt"
  max_log_snr: float | None = None  # γ(0) of a fixed schedule (None: the schedule's own).
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  attention: str = "auto"  # jax.nn.dot_product_attention implementation (transformer.ATTENTION_IMPLEMENTATIONS).
  positions: str = "learned"  # transformer.POSITIONS: a learned table or rotary (RoPE).
  output_prior: bool = False  # Categorical only: add the single-token Bayes posterior to the logits (Plaid).
  time_conditioning: str = "input"  # TIME_CONDITIONINGS.

  def setup(self):
    # N(0, 1) rows as in Diffusion-LM; the e2e loss learns their scale jointly with the denoiser.
    self.embedding_VD = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED_SMALL)), (self.vocab_size, self.embed_dim))
    if self.schedule == "learned":
      self.learned_schedule = schedules.LearnedSchedule(name="learned_schedule")
    self.rounding_bias_V = self.param("rounding_bias", nn.with_logical_partitioning(
        nn.initializers.zeros, (axes.VOCAB,)), (self.vocab_size,))
    self.input_projection = nn.Dense(self.d_model, dtype=self.dtype, name="input_projection",
                                     kernel_init=transformer.dense_init((axes.EMBED_SMALL, axes.EMBED)))
    time_width = self.d_model // 4 if self.time_conditioning == "adaln_zero" else self.d_model
    self.time_mlp = [nn.Dense(width, dtype=self.dtype, name=f"time_mlp_{i}",
                              kernel_init=transformer.dense_init((axes.EMBED, axes.EMBED_OUT)))
                     for i, width in enumerate((self.d_model, time_width))]
    self.backbone = transformer.Transformer(
        self.d_model, self.num_layers, self.num_heads, self.mlp_dim, self.max_len, self.dropout,
        causal=False, remat=self.remat, dtype=self.dtype, attention=self.attention, positions=self.positions,
        name="backbone")
    out_features, out_axes = ((self.vocab_size, (axes.EMBED, axes.VOCAB)) if self.parameterization == "categorical"
                              else (self.embed_dim, (axes.EMBED, axes.EMBED_SMALL)))
    # With the output prior the network starts at zero: its first logits are the prior's (Plaid).
    kernel_init = (nn.with_logical_partitioning(nn.initializers.zeros, out_axes) if self.output_prior
                   else transformer.dense_init(out_axes))
    self.output_projection = nn.Dense(out_features, dtype=self.dtype, name="output_projection", kernel_init=kernel_init)

  def log_snr(self, t: jax.Array, freeze_interior: bool = False, freeze_endpoints: bool = False) -> jax.Array:
    """The noise schedule's log-SNR γ(t): fixed by name, or learned (then it has parameters)."""
    if self.schedule == "learned":
      return self.learned_schedule(t, freeze_interior, freeze_endpoints)
    return schedules.get_schedule(self.schedule, self.max_log_snr)(t)

  def table(self) -> jax.Array:
    """The embedding table E, with rows rescaled to norm √d when `normalize_embeddings` (CDCD)."""
    if not self.normalize_embeddings:
      return self.embedding_VD
    norms_V1 = jnp.linalg.norm(self.embedding_VD, axis=-1, keepdims=True)
    return self.embedding_VD * jnp.sqrt(self.embed_dim) / jnp.maximum(norms_V1, 1e-6)

  def embed(self, tokens_BL: jax.Array) -> jax.Array:
    """Clean embeddings x = E[w]."""
    return jnp.take(self.table(), tokens_BL, axis=0)

  def round_logits(self, x_BLD: jax.Array) -> jax.Array:
    """Rounding head p(w | x) ∝ exp(x Eᵀ + b), tied to the embedding table."""
    return jnp.einsum("bld,vd->blv", x_BLD.astype(jnp.float32), self.table()) + self.rounding_bias_V

  def __call__(self, noisy_BLD: jax.Array, t_B: jax.Array, self_cond_BLD: jax.Array | None = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Returns (logits [B, L, V], x̂0 [B, L, d]) for noisy embeddings z_t at times t."""
    if self.schedule == "learned" and self.is_initializing():
      self.learned_schedule(t_B)  # Creates the schedule's parameters.
    inputs = noisy_BLD
    if self.self_conditioning:
      inputs = jnp.concatenate([noisy_BLD, jnp.zeros_like(noisy_BLD) if self_cond_BLD is None else self_cond_BLD], -1)
    hidden_BLD = self.input_projection(inputs.astype(self.dtype))
    time_BD = self.time_mlp[1](nn.silu(self.time_mlp[0](timestep_embedding(t_B, self.d_model).astype(self.dtype))))
    if self.time_conditioning == "adaln_zero":
      hidden_BLD = self.backbone(hidden_BLD, deterministic, conditioning_BC=time_BD)
    else:
      hidden_BLD = self.backbone(hidden_BLD + time_BD[:, None, :], deterministic)
    output = self.output_projection(hidden_BLD).astype(jnp.float32)
    if self.parameterization == "categorical":
      if self.output_prior:
        output = output + output_prior_logits(noisy_BLD, self.table(), self.log_snr(t_B))
      return output, jax.nn.softmax(output, axis=-1) @ self.table()
    return self.round_logits(output), output


def output_prior_logits(noisy_BLD: jax.Array, embedding_VD: jax.Array, log_snr_B: jax.Array) -> jax.Array:
  """log N(z; α E[w], σ² I) per token w, up to a w-independent constant: (α/σ²) z·E[w] − α²‖E[w]‖²/(2σ²).

  Its softmax is p(w | z_t) for one position alone under a uniform prior over the vocabulary:
  what the noisy vector says about its own token, which the network then only has to correct
  with context (Plaid's output prior; with normalised embeddings the second term is constant).

  Example:
    >>> logits_BLV = output_prior_logits(z_BLD, model.apply(variables, method=model.table), log_snr_B)
  """
  alpha_B, sigma_B = process.alpha_sigma(log_snr_B)
  scale_B = (alpha_B / sigma_B ** 2)[:, None, None]
  norms_V = jnp.sum(embedding_VD ** 2, axis=-1)
  return (scale_B * jnp.einsum("bld,vd->blv", noisy_BLD.astype(jnp.float32), embedding_VD)
          - 0.5 * (alpha_B ** 2 / sigma_B ** 2)[:, None, None] * norms_V)


def denoiser_from_config(model_config, vocab_size: int, max_len: int, schedule: str = "sqrt",
                         max_log_snr: float | None = None) -> Denoiser:
  """Builds the Denoiser described by `config.model` (and `config.diffusion`'s schedule)."""
  return Denoiser(
      vocab_size=vocab_size, embed_dim=model_config.embed_dim, d_model=model_config.d_model,
      num_layers=model_config.num_layers, num_heads=model_config.num_heads, mlp_dim=model_config.mlp_dim,
      max_len=max_len, dropout=model_config.dropout, parameterization=model_config.parameterization,
      self_conditioning=model_config.self_conditioning,
      normalize_embeddings=model_config.normalize_embeddings, schedule=schedule, max_log_snr=max_log_snr,
      remat=model_config.remat,
      dtype=jnp.dtype(model_config.dtype), attention=model_config.attention,
      output_prior=model_config.get("output_prior", False),
      time_conditioning=model_config.get("time_conditioning", "input"),
      positions=model_config.get("positions", "learned"))
