"""The fast path's correctness: KV-cached decoding, the fast argmax, bf16 compute, remat, and the FLOP counter.

No timing assertions here; the figures live in BENCHMARKS.md (benchmarks/train_throughput.py,
benchmarks/sampling_speed.py).
"""

import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from diffusion_lm import decoding, flops, kinds, numerics, parallel, train_state, trainer
from diffusion_lm.data import layout

VOCAB = 40


def _random_params(model, config, scale: float = 1.0):
  """Random float32 parameters of the model's shapes, without compiling its initialiser (fast).

  Kernels ~ N(0, scale² / fan_in), layer-norm scales ~ 1 ± 0.1, everything else ~ N(0, scale²).
  """
  shapes = jax.eval_shape(lambda: parallel.strip_boxes(kinds.get(config.model.kind).init_variables(model, config, jax.random.key(0))["params"]))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)
    std = scale / np.sqrt(leaf.shape[0]) if leaf.ndim > 1 and "embedding" not in name else scale
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def ar_model_and_params():
  # Untied: a random tied head mostly predicts the input token again, so greedy decoding would
  # repeat one token and the check would be weak.
  config = tiny_config(**{"model.kind": "autoregressive", "model.num_heads": 4, "data.seq_len": 12,
                          "model.tie_embeddings": False})
  return kinds.get(config.model.kind).build_model(config, VOCAB), _random_params(kinds.get(config.model.kind).build_model(config, VOCAB), config)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_step_logits_equal_the_full_causal_forward(ar_model_and_params, positions):
  model, params = ar_model_and_params
  if positions == "rotary":  # The cache must rotate each new key by its own position, not by 0.
    config = tiny_config(**{"model.kind": "autoregressive", "model.num_heads": 4, "data.seq_len": 12,
                            "model.tie_embeddings": False, "model.positions": "rotary"})
    model = kinds.get(config.model.kind).build_model(config, VOCAB)
    params = _random_params(model, config)
  tokens_BL = jax.random.randint(jax.random.key(1), (3, 12), 4, VOCAB)
  full_BLV = model.apply({"params": params}, tokens_BL)
  decoder = model.clone(decode=True)
  cache = decoding.init_cache(decoder, 3, 12)
  inputs_BL = jnp.concatenate([jnp.full((3, 1), model.bos_id), tokens_BL[:, :-1]], axis=1)
  step = jax.jit(lambda cache, inputs_B1: decoder.apply({"params": params, "cache": cache}, inputs_B1,
                                                         method=decoder.next_logits, mutable=["cache"]))
  step_logits = []
  for position in range(12):  # Teacher forcing, one position at a time through the cache.
    logits_B1V, updated = step(cache, inputs_BL[:, position:position + 1])
    cache = updated["cache"]
    step_logits.append(logits_B1V[:, 0])
  np.testing.assert_allclose(np.stack(step_logits, axis=1), full_BLV, rtol=1e-5, atol=1e-4)


def _uncached_decode(model, params, rng, batch_size, length, temperature, prefix_BL=None, prefix_mask_BL=None):
  """The reference: a full causal forward over everything so far for every new token."""
  tokens_BL = np.zeros((batch_size, length), np.int32)
  step_rngs = jax.random.split(rng, length)
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  for position in range(length):
    logits_BV = forward(jnp.asarray(tokens_BL))[:, position]
    if temperature == 0:
      token_B = np.asarray(jnp.argmax(logits_BV, -1))
    else:
      token_B = np.asarray(jax.random.categorical(step_rngs[position], logits_BV / temperature, axis=-1))
    if prefix_BL is not None:
      token_B = np.where(prefix_mask_BL[:, position], prefix_BL[:, position], token_B)
    tokens_BL[:, position] = token_B
  return tokens_BL


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_decoding_equals_uncached_decoding_token_for_token(ar_model_and_params, temperature):
  model, params = ar_model_and_params
  batch_size, length = 4, 12
  prefix_BL = np.zeros((batch_size, length), np.int32)
  prefix_BL[:, :2] = np.arange(8).reshape(batch_size, 2) + 4  # Different prompts per row.
  prefix_mask_BL = np.zeros((batch_size, length), bool)
  prefix_mask_BL[:, :2] = True
  rng = jax.random.key(7)
  cached = jax.jit(lambda p: decoding.decode_tokens(model, p, rng, batch_size, length, temperature, prefix_BL,
                                                    prefix_mask_BL, stop_at_eos=False))(params)
  expected = _uncached_decode(model, params, rng, batch_size, length, temperature, prefix_BL, prefix_mask_BL)
  np.testing.assert_array_equal(np.asarray(cached), expected)
  if temperature:  # Sampled rows differ, so the check covers more than one repeated token.
    assert len({tuple(row) for row in expected[:, 2:].tolist()}) > 1


