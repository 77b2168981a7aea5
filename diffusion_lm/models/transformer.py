"""The Transformer backbone shared by the diffusion denoiser and the autoregressive baseline.

Pre-LayerNorm blocks with fused attention (`jax.nn.dot_product_attention`). Every weight carries
logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `length`) so that `parallel.py` can map
them onto a ("data", "fsdp", "tensor") mesh by config rules. Layers are unrolled in Python:
on CPU that was ~2x faster for the backward pass than `nn.scan` (DESIGN.md §7).

Example:
  >>> backbone = Transformer(d_model=128, num_layers=4, num_heads=4, mlp_dim=512, max_len=64)
  >>> params = backbone.init(jax.random.key(0), jnp.zeros((2, 64, 128)))
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_lm import axes
from diffusion_lm.errors import UserError

Dtype = Any


def dense_init(axes: tuple[str | None, ...], scale: float = 1.0):
  """A lecun-normal kernel initializer annotated with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal"), axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Pins an activation's sharding by logical names (a no-op outside a mesh/rules context)."""
  return nn.with_logical_constraint(x, axes)


# config.model.attention → jax.nn.dot_product_attention(implementation=...): "auto" lets jax choose
# (XLA in jax 0.10), "xla" is the portable einsum-softmax-einsum, "cudnn" the fused cuDNN
# flash-attention kernel (NVIDIA GPUs, bf16/fp16 compute only).
ATTENTION_IMPLEMENTATIONS = {"auto": None, "xla": "xla", "cudnn": "cudnn"}
# config.model.positions: a learned table added to the input (BERT, Diffusion-LM), or rotary
# embeddings of queries and keys (RoPE, Su et al. 2021; Plaid, MDLM, SEDD), which make attention
# see relative offsets.
POSITIONS = ("learned", "rotary")
COMPUTE_DTYPES = ("float32", "bfloat16")  # config.model.dtype; parameters stay float32.


def attention_implementation(name: str) -> str | None:
  """The `implementation=` argument for `config.model.attention`; cuDNN only on a GPU backend."""
  if name == "cudnn" and jax.default_backend() != "gpu":
    raise UserError(f"--config.model.attention=cudnn needs an NVIDIA GPU, not {jax.default_backend()}; "
                    "use auto")
  return ATTENTION_IMPLEMENTATIONS[name]


