"""The compute curve and the multiplier: sample quality against training compute, AR vs diffusion.

Reads the JSON that benchmarks/kinds.py writes for workdirs of each kind trained at several budgets
(same batch, backbone and data: equal compute per step, so steps measure compute), all judged by
one AR judge. Prints, per kind, judge perplexity ÷ real sentences' and unigram entropy against
training steps, and the **multiplier**: how many times the AR twin's training compute a diffusion
kind needs to reach the AR twin's quality at `--reference_steps` (against each AR series in the
tables, e.g. the twin before and after a backbone change). The crossing is interpolated
linearly in (log steps, log ratio) between the two measured budgets around it; when no measured
budget reaches it, the multiplier is a lower bound (and a power-law extrapolation from the last two
points is printed, marked as such). With `--plot`, both panels go to a PNG.

Example:
  python benchmarks/kinds.py --workdirs=ar@500=runs/curve/ar_500,ar@1500=runs/curve/ar_1500,diffusion@500=... \
      --judge_workdir=runs/kinds/e2e_ar --sample_steps=20,50,200 --infill_steps=0 --output=runs/curve/table.json
  python benchmarks/compute_curve.py --table=runs/curve/table.json --plot=benchmarks/compute_curve.png
"""

import json
import math
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list("table", None, "benchmarks/kinds.py --output JSON files; their rows are pooled.")
flags.DEFINE_integer("reference_steps", 1500, "The AR twin's budget whose quality diffusion has to reach.")
flags.DEFINE_string("diffusion_sample_steps", "200", "Which sampling-step count of the diffusion rows the curve uses.")
flags.DEFINE_string("plot", None, "Write the curve as a PNG here (needs matplotlib).")


def crossing_multiplier(points: list[tuple[int, float]], target: float, reference_steps: int) -> dict:
  """Where a quality curve (steps, judge ratio; lower is better) first reaches `target`, ÷ reference_steps.

  Returns {"multiplier", "kind"}: kind "interpolated" (between two measured budgets, in log-log),
  "at_most" (the smallest budget measured already reaches it) or "at_least" (none does; then
  "extrapolated" holds the power-law continuation of the last two points, or None if they do not
  improve).

  Example:
    >>> crossing_multiplier([(500, 60.0), (1500, 26.0), (5000, 8.0)], target=4.0, reference_steps=1500)
    {'multiplier': 3.33..., 'kind': 'at_least', 'extrapolated': 6.77...}
  """
  points = sorted(points)
  if points[0][1] <= target:
    return {"multiplier": points[0][0] / reference_steps, "kind": "at_most"}
  for (steps_a, ratio_a), (steps_b, ratio_b) in zip(points, points[1:]):
    if ratio_b <= target:
      fraction = (math.log(ratio_a) - math.log(target)) / (math.log(ratio_a) - math.log(ratio_b))
      steps = math.exp(math.log(steps_a) + fraction * (math.log(steps_b) - math.log(steps_a)))
      return {"multiplier": steps / reference_steps, "kind": "interpolated"}
  extrapolated = None
  if len(points) >= 2 and points[-1][1] < points[-2][1]:
    (steps_a, ratio_a), (steps_b, ratio_b) = points[-2:]
    slope = (math.log(ratio_b) - math.log(ratio_a)) / (math.log(steps_b) - math.log(steps_a))
    extrapolated = steps_b * math.exp((math.log(target) - math.log(ratio_b)) / slope) / reference_steps
  return {"multiplier": points[-1][0] / reference_steps, "kind": "at_least", "extrapolated": extrapolated}


