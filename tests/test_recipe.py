"""The recipe levers: learned schedule, time warping, self-conditioning, each objective learns."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from diffusion_lm import kinds, parallel, trainer, train_state
from diffusion_lm.diffusion import samplers, schedules, time_warping
from diffusion_lm.diffusion.model_fns import bind_denoiser


def test_learned_schedule_is_monotone_with_trainable_endpoints():
  schedule = schedules.LearnedSchedule(num_knots=8)
  t = jnp.linspace(0.0, 1.0, 101)
  params = schedule.init(jax.random.key(0), t)["params"]
  params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
  # Arbitrary interior weights must still give a strictly decreasing log-SNR.
  params["increment_logits"] = jax.random.normal(jax.random.key(1), (8,)) * 3.0
  log_snr = np.asarray(schedule.apply({"params": params}, t))
  assert np.all(np.diff(log_snr) < 0)
  np.testing.assert_allclose(log_snr[[0, -1]], params["endpoints"], rtol=1e-6)
  # Freezing routes gradients: the interior sees none when frozen, the endpoints likewise.
  grad = jax.grad(lambda p: schedule.apply({"params": p}, jnp.array(0.3), freeze_interior=True))(params)
  assert np.all(np.asarray(grad["increment_logits"]) == 0) and np.any(np.asarray(grad["endpoints"]) != 0)
  grad = jax.grad(lambda p: schedule.apply({"params": p}, jnp.array(0.3), freeze_endpoints=True))(params)
  assert np.all(np.asarray(grad["endpoints"]) == 0) and np.any(np.asarray(grad["increment_logits"]) != 0)


def test_time_warped_grids_are_monotone_and_cover_the_unit_interval():
  table = time_warping.initial_loss_table(16)
  np.testing.assert_allclose(samplers.time_grid(8, 1.0, table), np.linspace(1, 0, 9), atol=1e-6)
  t = jnp.linspace(0.01, 0.99, 64)
  loss = 5.0 * jax.nn.sigmoid((t - 0.5) * 20)  # The loss rises fastest around t = 0.5.
  for _ in range(30):
    table = time_warping.update_loss_table(table, t, loss, 0.9)
  grid = np.asarray(samplers.time_grid(20, 1.0, table))
  assert grid[0] == pytest.approx(1.0) and grid[-1] == pytest.approx(0.0, abs=1e-7)
  assert np.all(np.diff(grid) < 0)
  gaps = -np.diff(grid)
  middle = (grid[1:] > 0.4) & (grid[:-1] < 0.6)
  assert gaps[middle].mean() < 0.5 * gaps[~middle].mean(), "steps concentrate where the loss changes"
  edit_grid = np.asarray(samplers.time_grid(10, 0.3, table))
  assert edit_grid[0] == pytest.approx(0.3, abs=1e-5) and np.all(np.diff(edit_grid) < 0)


def _model_and_params(config, vocab_size=30):
  model = kinds.get(config.model.kind).build_model(config, vocab_size)
  optimizer = train_state.make_optimizer(config.train)
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  init_fn, _, _ = train_state.state_shapes_and_shardings(model, config, optimizer, mesh)
  return model, optimizer, init_fn(jax.random.key(0))


def test_the_embedding_learning_rate_multiplier_scales_only_the_embedding_updates():
  # Plaid's faster group: the diffused space's table moves k× as far per step as with k = 1; the network as before.
  config = tiny_config(**{"diffusion.objective": "cdcd", "model.parameterization": "categorical",
                          "model.normalize_embeddings": True})
  model, _, state = _model_and_params(config)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape), state["params"])
  updates = {}
  for multiplier in (1.0, 4.0):
    config.train.embedding_lr_multiplier = multiplier
    optimizer = train_state.make_optimizer(config.train)
    opt_state = optimizer.init(state["params"])
    for _ in range(config.train.warmup_steps):  # Past the warm-up's zero learning rate.
      updates[multiplier], opt_state = optimizer.update(grads, opt_state, state["params"])
  np.testing.assert_allclose(updates[4.0]["embedding"], 4.0 * updates[1.0]["embedding"], rtol=1e-5)
  assert np.abs(updates[1.0]["embedding"]).max() > 0
  for name in ("backbone", "input_projection", "output_projection"):
    jax.tree.map(np.testing.assert_array_equal, updates[4.0][name], updates[1.0][name])


def test_resuming_a_learned_position_workdir_under_rotary_names_the_field():
  # A workdir saved before model.positions existed (a learned table) cannot resume as rotary: one line.
  from configs import e2e
  from diffusion_lm import config_utils
  from diffusion_lm.errors import CheckpointError
  saved = config_utils.to_dict(e2e.get_config())
  del saved["model"]["positions"]
  with pytest.raises(CheckpointError, match=r"model.positions: checkpoint 'learned', config 'rotary'"):
    config_utils.check_same_shapes(saved, e2e.get_config(), "runs/e2e")
  resumed = e2e.get_config()
  resumed.model.positions = "learned"
  config_utils.check_same_shapes(saved, resumed, "runs/e2e")


def test_resuming_with_another_embedding_learning_rate_layout_names_the_field():
  # k ≠ 1 adds an optimizer-state entry, so a k = 1 checkpoint (or one saved before the field existed)
  # cannot resume under k = 10: one clear error naming the flag that would resume it, nothing touched.
  from configs import e2e
  from diffusion_lm import config_utils
  from diffusion_lm.errors import CheckpointError
  saved = config_utils.to_dict(e2e.get_config())
  del saved["train"]["embedding_lr_multiplier"]
  with pytest.raises(CheckpointError, match=r"--config.train.embedding_lr_multiplier=1.0 or use a new --workdir"):
    config_utils.check_same_shapes(saved, e2e.get_config(), "runs/e2e")
  unchanged = e2e.get_config()
  unchanged.train.embedding_lr_multiplier = 1.0
  config_utils.check_same_shapes(saved, unchanged, "runs/e2e")  # k = 1 both: resumes.
  saved["train"]["embedding_lr_multiplier"] = 4.0
  config_utils.check_same_shapes(saved, e2e.get_config(), "runs/e2e")  # k ≠ 1 both: same layout.


def test_the_sampling_grid_follows_time_warping_only_when_asked():
  # sample.warped_grid=False spaces the steps uniformly in t even when training learned a warp.
  from diffusion_lm import diffusion_pipeline
  config = tiny_config(**{"diffusion.objective": "cdcd", "model.parameterization": "categorical",
                          "model.normalize_embeddings": True, "diffusion.time_warping": True})
  model, _, state = _model_and_params(config)
  t = jnp.linspace(0.01, 0.99, 64)
  table = time_warping.initial_loss_table(16)
  for _ in range(30):
    table = time_warping.update_loss_table(table, t, 5.0 * jax.nn.sigmoid((t - 0.5) * 20), 0.9)
  draw = lambda warp_table: diffusion_pipeline.Pipeline(config, model, state["ema_params"], None,
                                                        time_warp_table=warp_table).sample_tokens(4, 6, seed=0)
  warped, unwarped = draw(table), draw(None)
  assert not np.array_equal(warped, unwarped)
  config.sample.warped_grid = False
  np.testing.assert_array_equal(draw(table), unwarped)


@pytest.mark.parametrize("enabled", [False, True])
def test_self_conditioning_changes_the_output_only_when_enabled(enabled):
  config = tiny_config(**{"model.self_conditioning": enabled})
  model, _, state = _model_and_params(config)
  fns = bind_denoiser(model, state["params"])
  noisy = jax.random.normal(jax.random.key(1), (2, config.data.seq_len, config.model.embed_dim))
  t = jnp.full((2,), 0.5)
  _, without = jax.jit(lambda z: fns.denoise(z, t, None))(noisy)
  _, with_estimate = jax.jit(fns.denoise)(noisy, t, jax.random.normal(jax.random.key(2), noisy.shape))
  assert (not np.allclose(without, with_estimate)) == enabled


@pytest.mark.parametrize("overrides", [
    {"diffusion.objective": "e2e"},
    {"diffusion.objective": "cdcd", "model.parameterization": "categorical", "model.normalize_embeddings": True,
     "model.self_conditioning": True, "diffusion.time_warping": True},
    {"diffusion.objective": "vlb", "diffusion.schedule": "learned", "model.parameterization": "categorical",
     "model.normalize_embeddings": True},
    {"diffusion.objective": "cdcd", "model.parameterization": "categorical", "model.normalize_embeddings": True,
     "model.output_prior": True},
    {"diffusion.objective": "cdcd", "model.parameterization": "categorical", "model.normalize_embeddings": True,
     "model.time_conditioning": "adaln_zero"},
    {"diffusion.objective": "cdcd", "model.parameterization": "categorical", "model.normalize_embeddings": True,
     "model.positions": "rotary"},
], ids=["e2e", "cdcd", "vlb", "cdcd_output_prior", "cdcd_adaln_zero", "cdcd_rotary"])
def test_each_objective_loss_decreases_on_the_tiny_config(overrides):
  config = tiny_config(**{"train.num_steps": 60, "train.warmup_steps": 5, "train.learning_rate": 3e-3, **overrides})
  model, optimizer, state = _model_and_params(config)
  step = jax.jit(trainer.make_train_step(model, config, optimizer))
  tokens = jax.random.randint(jax.random.key(3), (8, config.data.seq_len), 4, 30)
  tokens = tokens.at[:, 10:].set(0)  # Padding, as in real batches.
  losses = []
  for _ in range(60):
    state, metrics = step(state, tokens, jax.random.key(4))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("name", ["base", "e2e", "e2e_ar", "e2e_masked", "ptb", "ptb_ar", "ptb_masked", "wikitext2",
                                  "wikitext2_ar", "bench", "lm1b_pod", "tiny"])
def test_shipped_configs_validate(name):
  # The README main job and the benchmarks start from these; a bad default would only show there.
  import importlib
  from diffusion_lm import config_utils
  # PTB and WikiText-2 are never bundled: their configs take a directory.
  arguments = ["/data/" + name.split("_")[0]] if name.startswith(("ptb", "wikitext2")) else []
  config_utils.validate(importlib.import_module(f"configs.{name}").get_config(*arguments))


def test_prose_configs_are_the_e2e_configs_on_other_data():
  # One recipe on three corpora: only the data section and the step budget may differ.
  from configs import e2e, e2e_ar, e2e_masked, ptb, ptb_ar, ptb_masked, wikitext2, wikitext2_ar
  for on_e2e, on_prose, train_file in ((e2e, ptb, "ptb/ptb.train.txt"), (e2e_ar, ptb_ar, "ptb/ptb.train.txt"),
                                       (e2e_masked, ptb_masked, "ptb/ptb.train.txt"),
                                       (e2e, wikitext2, "wikitext2/train.txt"), (e2e_ar, wikitext2_ar, "wikitext2/train.txt")):
    expected, got = on_e2e.get_config(), on_prose.get_config("/data/" + train_file.split("/")[0])
    for section in ("model", "diffusion", "sample"):
      assert got[section].to_dict() == expected[section].to_dict(), (on_prose.__name__, section)
    assert {**got.train.to_dict(), "num_steps": 0} == {**expected.train.to_dict(), "num_steps": 0}, on_prose.__name__
    assert got.data.train_files == "/data/" + train_file


BENCHMARKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _benchmark_module(name):
  """Loads benchmarks/<name>.py for its functions and drops the absl flags it defined.

  Benchmarks share flag names (--judge_workdir); without the drop, whichever test loads the second one
  in a pytest worker fails with DuplicateFlagError, depending on how xdist spreads the tests.
  """
  import importlib.util
  from absl import flags
  flags_before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", os.path.join(BENCHMARKS_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  finally:
    for flag_name in set(flags.FLAGS) - flags_before:
      delattr(flags.FLAGS, flag_name)
  return module


def test_benchmark_modules_load_in_any_order():
  # CI once failed because two benchmarks defining --judge_workdir met in one pytest worker.
  for name in ("quality", "control", "compute_curve", "control", "quality"):
    _benchmark_module(name)


def test_profile_benchmark_attributes_the_step_and_leaves_no_trace_behind(monkeypatch):
  # benchmarks/profile_train_step.py once left its profiler trace in the temp directory on every run.
  import glob
  import tempfile
  from conftest import tiny_config
  monkeypatch.syspath_prepend(BENCHMARKS_DIR)  # It imports bench_utils as the script beside it.
  pattern = os.path.join(tempfile.gettempdir(), "dlm_profile_*")
  before = set(glob.glob(pattern))
  report = _benchmark_module("profile_train_step").profile(tiny_config(), steps=1, top=3)
  assert "| matmul |" in report and "top 3 op groups" in report
  assert set(glob.glob(pattern)) == before


def test_quality_benchmark_current_variant_is_configs_e2e():
  # benchmarks/quality.py screens levers against "e2e_current"; it must stay the shipped default.
  from configs import base, e2e
  from diffusion_lm import config_utils
  quality = _benchmark_module("quality")
  rebuilt = config_utils.apply_overrides(base.get_config(), quality.CURRENT)
  assert config_utils.to_dict(rebuilt) == config_utils.to_dict(e2e.get_config())


def test_e2e_default_is_the_ablation_winner():
  # configs/e2e.py = Diffusion-LM's base + the categorical, time-warped, lr-3e-3, clamped recipe.
  from configs import base, e2e
  default, diffusion_lm = e2e.get_config(), base.get_config()
  assert (default.diffusion.objective, default.model.parameterization) == ("cdcd", "categorical")
  assert default.model.normalize_embeddings and default.diffusion.time_warping and default.sample.clamp
  assert not default.model.self_conditioning and default.train.learning_rate == 3e-3
  assert not default.sample.warped_grid  # Trained on warped t, sampled on a uniform grid (BENCHMARKS.md).
  assert default.model.positions == "rotary" and default.diffusion.max_log_snr == 2.2  # Session 12's levers.
  assert (diffusion_lm.diffusion.objective, diffusion_lm.model.parameterization) == ("e2e", "direct")


def test_adaln_zero_blocks_start_as_identity_and_learn_from_t():
  # adaLN-zero (DiT): zero-initialised gates make every block the identity at init, so t (which
  # enters only through the modulation) cannot change the output yet; its gradient is not zero.
  from diffusion_lm.models.denoiser import Denoiser
  model = Denoiser(vocab_size=50, embed_dim=8, d_model=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=16,
                   parameterization="categorical", time_conditioning="adaln_zero")
  noisy = jax.random.normal(jax.random.key(0), (2, 16, 8))
  variables = jax.jit(model.init)(jax.random.key(1), noisy, jnp.zeros((2,)))
  apply = jax.jit(model.apply)  # Compiled once: op-by-op dispatch of the blocks is most of the cost on a CPU.
  early, _ = apply(variables, noisy, jnp.full((2,), 0.1))
  late, _ = apply(variables, noisy, jnp.full((2,), 0.9))
  np.testing.assert_allclose(early, late, atol=1e-6)
  direction = jax.random.normal(jax.random.key(2), early.shape)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, noisy, jnp.full((2,), 0.5))[0] * direction)))(variables)
  modulation = nn.unbox(grads["params"]["backbone"]["block_0"]["modulation"]["kernel"])
  assert float(jnp.abs(modulation).max()) > 0


def test_control_benchmark_groups_e2e_by_mr_and_other_corpora_by_sentence(tmp_path):
  # benchmarks/control.py infills PTB too: there every test sentence is its own single reference.
  control_benchmark = _benchmark_module("control")
  lines = ["the pub is near the river .", "a shop sells bread ."]
  (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "train.txt").write_text("some training text .\n")
  data = tiny_config(**{"data.name": "text_files", "data.train_files": str(tmp_path / "train.txt"),
                        "data.test_files": str(tmp_path / "test.txt"),
                        "data.tfds_data_dir": str(tmp_path / "tfds")}).data
  assert control_benchmark.references_and_groups(data, "test") == (lines, lines)
  e2e_refs, e2e_mrs = control_benchmark.references_and_groups(tiny_config().data, "test")
  assert len(e2e_refs) == len(e2e_mrs) > len(set(e2e_mrs)), "E2E references share their MR"


def test_compute_curve_multiplier_interpolates_bounds_and_plots(tmp_path):
  import json
  import subprocess
  import sys
  curve = _benchmark_module("compute_curve")
  points = [(500, 60.0), (1500, 26.0), (5000, 8.0)]
  # 26 → 8 between 1,500 and 5,000 steps: ratio 10 is crossed at 1500·(5000/1500)^(ln 2.6 / ln 3.25).
  expected = 1500 * (5000 / 1500) ** (np.log(26 / 10) / np.log(26 / 8)) / 1500
  got = curve.crossing_multiplier(points, target=10.0, reference_steps=1500)
  assert got["kind"] == "interpolated" and got["multiplier"] == pytest.approx(expected)
  assert curve.crossing_multiplier(points, target=100.0, reference_steps=1500) == {"multiplier": 500 / 1500,
                                                                                   "kind": "at_most"}
  short = curve.crossing_multiplier(points, target=4.0, reference_steps=1500)
  assert short["kind"] == "at_least" and short["multiplier"] == pytest.approx(5000 / 1500)
  assert short["extrapolated"] > 5000 / 1500
  rows = [{"name": f"{name}@{steps}", "kind": kind, "train_steps": steps, "nll_nats_per_token": 2.0, "exact": kind == "autoregressive",
           "by_steps": {("AR" if kind == "autoregressive" else "200"): {
               "ratio": ratio, "unigram_entropy": 4.0, "real_unigram_entropy": 4.6}}}
          for name, kind, series in (("ar", "autoregressive", [(500, 6.0), (1500, 1.5)]),
                                     ("ar_rotary", "autoregressive", [(1500, 30.0)]),
                                     ("default", "diffusion", points), ("adaln", "diffusion", points[:2]))
          for steps, ratio in series]
  table, png = tmp_path / "table.json", tmp_path / "curve.png"
  table.write_text(json.dumps({"rows": rows}))
  result = subprocess.run([sys.executable, os.path.join(BENCHMARKS_DIR, "compute_curve.py"), f"--table={table}",
                           f"--plot={png}"], capture_output=True, text=True, check=True)
  assert "default: multiplier to reach ar@1500 (judge ratio 1.50)" in result.stdout and "at_least" in result.stdout
  assert "adaln: multiplier" in result.stdout  # Two recipes of one kind are two curves.
  assert "default: multiplier to reach ar_rotary@1500 (judge ratio 30.00)" in result.stdout  # Each AR twin a target.
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adaln_zero_is_refused_for_kinds_that_do_not_use_it():
  from diffusion_lm import config_utils
  from diffusion_lm.errors import ConfigError
  with pytest.raises(ConfigError, match="time_conditioning=adaln_zero is for the diffusion denoiser"):
    config_utils.validate(tiny_config(**{"model.kind": "autoregressive", "model.time_conditioning": "adaln_zero"}))


@pytest.mark.parametrize("overrides,message", [
    ({"diffusion.schedule": "cosine", "diffusion.max_log_snr": 2.0}, "sets the low-noise end of the sqrt or"),
    ({"diffusion.max_log_snr": -1.0}, "max_log_snr=-1.0 is out of range"),
    ({"model.positions": "rotary", "model.d_model": 30, "model.num_heads": 2}, "d_model / num_heads must be even"),
    ({"model.kind": "masked", "sample.model_time_floor": 0.8}, "model_time_floor is the continuous diffusion"),
    ({"sample.model_time_floor": 1.5}, "model_time_floor"),
])
def test_schedule_and_position_settings_are_refused_where_they_do_not_apply(overrides, message):
  from diffusion_lm import config_utils
  from diffusion_lm.errors import ConfigError
  with pytest.raises(ConfigError, match=message):
    config_utils.validate(tiny_config(**overrides))


def test_the_denoiser_follows_max_log_snr():
  config = tiny_config(**{"diffusion.max_log_snr": 2.2})
  kind = kinds.get("diffusion")
  model = kind.build_model(config, 50)
  variables = kind.init_variables(model, config, jax.random.key(0))
  assert float(model.apply(variables, jnp.zeros(()), method=model.log_snr)) == pytest.approx(2.2, abs=1e-4)


def test_rotary_attention_sees_relative_offsets_only():
  from diffusion_lm.models import transformer
  query_1LHK, key_1LHK = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
  score = lambda m, n: float(jnp.sum(transformer.rotate(query_1LHK, jnp.array([m])) *
                                     transformer.rotate(key_1LHK, jnp.array([n]))))
  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  assert score(0, 0) == pytest.approx(float(jnp.sum(query_1LHK * key_1LHK)), abs=1e-5)


@pytest.mark.parametrize("kind_name", ["diffusion", "autoregressive", "masked"])
def test_rotary_backbones_have_no_position_table(kind_name):
  config = tiny_config(**{"model.kind": kind_name, "model.positions": "rotary"})
  kind = kinds.get(kind_name)
  model = kind.build_model(config, 50)
  params = parallel.strip_boxes(kind.init_variables(model, config, jax.random.key(0))["params"])
  assert "positions" not in params["backbone"]
  learned_config = tiny_config(**{"model.kind": kind_name})
  learned = parallel.strip_boxes(kind.init_variables(kind.build_model(learned_config, 50), learned_config,
                                                     jax.random.key(0))["params"])
  assert learned["backbone"]["positions"].shape[0] == config.data.seq_len


def test_bound_profile_bins_add_up_to_the_diffusion_integral():
  """An oracle whose x̂0 misses by a constant c: the bins must sum to ½ c (e^γ(0) − e^γ(1)) per position."""
  from diffusion_lm.diffusion.model_fns import DenoiserFns
  bound_profile = _benchmark_module("bound_profile")
  table_VD = jax.random.normal(jax.random.key(0), (12, 3))
  tokens_BL = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])  # 5 text tokens, 3 PAD.
  offset_D = jnp.array([0.1, -0.2, 0.05])
  fns = DenoiserFns(embed=lambda tokens: table_VD[tokens], round_logits=lambda x: x @ table_VD.T,
                    denoise=lambda noisy, t, self_cond=None: (jnp.zeros((*tokens_BL.shape, 12)),
                                                             table_VD[tokens_BL] + offset_D),
                    embedding_table=table_VD, log_snr=schedules.get_schedule("sqrt", max_log_snr=2.2))
  result = bound_profile.profile(fns, tokens_BL, jnp.ones_like(tokens_BL, bool), num_bins=400)
  per_position = 0.5 * float(jnp.sum(offset_D ** 2)) * (np.exp(2.2) - np.exp(result["log_snr_range"][0]))
  assert result["text_nats"] == pytest.approx(per_position, rel=1e-3)
  assert result["pad_nats"] == pytest.approx(per_position * 3 / 5, rel=1e-3)
