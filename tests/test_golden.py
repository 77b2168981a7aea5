"""Golden values: the first 20 training losses, the samples and a likelihood bound of each model
kind and recipe on the tiny config, pinned to what the code gave before the architecture move
(commit fc3f9d9, jax 0.10 on the CPU). A refactor that changes any number fails here.

The recipes run in one subprocess with XLA's default optimisation (the rest of the suite compiles
without it, see conftest.py): the pinned numbers are those of the build users run.

Regenerate only for an intended change of behaviour, and say so in the commit:
  python tests/test_golden.py --write
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import OPTIMIZED_XLA_FLAGS, REPO_ROOT, UNOPTIMIZED_XLA_FLAG, tiny_config  # noqa: E402

GOLDEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "tiny_recipes.json")
RECIPES = {
    # Diffusion-LM's recipe: direct x̂0, sqrt schedule, L_e2e-simple.
    "diffusion_e2e": {},
    # The default E2E recipe's switches: CDCD cross-entropy, categorical x̂0, normalised embeddings,
    # time warping (an extra train-state entry), score temperature.
    "diffusion_cdcd": {"diffusion.objective": "cdcd", "model.parameterization": "categorical",
                       "model.normalize_embeddings": True, "diffusion.time_warping": True,
                       "sample.temperature": 0.5},
    # The bound as the loss with a learned schedule, plus self-conditioning.
    "diffusion_vlb": {"diffusion.objective": "vlb", "diffusion.schedule": "learned",
                      "model.self_conditioning": True},
    "autoregressive": {"model.kind": "autoregressive", "train.num_samples": 0},
}
AMPLIFIES_ROUNDING = {"diffusion_cdcd"}  # Time warping turns another CPU's rounding into a drifting trajectory.


def run_recipe(name: str, workdir: str) -> dict:
  """Trains the recipe for 20 steps (a loss logged at every step) and records what it produced."""
  import diffusion_lm
  from diffusion_lm import evaluate
  from diffusion_lm.train import train
  config = tiny_config(**{"train.log_every": 1, **RECIPES[name]})
  result = train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  losses = [row["train/loss"] for row in rows if "train/loss" in row]
  pipe = diffusion_lm.load(workdir)
  report = evaluate.evaluate(workdir, split="validation", num_t_samples=2, max_sequences=8, batch_size=8,
                             write=False, progress=False)
  return {"losses": losses, "train_samples": result["samples"], "samples": pipe.sample(4, seed=0),
          "validation_loss": result.get("validation/loss"), "nll_nats_per_token": report["nll_nats_per_token"]}


@pytest.fixture(scope="module")
def optimized_runs(tmp_path_factory):
  """Every recipe's values, from one `python tests/test_golden.py --json` process with the default optimisation."""
  root = tmp_path_factory.mktemp("golden")
  run = subprocess.run([sys.executable, os.path.abspath(__file__), "--json", str(root / "values.json")],
                       env={**os.environ, "PYTHONPATH": REPO_ROOT, "XLA_FLAGS": OPTIMIZED_XLA_FLAGS}, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(root / "values.json") as f:
    values = json.load(f)
  assert UNOPTIMIZED_XLA_FLAG not in values.pop("xla_flags"), "the golden recipes must run optimised"
  return values


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_matches_golden(name, optimized_runs):
  with open(GOLDEN_FILE) as f:
    expected = json.load(f)[name]
  got = optimized_runs[name]
  assert len(got["losses"]) == 20
  # Bit-for-bit on the machine that recorded them, and within 1e-5 on another CPU, whose XLA kernels round
  # differently (~1e-6) — except where time warping amplifies that: on an Intel Xeon against the recording,
  # the CDCD recipe's first five losses agree to 1e-5, then drift up to 1.5 % by step 20 (5e-4 on the
  # validation loss and the bound) and the drifted model samples other text; on another AMD EPYC the fifth
  # loss is already 1.1e-5 off. Only that recipe, and only when it has drifted, is held to what drift
  # explains; `python tests/test_golden.py --check` compares all.
  drifted = name in AMPLIFIES_ROUNDING and got["losses"] != expected["losses"]
  np.testing.assert_allclose(got["losses"][:5], expected["losses"][:5], rtol=1e-4 if drifted else 1e-5)
  np.testing.assert_allclose(got["losses"], expected["losses"], rtol=3e-2 if drifted else 1e-5)
  for key in ("validation_loss", "nll_nats_per_token"):
    np.testing.assert_allclose(got[key], expected[key], rtol=5e-3 if drifted else 1e-5)
  if not drifted:
    assert got["train_samples"] == expected["train_samples"]
    assert got["samples"] == expected["samples"]

if __name__ == "__main__":
  import tempfile
  if not {"--write", "--check", "--json"} & set(sys.argv):
    sys.exit("usage: python tests/test_golden.py --write | --check | --json OUT")
  with tempfile.TemporaryDirectory() as root:
    values = {name: run_recipe(name, os.path.join(root, name)) for name in sorted(RECIPES)}
  if "--json" in sys.argv:  # The test's subprocess.
    with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
      json.dump({**values, "xla_flags": os.environ.get("XLA_FLAGS", "")}, f)
  elif "--write" in sys.argv:
    with open(GOLDEN_FILE, "w") as f:
      json.dump(values, f, indent=1)
    print(f"wrote {GOLDEN_FILE}")
  else:  # Exact comparison (the test allows rtol 1e-5).
    with open(GOLDEN_FILE) as f:
      expected = json.load(f)
    for name in sorted(RECIPES):
      print(name, "bit-identical" if values[name] == expected[name] else f"DIFFERS: {values[name]} vs {expected[name]}")
