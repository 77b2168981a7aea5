"""The masked-diffusion network (MDLM): the shared bidirectional backbone over token ids, one extra
embedding row for MASK, and logits over the real vocabulary only (SUBS: MASK never gets mass).

Without time conditioning: the fraction of MASK tokens in the input already says how far the
process has gone, and MDLM finds the time input unnecessary.

Example:
  >>> model = MaskedLM(vocab_size=100, d_model=64, num_layers=2, num_heads=2, mlp_dim=128, max_len=32)
  >>> z = jnp.full((2, 32), model.mask_id, jnp.int32)
  >>> logits_BLV = model.apply(model.init(jax.random.key(0), z), z)   # [2, 32, 100]
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_lm import axes
from diffusion_lm.models import transformer


class MaskedLM(nn.Module):
  """Bidirectional Transformer over partly masked token ids; logits [B, L, V] for every position."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout: float = 0.0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  attention: str = "auto"  # jax.nn.dot_product_attention implementation (transformer.ATTENTION_IMPLEMENTATIONS).
  positions: str = "learned"  # transformer.POSITIONS: a learned table or rotary (RoPE).

  @property
  def mask_id(self) -> int:
    """The MASK token: the id after the tokenizer's vocabulary."""
    return self.vocab_size

  def setup(self):
    self.embedding_VD = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)), (self.vocab_size + 1, self.d_model))
    self.backbone = transformer.Transformer(
        self.d_model, self.num_layers, self.num_heads, self.mlp_dim, self.max_len, self.dropout,
        causal=False, remat=self.remat, dtype=self.dtype, attention=self.attention, positions=self.positions,
        name="backbone")

  def __call__(self, z_BL: jax.Array, deterministic: bool = True) -> jax.Array:
    # As in the AR model: unit-variance rows scaled by 1/√d in, the tied table (less MASK) out.
    hidden_BLD = jnp.take(self.embedding_VD, z_BL, axis=0) * (self.d_model ** -0.5)
    hidden_BLD = self.backbone(transformer.constrain(hidden_BLD, axes.ACTIVATION_BLD), deterministic)
    table_VD = self.embedding_VD[:self.vocab_size]
    return jnp.einsum("bld,vd->blv", hidden_BLD.astype(jnp.float32), table_VD) * (self.d_model ** -0.5)


def masked_from_config(model_config, vocab_size: int, max_len: int) -> MaskedLM:
  """Builds the MaskedLM described by `config.model` (embed_dim and parameterization are unused)."""
  return MaskedLM(
      vocab_size=vocab_size, d_model=model_config.d_model, num_layers=model_config.num_layers,
      num_heads=model_config.num_heads, mlp_dim=model_config.mlp_dim, max_len=max_len,
      dropout=model_config.dropout, remat=model_config.remat, dtype=jnp.dtype(model_config.dtype),
      attention=model_config.attention, positions=model_config.get("positions", "learned"))
