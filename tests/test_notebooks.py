"""The colabs run top to bottom with tiny settings and draw their figures.

The notebooks are executed with nbclient the way papermill does it: a cell of tiny parameters is
injected right after the cell tagged "parameters", so the stored notebooks stay as a user sees
them. `explore_samples` trains the tiny config into a fresh workdir (its no-workdir path);
`controllable_generation` then loads that workdir and trains a tiny classifier next to it;
`data_to_text` trains tiny conditional twins (diffusion and AR) of its own.

The checks of `Pipeline.trajectory` and `Pipeline.score` run as extra cells at the end of the
explore kernel, where both are already compiled: on a 2-core CPU, compilation is most of the cost.
"""

import json
import os
import sys
import time

from conftest import REPO_ROOT

COLABS = os.path.join(REPO_ROOT, "colabs")

SAFE_WORDS = {  # Words the tiny config's 200-word vocabulary can write.
    "INFILL_TEMPLATE": "The __ is a __ __ near __ .",
    "PREFIX": "The", "SUFFIX": "near the river .", "PREFIX_SUFFIX_LENGTH": 8,
    "EDIT_DRAFT": "The pub is near the river .",
}


def tiny_parameters(workdir: str) -> dict[str, dict]:
  """Per notebook: the values that replace its defaults (the tiny config's 20 steps, few samples).

  Batch sizes and step counts are the same in both notebooks, so their sampler compilations match.
  """
  return {
      "explore_samples.ipynb": {
          "WORKDIR": "", "TRAIN_WORKDIR": workdir,
          "TRAIN_OVERRIDES": {"train.num_samples": 0, "train.eval_every": 20, "train.checkpoint_every": 20},
          "NUM_SAMPLES": 2, "STEPS": 4, "TRAJECTORY_SHOW_STEPS": 3, "EDIT_STRENGTHS": [0.5],
          "NUM_T_SAMPLES": 2, "STEP_COUNTS": [2, 4], "TIMING_REPEATS": 1, **SAFE_WORDS},
      "controllable_generation.ipynb": {
          "WORKDIR": workdir, "CLASSIFIER_STEPS": 40,
          "CLASSIFIER_SETTINGS": {"batch_size": 32, "d_model": 16, "num_layers": 1},
          "BATCH": 2, "STEPS": 4, "ANCHORS": {0: "The", 3: "pub"}, "ANCHOR_LENGTH": 8,
          "PREFIX": "The", "SUFFIX": "near the river .", "TARGETS": ["food=Italian"]},
      "data_to_text.ipynb": {
          "TRAIN_DIR": os.path.join(os.path.dirname(workdir), "notebook_data_to_text"),
          "TRAIN_OVERRIDES": {"data.conditional": True, "data.seq_len": 64, "data.vocab_size": 200,
                              "train.num_samples": 0, "train.num_steps": 20, "train.eval_every": 20,
                              "train.checkpoint_every": 20},
          "MRS": ["name[The Eagle], food[French]"], "STEPS": 4, "NUM_TEST_MRS": 4},
  }