def rotate(x_BLHK: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding: each pair (x_i, x_{i+K/2}) turned by positions · base^(−2i/K).

  The dot product of a rotated query at position m and a rotated key at n depends on m − n only.

  Example:
    >>> rotate(query_BLHK, jnp.arange(query_BLHK.shape[1]))
  """
  half = x_BLHK.shape[-1] // 2
  frequencies_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_LF = positions_L.astype(jnp.float32)[:, None] * frequencies_F[None, :]
  cos_L1F, sin_L1F = jnp.cos(angles_LF)[:, None, :], jnp.sin(angles_LF)[:, None, :]
  first, second = x_BLHK[..., :half].astype(jnp.float32), x_BLHK[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([first * cos_L1F - second * sin_L1F, second * cos_L1F + first * sin_L1F], axis=-1)
  return rotated.astype(x_BLHK.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention; bidirectional unless `causal`.

  With `decode` (causal models only), keys and values live in the `cache` collection (flax's decode
  pattern): the initialising call on a full-length input sizes the cache; each later call takes
  the next L' positions, appends their keys/values and attends over everything cached so far.
  """

  num_heads: int
  causal: bool = False
  dtype: Dtype = jnp.float32
  decode: bool = False
  attention: str = "auto"  # jax.nn.dot_product_attention's implementation; see ATTENTION_IMPLEMENTATIONS.
  rotary: bool = False  # Rotate queries and keys by their positions (RoPE).

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    d_model = x_BLD.shape[-1]
    head_dim = d_model // self.num_heads
    # Explicit 3-D kernels (not DenseGeneral, which boxes a flattened 2-D kernel) so the logical
    # names apply to the real shape.
    def project(name):
      kernel_DHK = self.param(name, nn.with_logical_partitioning(nn.initializers.variance_scaling(
          1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2)), (axes.EMBED, axes.HEADS, axes.KV)),
          (d_model, self.num_heads, head_dim))
      return jnp.einsum("bld,dhk->blhk", x_BLD, kernel_DHK.astype(self.dtype))
    query_BLHK, key_BLHK, value_BLHK = project("query"), project("key"), project("value")
    if self.rotary:  # A cached decode continues at the cache's next position.
      cached = self.decode and self.has_variable("cache", "cache_index")
      start = self.get_variable("cache", "cache_index") if cached else 0
      positions_L = start + jnp.arange(x_BLD.shape[1])
      query_BLHK, key_BLHK = rotate(query_BLHK, positions_L), rotate(key_BLHK, positions_L)
    if self.decode:
      attended_BLHK = self._cached_attention(query_BLHK, key_BLHK, value_BLHK)
    else:
      attended_BLHK = jax.nn.dot_product_attention(query_BLHK, key_BLHK, value_BLHK, is_causal=self.causal,
                                                   implementation=attention_implementation(self.attention))
    out_HKD = self.param("out", nn.with_logical_partitioning(nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2), (axes.HEADS, axes.KV, axes.EMBED)),
        (self.num_heads, head_dim, d_model))
    return jnp.einsum("blhk,hkd->bld", attended_BLHK, out_HKD.astype(self.dtype))

  def _cached_attention(self, query_BLHK, key_BLHK, value_BLHK):
    """Causal attention of L' new positions over the key/value cache (S = the decoded length).

    The cache is kept in the layouts the two attention matmuls read (keys [B, H, K, S], values
    [B, H, S, K]): with jax.nn.dot_product_attention's [B, S, H, K] layout XLA transposed the
    whole cache at every step, about half of the decoding time on CPU.
    """
    if not self.causal:
      raise ValueError("decode=True needs a causal model: bidirectional attention has no KV cache")
    batch, length, heads, head_dim = key_BLHK.shape
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, (batch, heads, head_dim, length), key_BLHK.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, (batch, heads, length, head_dim),
                                 value_BLHK.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # The sizing call: plain causal attention over the full input.
      return jax.nn.dot_product_attention(query_BLHK, key_BLHK, value_BLHK, is_causal=True)
    index = cache_index.value
    key_BHKS = jax.lax.dynamic_update_slice(
        cached_key.value, key_BLHK.transpose(0, 2, 3, 1).astype(cached_key.value.dtype), (0, 0, 0, index))
    value_BHSK = jax.lax.dynamic_update_slice(
        cached_value.value, value_BLHK.transpose(0, 2, 1, 3).astype(cached_value.value.dtype), (0, 0, index, 0))
    cached_key.value, cached_value.value, cache_index.value = key_BHKS, value_BHSK, index + length
    # As jax.nn.dot_product_attention's XLA path: fp32 logits and softmax, 1/√K scale.
    logits_BHLS = jnp.einsum("blhk,bhks->bhls", query_BLHK, key_BHKS,
                             preferred_element_type=jnp.float32) * (head_dim ** -0.5)
    # New position index+i sees cached positions <= index+i; slots not yet written are masked out.
    visible_LS = jnp.arange(key_BHKS.shape[-1])[None, :] <= (index + jnp.arange(length))[:, None]
    logits_BHLS = jnp.where(visible_LS, logits_BHLS, jnp.finfo(jnp.float32).min)
    weights_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(value_BHSK.dtype)
    return jnp.einsum("bhls,bhsk->blhk", weights_BHLS, value_BHSK)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    d_model = x_BLD.shape[-1]
    hidden_BLF = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=dense_init((axes.EMBED, axes.MLP)),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)),
                          name="wi")(x_BLD)
    hidden_BLF = constrain(nn.gelu(hidden_BLF), axes.ACTIVATION_BLF)
    return nn.Dense(d_model, dtype=self.dtype, kernel_init=dense_init((axes.MLP, axes.EMBED)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
                    name="wo")(hidden_BLF)


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))


