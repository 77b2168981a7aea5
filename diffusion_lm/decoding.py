"""Autoregressive decoding with a KV cache, the whole generation in one jitted `lax.scan`.

Each scan step feeds one token through the causal backbone in decode mode (keys and values of
earlier positions come from the `cache` collection, see models/transformer.SelfAttention), so a
sequence of L tokens costs L single-position forwards and no host round trip. The cached path
gives the same logits as the full causal forward; tests/test_performance.py checks greedy
decoding token for token.

`AutoregressivePipeline` is what `diffusion_lm.load` / `python -m diffusion_lm.sample` return for
an autoregressive workdir (configs/e2e_ar.py).

Example:
  >>> tokens_BL = decode_tokens(model, params, jax.random.key(0), batch_size=8, length=64)
  python -m diffusion_lm.sample --workdir=runs/e2e_ar --num_samples=8 --temperature=1.0
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_lm import control, parallel
from diffusion_lm.data.layout import SOURCE_END_ID, max_source_len, pad_after_eos
from diffusion_lm.data.tokenizer import Tokenizer
from diffusion_lm.errors import UserError
from diffusion_lm.numerics import first_argmax


def init_cache(decoder, batch_size: int, length: int):
  """An empty KV cache (zeros, index 0) for `decoder` (an AutoregressiveLM with decode=True)."""
  # eval_shape: the sizing call builds no parameters and runs no compute.
  shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.zeros((batch_size, length), jnp.int32)))
  return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes["cache"])


def sample_logits(rng: jax.Array, logits_BV: jax.Array, temperature: float) -> jax.Array:
  """Token ids [B]: argmax at temperature 0, else a draw from softmax(logits / temperature).

  The draw is `jax.random.categorical(rng, logits / temperature)`'s Gumbel-max, draw for draw.
  """
  if temperature == 0:
    return first_argmax(logits_BV)
  return first_argmax(logits_BV / temperature + jax.random.gumbel(rng, logits_BV.shape, logits_BV.dtype))


def decode_tokens(model, params, rng: jax.Array, batch_size: int, length: int, temperature: float = 1.0,
                  prefix_BL: jax.Array | None = None, prefix_mask_BL: jax.Array | None = None,
                  stop_at_eos: bool = True) -> jax.Array:
  """Token ids [B, length] drawn from an AutoregressiveLM with a KV cache (jit this).

  Args:
    model: the AutoregressiveLM (decode=False is fine; a decode-mode clone is made here).
    params: its parameters.
    temperature: sample from softmax(logits / temperature); 0 decodes greedily (argmax).
    prefix_BL, prefix_mask_BL: tokens forced where the mask is True (a prompt), sampled elsewhere.
    stop_at_eos: PAD every position after a row's first EOS (the scan still runs all `length`
      steps: a fixed trip count keeps it one compiled loop).

  Example:
    >>> tokens = jax.jit(lambda p, k: decode_tokens(model, p, k, 8, 64, temperature=0.0))(params, key)
  """
  if length > model.max_len:
    raise UserError(f"cannot decode {length} tokens with a model of max_len {model.max_len}")
  decoder = model.clone(decode=True)
  cache = init_cache(decoder, batch_size, length)

  def body(carry, inputs):
    cache, input_B = carry
    step_rng, forced_B, forced_mask_B = inputs
    logits_B1V, updated = decoder.apply({"params": params, "cache": cache}, input_B[:, None],
                                        method=decoder.next_logits, mutable=["cache"])
    token_B = sample_logits(step_rng, logits_B1V[:, 0].astype(jnp.float32), temperature)
    token_B = jnp.where(forced_mask_B, forced_B, token_B)
    return (updated["cache"], token_B), token_B

  bos_B = jnp.full((batch_size,), model.bos_id, jnp.int32)
  if prefix_BL is None:
    prefix_BL, prefix_mask_BL = jnp.zeros((batch_size, length), jnp.int32), jnp.zeros((batch_size, length), bool)
  # Scanned over positions: step i sees column i of the prompt.
  inputs = (jax.random.split(rng, length), jnp.asarray(prefix_BL, jnp.int32).T, jnp.asarray(prefix_mask_BL, bool).T)
  _, tokens_LB = jax.lax.scan(body, (cache, bos_B), inputs)
  tokens_BL = tokens_LB.T
  return pad_after_eos(tokens_BL) if stop_at_eos else tokens_BL


class AutoregressivePipeline:
  """Samples text from an autoregressive workdir's (EMA) parameters with KV-cached decoding.

  Diffusion-only settings (steps, sampler, clamp) are accepted and ignored, so `sample.py` calls
  both pipelines the same way; controls other than a prefix raise a one-line UserError.

  Example:
    >>> pipe = diffusion_lm.load("runs/e2e_ar")
    >>> pipe.sample(4, seed=0)                        # temperature 1: the model's distribution
    >>> pipe.infill(prefix="The Eagle", num_samples=2, temperature=0.0)   # greedy
  """

  def __init__(self, config: ml_collections.ConfigDict, model, params, tokenizer: Tokenizer,
               mesh: jax.sharding.Mesh | None = None, step: int | None = None):
    self.config, self.model, self.params, self.tokenizer = config, model, params, tokenizer
    self.mesh = mesh or parallel.local_mesh()
    self.step = step
    self.workdir: str | None = None
    self._compiled = {}

  def _decoder(self, num_samples: int, temperature: float, prompted: bool):
    key = (num_samples, temperature, prompted)
    if key not in self._compiled:
      def run(params, rng, prefix_BL=None, prefix_mask_BL=None):
        return decode_tokens(self.model, params, rng, num_samples, self.config.data.seq_len, temperature,
                             prefix_BL, prefix_mask_BL)
      self._compiled[key] = jax.jit(run, out_shardings=parallel.replicated(self.mesh))
    return self._compiled[key]

  def sample_tokens(self, num_samples: int = 8, seed: int = 0, temperature: float = 1.0,
                    prefix_ids: list[int] | None = None) -> np.ndarray:
    """Token ids [num_samples, seq_len], PAD after each row's first EOS."""
    if num_samples < 1 or temperature < 0:
      raise UserError("num_samples must be >= 1 and temperature >= 0")
    inputs = {}
    if prefix_ids:
      seq_len = self.config.data.seq_len
      if len(prefix_ids) >= seq_len:
        raise UserError(f"the prefix has {len(prefix_ids)} tokens but the model holds {seq_len - 1} plus EOS")
      prefix_L, mask_L = np.zeros(seq_len, np.int32), np.zeros(seq_len, bool)
      prefix_L[:len(prefix_ids)], mask_L[:len(prefix_ids)] = prefix_ids, True
      inputs = {"prefix_BL": np.tile(prefix_L, (num_samples, 1)), "prefix_mask_BL": np.tile(mask_L, (num_samples, 1))}
    with parallel.activate(self.mesh, parallel.logical_rules(self.config.mesh)):
      tokens = self._decoder(num_samples, float(temperature), bool(inputs))(self.params, jax.random.key(seed),
                                                                               **inputs)
    return np.asarray(jax.device_get(tokens))

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Text of each row, up to its first EOS."""
    return [self.tokenizer.decode(row.tolist()) for row in tokens]

  def generate(self, sources: list[str], num_samples: int = 1, steps: int | None = None, seed: int = 0,
               sampler: str | None = None, clamp: bool | None = None, *, temperature: float = 0.0,
               batch_size: int = 64, **unsupported) -> list[str]:
    """A conditional model's targets, `num_samples` per source (source-major): each row starts with
    the source and its BOS (data/layout.py) and is decoded on from there; greedy by default
    (`temperature=0`), the usual decoding for data-to-text. Sources go `batch_size` at a time.

    Example:
      >>> ar = diffusion_lm.load("/tmp/e2e_cond_ar")
      >>> ar.generate(["name[The Eagle], eatType[pub], food[French]"])
    """
    del steps, sampler, clamp  # Diffusion-only.
    self._check_unsupported(**{name: value for name, value in unsupported.items() if value is not None})
    if not self.config.data.conditional:
      raise UserError("this model was trained without sources (data.conditional=False); drop the source, or "
                      "train a conditional config such as configs/e2e_cond_ar.py")
    if isinstance(sources, str) or not sources or not all(isinstance(source, str) for source in sources):
      raise UserError("give the sources as a non-empty list of strings, e.g. generate(['name[The Eagle]'])")
    if num_samples < 1 or temperature < 0:
      raise UserError("num_samples must be >= 1 and temperature >= 0")
    seq_len = self.config.data.seq_len
    prefixes = []
    for source in sources:
      ids = control.encode_words(self.tokenizer, source, "the source") if source else []
      if len(ids) > max_source_len(seq_len):
        raise UserError(f"the source has {len(ids)} tokens and leaves no room for a target in this model's "
                        f"seq_len={seq_len} (at most {max_source_len(seq_len)}); shorten it")
      prefixes.extend([ids + [SOURCE_END_ID]] * num_samples)
    size = min(batch_size, len(prefixes))
    texts = []
    for index, start in enumerate(range(0, len(prefixes), size)):
      chunk = prefixes[start:start + size]
      chunk = chunk + [chunk[-1]] * (size - len(chunk))  # Fixed batch: one compilation.
      prefix_BL, mask_BL = np.zeros((size, seq_len), np.int32), np.zeros((size, seq_len), bool)
      for row, ids in enumerate(chunk):
        prefix_BL[row, :len(ids)], mask_BL[row, :len(ids)] = ids, True
      with parallel.activate(self.mesh, parallel.logical_rules(self.config.mesh)):
        tokens = self._decoder(size, float(temperature), True)(self.params, jax.random.key(seed + index),
                                                                prefix_BL=prefix_BL, prefix_mask_BL=mask_BL)
      rows = np.asarray(jax.device_get(tokens))
      texts.extend(self.tokenizer.decode(row[len(ids):].tolist()) for row, ids in zip(rows, chunk))
    return texts[:len(prefixes)]

  def sample(self, num_samples: int = 8, steps: int | None = None, seed: int = 0, sampler: str | None = None,
             clamp: bool | None = None, *, length: int | None = None, guidance=None, mbr: int | None = None,
             best_of: int | None = None, temperature: float = 1.0) -> list[str]:
    """`num_samples` texts; the same seed and temperature give the same texts."""
    del steps, sampler, clamp  # Diffusion-only.
    self._check_unsupported(length=length, guidance=guidance, mbr=mbr, best_of=best_of)
    if self.config.data.conditional:  # Without a source: the empty one it was trained with, or a refusal.
      if not self.config.data.source_dropout:
        raise UserError("this model writes a target for a source (data.conditional=True): give --source; it was "
                        "not trained to write without one (--config.data.source_dropout=0)")
      return self.generate([""] * num_samples, seed=seed, temperature=temperature)
    return self.decode(self.sample_tokens(num_samples, seed, temperature))

  def infill(self, template: str | None = None, num_samples: int = 1, steps: int | None = None, seed: int = 0,
             sampler: str | None = None, clamp: bool | None = None, *, prefix: str | None = None,
             suffix: str | None = None, anchors=None, length: int | None = None, guidance=None,
             mbr: int | None = None, best_of: int | None = None, temperature: float = 1.0,
             **unused) -> list[str]:
    """Continues `prefix` (the one control a left-to-right model supports directly)."""
    del steps, sampler, clamp, unused
    if self.config.data.conditional:
      raise UserError("a conditional autoregressive model continues a source: give --source (pipe.generate)")
    self._check_unsupported(infill=template, suffix=suffix, anchor=anchors or None, length=length,
                            guidance=guidance, mbr=mbr, best_of=best_of)
    prefix_ids = control.encode_words(self.tokenizer, prefix, "the prefix") if prefix else None
    return self.decode(self.sample_tokens(num_samples, seed, temperature, prefix_ids))

  def edit(self, *args, **kwargs):
    del args, kwargs
    raise UserError("--edit needs a diffusion workdir; an autoregressive workdir supports --prefix only")

  def guidance(self, *args, **kwargs):
    del args, kwargs
    raise UserError("--control (classifier guidance) needs a diffusion workdir; an autoregressive workdir "
                    "supports --prefix only")

  @staticmethod
  def _check_unsupported(**options) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
      raise UserError(f"autoregressive workdirs decode left to right and support --prefix only, not "
                      f"{', '.join('--' + name for name in given)}; use a diffusion workdir for those")