# Appended to explore_samples (its names: pipe, NUM_SAMPLES, STEPS, SEED, NUM_T_SAMPLES, cfg).
PIPELINE_CHECKS = {"explore_samples.ipynb": [
    # Pipeline.trajectory: one entry per step, times 1 → 0, confidences are probabilities, and the
    # final tokens are exactly pipe.sample_tokens with the same arguments.
    '''
_traj = pipe.trajectory(num_samples=NUM_SAMPLES, steps=STEPS, seed=SEED)
assert _traj.tokens_KBL.shape == _traj.confidence_KBL.shape == (STEPS, NUM_SAMPLES, cfg.data.seq_len)
np.testing.assert_allclose(_traj.times_K, np.linspace(1, 0, STEPS + 1)[:-1], atol=1e-6)
assert ((_traj.confidence_KBL > 0) & (_traj.confidence_KBL <= 1 + 1e-6)).all()
assert len(_traj.step_texts) == STEPS and all(len(texts) == NUM_SAMPLES for texts in _traj.step_texts)
np.testing.assert_array_equal(_traj.final_tokens_BL, pipe.sample_tokens(NUM_SAMPLES, steps=STEPS, seed=SEED))
assert _traj.texts == pipe.decode(_traj.final_tokens_BL)
''',
    # Pipeline.score: one finite bound per text, <unk> and truncation reported, and a text's
    # figure does not depend on the texts scored after it (row keys, fixed batch).
    '''
_texts = ["The pub is near the river .", "The Zyzzyva is a pub near the river . " * 3]
_scores = pipe.score(_texts, num_t_samples=NUM_T_SAMPLES)
assert [r["text"] for r in _scores] == _texts and all(r["num_sequences"] == 1 for r in _scores)
assert all(np.isfinite(r["nll_nats_per_token"]) and r["nll_nats_per_token"] > 0 for r in _scores)
assert _scores[0]["num_tokens"] == 8 and _scores[0]["num_unk_tokens"] == 0 and not _scores[0]["truncated"]
assert _scores[1]["num_unk_tokens"] >= 1 and _scores[1]["truncated"]
_alone = pipe.score(_texts[0], num_t_samples=NUM_T_SAMPLES)[0]
np.testing.assert_allclose(_alone["nll_nats_per_token"], _scores[0]["nll_nats_per_token"], rtol=1e-5)
print("Pipeline checks passed")
''',
    # The steps-vs-quality comparison holds the three kinds, the AR one at a single point.
    '''
assert list(comparison) == ["diffusion", "masked", "autoregressive"], list(comparison)
assert len(comparison["masked"]) == len(STEP_COUNTS) and len(comparison["autoregressive"]) == 1
assert all(row["ms_per_sample"] > 0 for rows in comparison.values() for row in rows)
''']}


def new_cell(source: str, tag: str):
  import nbformat
  cell = nbformat.v4.new_code_cell(source.strip())
  cell.metadata["tags"] = [tag]
  cell.pop("id", None)
  return cell


def prepare(nb, name: str, values: dict):
  """papermill's convention (an "injected-parameters" cell after the "parameters" one), plus checks."""
  index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
  defined = "\n" + nb.cells[index].source
  missing = [key for key in values if f"\n{key} =" not in defined]
  assert not missing, f"{name}'s parameters cell does not define {missing}"
  source = "# Parameters injected by tests/test_notebooks.py\n" + "".join(
      f"{key} = {value!r}\n" for key, value in values.items())
  nb.cells.insert(index + 1, new_cell(source, "injected-parameters"))
  nb.cells.extend(new_cell(source, "test-checks") for source in PIPELINE_CHECKS.get(name, []))
  return nb


def kernel_for_this_interpreter(directory) -> str:
  """A kernelspec running this Python (the venv's), whatever `python` on PATH is."""
  spec_dir = directory / "kernels" / "diffusion_lm_test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "diffusion_lm tests", "language": "python"}))
  return "diffusion_lm_test"


def run_notebook(name: str, values: dict, kernel_name: str, cwd: str):
  import nbclient
  import nbformat
  with open(os.path.join(COLABS, name), encoding="utf-8") as f:
    nb = nbformat.read(f, as_version=4)
  assert all(not cell.get("outputs") and cell.get("execution_count") is None
             for cell in nb.cells if cell.cell_type == "code"), f"{name} is stored with outputs; clear them"
  client = nbclient.NotebookClient(prepare(nb, name, values), kernel_name=kernel_name, timeout=600,
                                   resources={"metadata": {"path": cwd}})
  client.execute()  # Raises CellExecutionError (with the cell and its traceback) on the first error.
  return nb


def test_notebooks_run_top_to_bottom_and_draw_their_figures(tmp_path, monkeypatch):
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  # The kernels share compilations (the second notebook samples with the first one's shapes).
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  kernel_name = kernel_for_this_interpreter(tmp_path / "jupyter")
  workdir = str(tmp_path / "notebook_tiny")
  expected_figures = {"explore_samples.ipynb": 5, "controllable_generation.ipynb": 3, "data_to_text.ipynb": 1}
  for name, values in tiny_parameters(workdir).items():
    started = time.perf_counter()
    nb = run_notebook(name, values, kernel_name, str(tmp_path))
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = sum("image/png" in output.get("data", {}) for output in outputs)
    assert figures == expected_figures[name], f"{name} drew {figures} figures, expected {expected_figures[name]}"
    print(f"{name}: {time.perf_counter() - started:.0f} s, {figures} figures")
  assert os.path.exists(os.path.join(workdir, "classifier", "classifier.json"))