class Block(nn.Module):
  """Pre-LN residual block: x + Attn(LN(x)), then x + MLP(LN(x)).

  Given a conditioning vector c (adaLN-zero, DiT), each LayerNorm's output is scaled and shifted by
  (1 + scale(c), shift(c)) and each residual branch gated by gate(c), all from one zero-initialised
  Dense: the block starts as the identity and the conditioning acts at every layer.
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  causal: bool = False
  dtype: Dtype = jnp.float32
  decode: bool = False
  attention: str = "auto"
  rotary: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, deterministic: bool = True,
               conditioning_BC: jax.Array | None = None) -> jax.Array:
    drop = nn.Dropout(self.dropout, deterministic=deterministic)
    attention = SelfAttention(self.num_heads, self.causal, self.dtype, self.decode, self.attention, self.rotary,
                              name="attention")
    mlp = MlpBlock(self.mlp_dim, self.dtype, name="mlp")
    if conditioning_BC is None:
      x_BLD = x_BLD + drop(attention(layer_norm(self.dtype, "ln_attention")(x_BLD)))
      x_BLD = x_BLD + drop(mlp(layer_norm(self.dtype, "ln_mlp")(x_BLD)))
      return constrain(x_BLD, axes.ACTIVATION_BLD)
    d_model = x_BLD.shape[-1]
    modulation_B6D = nn.Dense(
        6 * d_model, dtype=self.dtype, name="modulation",
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED_SMALL, axes.EMBED)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))(nn.silu(conditioning_BC))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation_B6D[:, None, :], 6, axis=-1)
    x_BLD = x_BLD + gate1 * drop(attention(layer_norm(self.dtype, "ln_attention")(x_BLD) * (1 + scale1) + shift1))
    x_BLD = x_BLD + gate2 * drop(mlp(layer_norm(self.dtype, "ln_mlp")(x_BLD) * (1 + scale2) + shift2))
    return constrain(x_BLD, axes.ACTIVATION_BLD)


class Transformer(nn.Module):
  """Positions (learned or rotary) + `num_layers` blocks + final LayerNorm, on [batch, length, d_model]."""

  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout: float = 0.0
  causal: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  decode: bool = False  # Causal only: cached decoding (see SelfAttention), L' new positions per call.
  attention: str = "auto"  # Attention implementation (ATTENTION_IMPLEMENTATIONS).
  positions: str = "learned"  # One of POSITIONS.

  @nn.compact
  def __call__(self, x_BLD: jax.Array, deterministic: bool = True,
               conditioning_BC: jax.Array | None = None) -> jax.Array:
    """`conditioning_BC` (optional): a per-example vector every block is modulated by (adaLN-zero)."""
    length = x_BLD.shape[1]
    if self.positions == "learned":
      positions_LD = self.param("positions", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (axes.LENGTH, axes.EMBED)), (self.max_len, self.d_model))
      if self.decode:
        positions_LD = self._decode_positions(positions_LD, length)
      x_BLD = x_BLD + positions_LD[:length]
    x_BLD = constrain(x_BLD.astype(self.dtype), axes.ACTIVATION_BLD)
    block_class = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    for layer in range(self.num_layers):
      x_BLD = block_class(self.num_heads, self.mlp_dim, self.dropout, self.causal, self.dtype,
                          decode=self.decode, attention=self.attention, rotary=self.positions == "rotary",
                          name=f"block_{layer}")(
                              x_BLD, deterministic, conditioning_BC)
    return layer_norm(self.dtype, "ln_final")(x_BLD)

  def _decode_positions(self, positions_LD: jax.Array, length: int) -> jax.Array:
    """Position embeddings of the next `length` positions of a cached decode (all of them at init)."""
    initialized = self.has_variable("cache", "position_index")
    position_index = self.variable("cache", "position_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:
      return positions_LD
    start = position_index.value
    position_index.value = start + length
    return jax.lax.dynamic_slice_in_dim(positions_LD, start, length)
