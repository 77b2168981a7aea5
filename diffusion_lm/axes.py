"""Logical axis names: what each dimension of a weight or activation is.

Models annotate parameters and activations with these names; parallel.DEFAULT_RULES maps them to
mesh axes ("data", "fsdp", "tensor"), and `config.mesh.rules` can remap any of them by name.
Weights and activations have separate names so that fsdp can shard weights along EMBED while
activations stay whole there.

Example:
  >>> nn.with_logical_partitioning(init, (VOCAB, EMBED))
  >>> constrain(x_BLD, ACTIVATION_BLD)
"""

# Weights.
VOCAB = "vocab"  # The vocabulary (embedding rows, output logits).
EMBED = "embed"  # The Transformer width d_model.
EMBED_SMALL = "embed_small"  # The diffused embedding width d (small: never sharded).
EMBED_OUT = "embed_out"  # A d_model → d_model projection's output side (the time MLP).
MLP = "mlp"  # The MLP's hidden width.
HEADS = "heads"  # Attention heads.
KV = "kv"  # Per-head width.
LENGTH = "length"  # Positions (the position embedding table).
BATCH = "batch"  # Rows of a batch of inputs.

# Activations.
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACTIVATION_BLD = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # [batch, length, d_model] hidden states.
ACTIVATION_BLF = (ACT_BATCH, ACT_LENGTH, ACT_MLP)  # [batch, length, mlp] MLP hidden states.
