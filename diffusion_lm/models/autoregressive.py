"""The autoregressive (AR) baseline: the shared Transformer backbone with a causal mask.

Same backbone as the diffusion denoiser (`models/transformer.Transformer`, here `causal=True`),
token inputs shifted right behind a BOS token, and a tied (`logits = h Eᵀ`) or untied output
head. It is the yardstick every diffusion likelihood is read against (exact perplexity over the
same tokens) and the judge that scores generated samples (generative perplexity).

Tokens counted by `token_nll`: every position whose target is not PAD, so EOS is counted and
padding is not (the same tokens `diffusion/likelihood.py` divides by).

Example:
  >>> model = AutoregressiveLM(vocab_size=100, d_model=64, num_layers=2, num_heads=2,
  ...                          mlp_dim=128, max_len=32)
  >>> tokens = jnp.ones((2, 32), jnp.int32)
  >>> variables = model.init(jax.random.key(0), tokens)
  >>> logits_BLV = model.apply(variables, tokens)   # logits_BLV[:, i] predicts tokens[:, i]
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffusion_lm import axes
from diffusion_lm.models import transformer


class AutoregressiveLM(nn.Module):
  """Causal Transformer LM over token ids; position i predicts token i from tokens < i."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  bos_id: int = 2
  dropout: float = 0.0
  tie_embeddings: bool = True
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  attention: str = "auto"  # jax.nn.dot_product_attention implementation (transformer.ATTENTION_IMPLEMENTATIONS).
  positions: str = "learned"  # transformer.POSITIONS: a learned table or rotary (RoPE).
  decode: bool = False  # KV-cached decoding (diffusion_lm/decoding.py): `next_logits` one step at a time.

  def setup(self):
    self.embedding_VD = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)), (self.vocab_size, self.d_model))
    self.backbone = transformer.Transformer(
        self.d_model, self.num_layers, self.num_heads, self.mlp_dim, self.max_len, self.dropout,
        causal=True, remat=self.remat, dtype=self.dtype, decode=self.decode, attention=self.attention,
        positions=self.positions, name="backbone")
    if not self.tie_embeddings:
      self.output_head = nn.Dense(self.vocab_size, dtype=self.dtype, name="output_head",
                                  kernel_init=transformer.dense_init((axes.EMBED, axes.VOCAB)),
                                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB,)))

  def __call__(self, tokens_BL: jax.Array, deterministic: bool = True) -> jax.Array:
    """Logits [B, L, V]; row i is p(w_i | w_<i) (inputs are `tokens` shifted right behind BOS)."""
    bos_B1 = jnp.full((tokens_BL.shape[0], 1), self.bos_id, tokens_BL.dtype)
    inputs_BL = jnp.concatenate([bos_B1, tokens_BL[:, :-1]], axis=1)
    return self.next_logits(inputs_BL, deterministic)

  def next_logits(self, inputs_BL: jax.Array, deterministic: bool = True) -> jax.Array:
    """Logits [B, L, V] of the token after each input (inputs already start with BOS).

    With `decode`, the inputs are the next positions after those already in the KV cache.
    """
    # Unit-variance embeddings scaled by 1/√d keep the residual stream at the backbone's scale
    # while the tied head still sees the full table.
    hidden_BLD = jnp.take(self.embedding_VD, inputs_BL, axis=0) * (self.d_model ** -0.5)
    hidden_BLD = transformer.constrain(hidden_BLD, axes.ACTIVATION_BLD)
    hidden_BLD = self.backbone(hidden_BLD, deterministic)
    if self.tie_embeddings:
      return jnp.einsum("bld,vd->blv", hidden_BLD.astype(jnp.float32), self.embedding_VD) * (self.d_model ** -0.5)
    return self.output_head(hidden_BLD).astype(jnp.float32)


def token_nll(logits_BLV: jax.Array, tokens_BL: jax.Array, pad_id: int = 0,
              scored_BL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(−log p(w_i | w_<i) [B, L] with padding zeroed, counted-token mask [B, L]); EOS is counted.

  `scored_BL` limits the count further (a conditional row's target: its source is context only).

  Example:
    >>> nll_BL, counted_BL = token_nll(model.apply(variables, tokens), tokens)
    >>> perplexity = jnp.exp(nll_BL.sum() / counted_BL.sum())
  """
  counted_BL = tokens_BL != pad_id
  if scored_BL is not None:
    counted_BL = counted_BL & scored_BL
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
  return jnp.where(counted_BL, nll_BL, 0.0), counted_BL


def autoregressive_from_config(model_config, vocab_size: int, max_len: int, bos_id: int) -> AutoregressiveLM:
  """Builds the AutoregressiveLM described by `config.model` (embed_dim is unused by AR)."""
  return AutoregressiveLM(
      vocab_size=vocab_size, d_model=model_config.d_model, num_layers=model_config.num_layers,
      num_heads=model_config.num_heads, mlp_dim=model_config.mlp_dim, max_len=max_len, bos_id=bos_id,
      dropout=model_config.dropout, tie_embeddings=model_config.get("tie_embeddings", True),
      remat=model_config.remat, dtype=jnp.dtype(model_config.dtype), attention=model_config.attention,
      positions=model_config.get("positions", "learned"))