def curves(rows: list[dict], sample_steps: str) -> dict[str, list[dict]]:
  """series → points sorted by training steps: {steps, ratio, unigram_entropy, real_unigram_entropy, nll, ar}.

  A row named "SERIES@STEPS" (kinds.py's --workdirs=SERIES@STEPS=DIR) belongs to SERIES, so two
  recipes of one kind (or two AR twins, e.g. before and after a backbone change) are two curves;
  other rows are grouped by their kind. `ar` marks the autoregressive series.
  """
  by_kind = {}
  for row in rows:
    is_ar = row["kind"] == "autoregressive"
    figures = row["by_steps"]["AR" if is_ar else sample_steps]
    series = row.get("name", row["kind"]).split("@")[0]
    by_kind.setdefault(series, []).append(
        {"steps": row["train_steps"], "ratio": figures["ratio"], "unigram_entropy": figures["unigram_entropy"],
         "real_unigram_entropy": figures["real_unigram_entropy"], "nll": row["nll_nats_per_token"],
         "exact": row["exact"], "ar": is_ar})
  return {kind: sorted(points, key=lambda p: p["steps"]) for kind, points in by_kind.items()}


def plot(curves_by_kind: dict[str, list[dict]], targets: dict[str, float], path: str) -> None:
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, (quality_axis, entropy_axis) = plt.subplots(1, 2, figsize=(10, 4))
  for kind, points in curves_by_kind.items():
    steps = [p["steps"] for p in points]
    quality_axis.plot(steps, [p["ratio"] for p in points], "o-", label=kind)
    entropy_axis.plot(steps, [p["unigram_entropy"] for p in points], "o-", label=kind)
  real_entropy = next(iter(curves_by_kind.values()))[0]["real_unigram_entropy"]
  for (series, target), style in zip(targets.items(), ("--", ":", "-.")):
    quality_axis.axhline(target, color="grey", linestyle=style, label=f"{series} at {FLAGS.reference_steps} steps")
  entropy_axis.axhline(real_entropy, color="grey", linestyle="--", label="real sentences")
  quality_axis.set(xscale="log", yscale="log", xlabel="training steps (equal compute per step)",
                   ylabel="judge perplexity ÷ real sentences'")
  entropy_axis.set(xscale="log", xlabel="training steps", ylabel="unigram entropy (nats)")
  all_steps = sorted({p["steps"] for points in curves_by_kind.values() for p in points})
  for axis in (quality_axis, entropy_axis):
    axis.set_xticks(all_steps, [str(s) for s in all_steps])
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.legend()
    axis.grid(alpha=0.3, which="both")
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def main(argv):
  del argv
  if not FLAGS.table:
    raise app.UsageError("give --table=JSON[,JSON...] written by benchmarks/kinds.py --output")
  rows = []
  for path in FLAGS.table:
    if not os.path.isfile(path):
      raise app.UsageError(f"--table: {path} does not exist; give the JSON that benchmarks/kinds.py --output wrote")
    with open(path) as f:
      rows += json.load(f)["rows"]
  curves_by_kind = curves(rows, FLAGS.diffusion_sample_steps)
  targets = {series: point["ratio"] for series, points in curves_by_kind.items() for point in points
             if point["ar"] and point["steps"] == FLAGS.reference_steps}
  if not targets:
    raise app.UsageError(f"the table has no autoregressive row trained {FLAGS.reference_steps} steps")
  print("| kind | steps | judge ppl ÷ real | unigram entropy (real) | NLL (nats/token) |")
  print("|---|---:|---:|---:|---:|")
  for kind, points in curves_by_kind.items():
    for p in points:
      print(f"| {kind} | {p['steps']} | {p['ratio']:.2f} | {p['unigram_entropy']:.2f} "
            f"({p['real_unigram_entropy']:.2f}) | {p['nll']:.3f}{'' if p['exact'] else ' (bound)'} |")
  for kind, points in curves_by_kind.items():
    if points[0]["ar"]:
      continue
    for series, target in targets.items():
      result = crossing_multiplier([(p["steps"], p["ratio"]) for p in points], target, FLAGS.reference_steps)
      print(f"{kind}: multiplier to reach {series}@{FLAGS.reference_steps} (judge ratio {target:.2f}): {result}")
  if FLAGS.plot:
    plot(curves_by_kind, targets, FLAGS.plot)
    print(f"wrote {FLAGS.plot}")


if __name__ == "__main__":
  app.run(main)
