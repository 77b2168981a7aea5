"""Quality ablation on E2E: each recipe variant trained at the same budget, scored the same way.

For every variant: train `configs/base.py` (Diffusion-LM's recipe) + the variant's overrides for
`--steps` steps (same batch, same model size; variants that differ only in `sample.*` settings
share one trained model),
then report the NLL bound (the eval binary's estimator, on the first
`--eval_sequences` validation sentences), the AR judge's generative perplexity and distinct-2 of
`--num_samples` samples at `--sample_steps` steps, and the same figures for the AR baseline (trained
at the same budget) and for real validation sentences. The judge is `--judge_workdir` (an AR model,
ideally trained longer than the budget) or, if not given, the AR baseline itself. Runs resume: a
finished model is only re-scored.

Example:
  python benchmarks/quality.py --ablation --steps=1500 --out_dir=runs/quality
  python benchmarks/quality.py --variants=diffusion_lm,cdcd_full --steps=300   # a quick look
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base, e2e_ar  # noqa: E402
from diffusion_lm import cli  # noqa: E402
from diffusion_lm.config_utils import apply_overrides  # noqa: E402

# name → (config overrides on configs/base.py, description). Order = the table's order.
# configs/e2e.py is cdcd_cheap_clamp plus sample.temperature=0.5 (measured after the sweeps).
CATEGORICAL = {"diffusion.objective": "cdcd", "model.parameterization": "categorical",
               "model.normalize_embeddings": True, "model.embed_dim": 32, "sample.clamp": False}
SELFCOND = {"model.self_conditioning": True}
WARP = {"diffusion.time_warping": True}
FAST_LR = {"train.learning_rate": 3e-3, "train.warmup_steps": 50}
SELFCOND_WARP = CATEGORICAL | SELFCOND | WARP
FAST = SELFCOND_WARP | FAST_LR
CHEAP = CATEGORICAL | WARP | FAST_LR
DEFAULT = CHEAP | {"sample.clamp": True, "sample.temperature": 0.5}  # = configs/e2e.py before round two.
CURRENT = DEFAULT | {"data.seq_len": 48, "sample.sampler": "renoise",  # = configs/e2e.py now (tests/test_recipe.py);
                     "sample.warped_grid": False, "train.embedding_lr_multiplier": 10.0,
                     "model.positions": "rotary", "diffusion.max_log_snr": 2.2,
                     "train.num_steps": 3000, "mesh.cpu_devices": 2,  # --steps sets every variant's budget.
                     "sample.renoise_correlation": -0.5}
VARIANTS = {
    "diffusion_lm": ({}, "Diffusion-LM: e2e loss, direct x0, sqrt schedule, d=16, clamping"),
    "cdcd": (CATEGORICAL, "categorical x0 + cross-entropy (CDCD), normalised d=32, no clamp"),
    "cdcd_selfcond": (CATEGORICAL | SELFCOND, "+ self-conditioning"),
    "cdcd_selfcond_warp": (SELFCOND_WARP, "+ time warping (train and sample)"),
    "cdcd_full": (SELFCOND_WARP | {"sample.temperature": 0.5}, "+ score temperature 0.5"),
    "cdcd_selfcond_warp_draw": (SELFCOND_WARP | {"sample.draw_tokens": True},
                                "+ x0 = a drawn token's embedding, not the mean"),
    "cdcd_selfcond_warp_clamp": (SELFCOND_WARP | {"sample.clamp": True}, "+ clamping (x0 = nearest embedding of the mean)"),
    "cdcd_d64": (SELFCOND_WARP | {"model.embed_dim": 64}, "cdcd_selfcond_warp with d=64"),
    "cdcd_cosine": (SELFCOND_WARP | {"diffusion.schedule": "cosine"}, "cdcd_selfcond_warp with the cosine schedule"),
    "cdcd_lr3e-3": (SELFCOND_WARP | {"train.learning_rate": 3e-3}, "cdcd_selfcond_warp with lr 3e-3"),
    "cdcd_fast": (FAST, "cdcd_selfcond_warp, lr 3e-3, 50 warm-up steps"),
    "cdcd_fast_clamp": (FAST | {"sample.clamp": True}, "cdcd_fast + clamping"),
    "cdcd_fast_t0.5": (FAST | {"sample.temperature": 0.5}, "cdcd_fast + score temperature 0.5"),
    "cdcd_fast_nowarp": (CATEGORICAL | SELFCOND | FAST_LR, "cdcd_fast without time warping"),
    "cdcd_cheap": (CHEAP, "cdcd_fast without self-conditioning (0.84x its CPU time per step)"),
    "cdcd_cheap_clamp": (CHEAP | {"sample.clamp": True}, "cdcd_cheap + clamping"),
    "diffusion_lm_lr3e-3": (FAST_LR, "Diffusion-LM recipe, lr 3e-3"),
    # Round two (issue 17), on the default recipe (configs/e2e.py = cdcd_cheap_clamp, τ 0.5):
    "e2e_default": (DEFAULT, "configs/e2e.py as shipped"),
    "e2e_renoise": (DEFAULT | {"sample.sampler": "renoise"}, "+ renoise sampler: z_s ~ q(z_s | x0), fresh noise"),
    "e2e_output_prior": (DEFAULT | {"model.output_prior": True},
                         "+ Plaid's output prior (single-token posterior added to the logits)"),
    # Round three (issue 17), on configs/e2e.py as it is now (seq 48, renoise sampler):
    "e2e_current": (CURRENT, "configs/e2e.py now: seq 48, overrelaxed renoise, uniform grid, 10× embedding lr, rotary, γ(0) 2.2"),
    "e2e_adaln": (CURRENT | {"model.time_conditioning": "adaln_zero"},
                  "+ adaLN-zero time conditioning (DiT / MDLM), modulation from a d_model/4 time vector"),
    "vlb_learned": (CATEGORICAL | SELFCOND | {"diffusion.objective": "vlb", "diffusion.schedule": "learned"},
                    "vlb objective, learned schedule, categorical, self-cond (Plaid-like)"),
}

FLAGS = flags.FLAGS
flags.DEFINE_bool("ablation", False, "Run every variant (otherwise --variants).")
flags.DEFINE_list("variants", ["diffusion_lm", "cdcd_full"], f"Variants to run: {', '.join(VARIANTS)}.")
flags.DEFINE_integer("steps", 1500, "Training steps for every model (the equal budget).")
flags.DEFINE_integer("num_samples", 200, "Samples per diffusion model.")
flags.DEFINE_integer("sample_steps", 50, "Sampling steps.")
flags.DEFINE_integer("eval_sequences", 512, "Validation sentences for the NLL bound / AR NLL.")
flags.DEFINE_string("out_dir", "runs/quality", "Workdirs and the results table go here.")
flags.DEFINE_string("judge_workdir", None, "AR workdir that judges samples (default: the AR baseline).")




def train_timed(config, workdir: str) -> float:
  from diffusion_lm.train import train
  started = time.perf_counter()
  train(config, workdir)
  return time.perf_counter() - started


def score_variant(name: str, workdir: str, judge_workdir: str, train_seconds: float, sample_overrides: dict) -> dict:
  import diffusion_lm
  from diffusion_lm import evaluate
  bound = evaluate.evaluate(workdir, split="validation", max_sequences=FLAGS.eval_sequences, progress=False)
  pipe = diffusion_lm.load(workdir)
  apply_overrides(pipe.config, sample_overrides)  # Sampling-only settings of this variant.
  started = time.perf_counter()
  samples = pipe.sample(FLAGS.num_samples, steps=FLAGS.sample_steps, seed=0)
  sample_seconds = time.perf_counter() - started
  samples_file = os.path.join(workdir, f"samples_{name}_{FLAGS.sample_steps}steps.txt")
  with open(samples_file, "w") as f:
    f.write("\n".join(samples) + "\n")
  judged = evaluate.evaluate_samples(workdir, samples_file, judge_workdir, progress=False)
  return {"variant": name, "nll_nats_per_token": bound["nll_nats_per_token"], "stderr": bound["stderr"],
          "gen_ppl": judged["samples"]["judge_perplexity"], "distinct_2": judged["samples"]["distinct_2"],
          "unigram_entropy": judged["samples"]["unigram_entropy"],
          "reference_unigram_entropy": judged["reference"]["unigram_entropy"],
          "reference_gen_ppl": judged["reference"]["judge_perplexity"],
          "reference_distinct_2": judged["reference"]["distinct_2"], "train_seconds": train_seconds,
          "sample_seconds": sample_seconds, "examples": samples[:5]}


def markdown_table(rows: list[dict], ar: dict) -> str:
  lines = ["| variant | NLL bound (nats/token) | × AR NLL | gen. ppl (AR judge) | × real | unigram entropy | "
           "distinct-2 | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    lines.append(f"| {row['variant']} | {row['nll_nats_per_token']:.3f} ± {row['stderr']:.3f} | "
                 f"{row['nll_nats_per_token'] / ar['nll_nats_per_token']:.2f} | {row['gen_ppl']:.2f} | "
                 f"{row['gen_ppl'] / row['reference_gen_ppl']:.2f} | {row['unigram_entropy']:.2f} | "
                 f"{row['distinct_2']:.3f} | {row['train_seconds']:.0f} |")
  lines.append(f"| AR baseline (exact NLL; judge) | {ar['nll_nats_per_token']:.3f} | 1.00 | "
               f"{ar.get('gen_ppl', float('nan')):.2f} | – | {ar.get('unigram_entropy', float('nan')):.2f} | "
               f"{ar.get('distinct_2', float('nan')):.3f} | {ar['train_seconds']:.0f} |")
  if rows:
    lines.append(f"| real validation sentences | – | – | {rows[0]['reference_gen_ppl']:.2f} | 1.00 | "
                 f"{rows[0]['reference_unigram_entropy']:.2f} | {rows[0]['reference_distinct_2']:.3f} | – |")
  return "\n".join(lines)


def main(argv):
  del argv
  from diffusion_lm import evaluate
  names = list(VARIANTS) if FLAGS.ablation else FLAGS.variants
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  budget = {"train.num_steps": FLAGS.steps, "train.num_samples": 0}

  ar_workdir = os.path.join(FLAGS.out_dir, "autoregressive")
  ar_seconds = train_timed(apply_overrides(e2e_ar.get_config(), budget), ar_workdir)
  judge_workdir = FLAGS.judge_workdir or ar_workdir
  ar_report = evaluate.evaluate(ar_workdir, split="validation", max_sequences=FLAGS.eval_sequences,
                                progress=False)
  ar = {"nll_nats_per_token": ar_report["nll_nats_per_token"], "train_seconds": ar_seconds}
  try:  # The AR model's own samples show what fluency is reachable at this budget.
    import diffusion_lm
    ar_samples = diffusion_lm.load(ar_workdir).sample(FLAGS.num_samples, seed=0)
    ar_file = os.path.join(ar_workdir, "samples.txt")
    with open(ar_file, "w") as f:
      f.write("\n".join(ar_samples) + "\n")
    judged = evaluate.evaluate_samples(ar_workdir, ar_file, judge_workdir, progress=False)
    ar |= {"gen_ppl": judged["samples"]["judge_perplexity"], "distinct_2": judged["samples"]["distinct_2"],
           "unigram_entropy": judged["samples"]["unigram_entropy"],
           "examples": ar_samples[:5]}
  except Exception as error:  # AR sampling is optional for the table.
    print(f"(AR samples unavailable: {error})")

  rows = []
  trained = {}  # Training overrides → (workdir, seconds): sampling-only variants reuse a model.
  for name in names:
    overrides, _ = VARIANTS[name]
    training = {k: v for k, v in overrides.items() if not k.startswith("sample.")}
    sampling = {k: v for k, v in overrides.items() if k.startswith("sample.")}
    key = json.dumps(training, sort_keys=True)
    if key not in trained:
      workdir = os.path.join(FLAGS.out_dir, name)
      trained[key] = (workdir, train_timed(apply_overrides(base.get_config(), overrides | budget), workdir))
    workdir, seconds = trained[key]
    rows.append(score_variant(name, workdir, judge_workdir, seconds, sampling))
    print(markdown_table(rows, ar), flush=True)
  with open(os.path.join(FLAGS.out_dir, f"results_{FLAGS.sample_steps}steps.json"), "w") as f:
    json.dump({"rows": rows, "autoregressive": ar, "steps": FLAGS.steps, "sample_steps": FLAGS.sample_steps,
               "descriptions": {n: VARIANTS[n][1] for n in names}}, f, indent=2)
  print(markdown_table(rows, ar))


if __name__ == "__main__":
  cli.run(main)