def test_pad_after_eos():
  tokens = jnp.array([[5, 1, 7, 1], [5, 6, 7, 8]])
  np.testing.assert_array_equal(layout.pad_after_eos(tokens), [[5, 1, 0, 0], [5, 6, 7, 8]])


def test_first_argmax_equals_argmax_ties_and_infinities_included():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 4, (6, 5, 30)).astype(np.float32)  # Few values: every row has ties.
  x[0, 0, :] = -np.inf
  x[1, 1, 3] = np.inf
  np.testing.assert_array_equal(numerics.first_argmax(jnp.asarray(x)), np.argmax(x, axis=-1))


def _dot_operand_dtypes(fn, *args):
  """Operand dtypes of every dot_general in `fn`'s jaxpr (nested jaxprs included)."""
  dtypes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        dtypes.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return dtypes


@pytest.mark.parametrize("kind", ["diffusion", "autoregressive"])
def test_bfloat16_computes_in_bf16_with_fp32_params_and_finite_fp32_loss(kind):
  config = tiny_config(**{"model.dtype": "bfloat16", "model.kind": kind})
  model = kinds.get(config.model.kind).build_model(config, VOCAB)
  optimizer = train_state.make_optimizer(config.train)
  params = _random_params(model, config)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
           "opt_state": optimizer.init(params)}
  tokens_BL = jax.random.randint(jax.random.key(1), (8, 16), 4, VOCAB)
  loss_fn = kinds.get(config.model.kind).make_loss_fn(model, config)
  # The backbone's matmuls run in bf16 (Q, K, V, scores, weights·V, out, MLP in and out: 8 per
  # block); heads and losses that need the range stay in fp32.
  dtypes = _dot_operand_dtypes(lambda p: loss_fn(p, tokens_BL, jax.random.key(2), True)[0], state["params"])
  bf16 = sum(operands == ("bfloat16", "bfloat16") for operands in dtypes)
  assert bf16 >= 8 * config.model.num_layers, dtypes
  # An optimizer step keeps fp32 master weights (and an fp32 loss).
  new_state, metrics = jax.eval_shape(trainer.make_train_step(model, config, optimizer), state, tokens_BL,
                                      jax.random.key(3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state["params"]))
  assert metrics["loss"].dtype == jnp.float32
  if kind == "diffusion":  # The loss is finite in bf16 (the backbone is shared, so one kind is enough).
    loss = jax.jit(lambda p: loss_fn(p, tokens_BL, jax.random.key(2), True)[0])(state["params"])
    assert np.isfinite(float(loss))


def test_remat_gives_the_same_loss_and_gradients():
  tokens_BL = jax.random.randint(jax.random.key(1), (8, 16), 4, VOCAB)
  results, params = [], None
  for remat in (False, True):  # With dropout: the recomputed forward must draw the same masks.
    config = tiny_config(**{"model.remat": remat, "model.dropout": 0.1, "model.num_layers": 1})
    model = kinds.get(config.model.kind).build_model(config, VOCAB)
    params = _random_params(model, config) if params is None else params
    loss_fn = kinds.get(config.model.kind).make_loss_fn(model, config)
    grad_fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, tokens_BL, jax.random.key(2), True)[0]))
    results.append(grad_fn(params))
  (loss, grads), (remat_loss, remat_grads) = results
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, remat_grads)


