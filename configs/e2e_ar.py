"""The autoregressive baseline on E2E: configs/e2e.py's data, backbone and training, causal.

Same Transformer size (d_model, layers, heads, mlp), sequence length, batch, steps
and tokenizer as configs/e2e.py, so `diffusion_lm.evaluate` compares the diffusion bound with an
exact perplexity at equal training compute. Inputs are tokens shifted right behind BOS; the loss
is next-token cross-entropy over non-PAD targets (EOS counted). The diffusion-only sections
(`diffusion`, `sample`, `model.embed_dim`, ...) are ignored.

Example:
  python -m diffusion_lm.train --config=configs/e2e_ar.py --workdir=/tmp/e2e_ar
  python -m diffusion_lm.evaluate --workdir=/tmp/e2e_ar --split=test
"""

from configs import e2e


def get_config():
  return as_autoregressive(e2e.get_config())


def as_autoregressive(config):
  """The AR twin of a diffusion config: same data, backbone and steps; configs/ptb_ar.py uses it too."""
  config.model.kind = "autoregressive"  # Causal Transformer over token ids (models/autoregressive.py).
  config.model.tie_embeddings = True  # Output head = the input embedding table, as in GPT-2.
  config.train.num_samples = 0  # AR sampling (with a KV cache) is not part of the train loop.
  config.train.learning_rate = 1e-3  # The AR baseline's measured setting (BENCHMARKS.md), not e2e's 3e-3.
  config.train.warmup_steps = 100  # As above.
  config.train.embedding_lr_multiplier = 1.0  # The continuous recipe's faster embedding table is not part of this kind.
  return config