def test_flop_counter_matches_a_hand_count_on_the_tiny_config():
  # tiny: L=16, D=32, F=64, N=2 blocks, d=8, batch 8; vocabulary 200; e2e, direct, no self-cond.
  config = tiny_config()
  block = 8 * 16 * 32 * 32 + 4 * 16 * 16 * 32 + 4 * 16 * 32 * 64  # projections + attention + MLP
  assert flops.block_forward_flops(16, 32, 64) == block == 294_912
  denoiser = 2 * block + 2 * 16 * 8 * 32 + 4 * 32 * 32 + 2 * 16 * 32 * 8  # blocks, in, time MLP, out
  rounding = 2 * 16 * 8 * 200  # x0 Eᵀ of the rounding loss
  assert kinds.train_step_flops(config, 200) == 8 * 3 * (denoiser + rounding) == 15_876_096
  self_cond = tiny_config(**{"model.self_conditioning": True})
  denoiser_sc = denoiser + 2 * 16 * 8 * 32  # The input projection takes [z, x̂0_prev]: 2d wide.
  assert kinds.train_step_flops(self_cond, 200) == 8 * (3 * (denoiser_sc + rounding) + denoiser_sc)
  ar = tiny_config(**{"model.kind": "autoregressive"})
  assert kinds.train_step_flops(ar, 200) == 8 * 3 * (2 * block + 2 * 16 * 32 * 200)


def _dot_flops(fn, *args) -> int:
  """2 × multiply-adds of every dot_general in `fn`'s jaxpr."""
  total = 0

  def walk(jaxpr):
    nonlocal total
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs_shape[d] for d in contracting]))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return total


def test_flop_counter_matches_the_matmuls_jax_traces():
  config = tiny_config(**{"model.kind": "autoregressive"})
  model = kinds.get(config.model.kind).build_model(config, 200)
  tokens_BL = jnp.zeros((8, 16), jnp.int32)
  params = jax.eval_shape(lambda: parallel.strip_boxes(kinds.get(config.model.kind).init_variables(model, config, jax.random.key(0))["params"]))
  traced = _dot_flops(lambda p: model.apply({"params": p}, tokens_BL), params)
  assert traced * 3 == kinds.train_step_flops(config, 200)


def test_attention_implementation_switch():
  from diffusion_lm import config_utils
  from diffusion_lm.errors import ConfigError, UserError
  with pytest.raises(ConfigError, match="bfloat16"):
    config_utils.validate(tiny_config(**{"model.attention": "cudnn"}))
  config = tiny_config(**{"model.attention": "xla"})
  model = kinds.get(config.model.kind).build_model(config, VOCAB)
  assert model.attention == "xla"
  noisy_BLD, t_B = jnp.zeros((2, 16, 8)), jnp.full((2,), 0.5)
  params = _random_params(model, config)
  same = jax.jit(lambda p: model.apply({"params": p}, noisy_BLD, t_B)[1])(params)
  auto = jax.jit(lambda p: model.clone(attention="auto").apply({"params": p}, noisy_BLD, t_B)[1])(params)
  np.testing.assert_allclose(same, auto, rtol=1e-6, atol=1e-6)
  if jax.default_backend() != "gpu":  # cuDNN attention is refused off a GPU, with one line.
    cudnn = model.clone(attention="cudnn", dtype=jnp.bfloat16)
    with pytest.raises(UserError, match="NVIDIA GPU"):
      jax.eval_shape(lambda p: cudnn.apply({"params": p}, noisy_BLD, t_B), params)


FAULTS_OF_A_REUSED_BUFFER = """
import ctypes, ctypes.util, resource, sys
from diffusion_lm import cli, parallel
mode = sys.argv.pop(1)
if mode == "keep":
  assert parallel.keep_freed_host_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def main(argv):
  faults = []
  for _ in range(3):  # Allocate, touch and free 128 MiB, as XLA does with an execution's temporary buffer.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(2**27)
    ctypes.memset(buffer, 1, 2**27)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(faults[-1])

cli.run(main) if mode == "binary" else main(sys.argv)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_host_memory_is_reused_without_page_faults():
  # 128 MiB is 32,768 pages (fewer with transparent huge pages): glibc maps and unmaps a block that large
  # each time unless told to keep it.
  # "binary": inside cli.run, as every binary's main runs.
  faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_BUFFER, mode], capture_output=True,
                                     text=True, check=True).stdout) for mode in ("default", "keep", "binary")}
  for mode in ("keep", "binary"):
    assert faults[mode] < 1_000 and faults["default"] >= 10 * (faults[mode] + 1), faults
