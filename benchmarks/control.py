"""Diffusion-LM's control suite on the E2E test set: semantic content, length, infilling, editing.

Protocol (Li et al. 2022, §7, adapted where stated):
  - Semantic content: for every field=value pair that occurs in the E2E *test* MRs for the fields
    eatType, food, priceRange, customer rating and area (24 pairs; name and near are left out
    because the test set's names never occur in training, familyFriendly because its values
    "yes"/"no" are not words of the text), draw `--per_target` samples with classifier guidance
    towards the pair; success = the value's words appear contiguously in the output
    (case-insensitive). The same samples without guidance give the chance rate, and the human
    references of MRs with the pair, scored the same way, a reference rate. With
    `--best_of=N` every target gets N× the samples: "guided" is then the success of all of them
    (one sample's chance, better estimated) and "guided_best_of_k" that of the sample the
    classifier rates highest among the first k of each group (Pipeline's `best_of`), k = 2, 4, … N.
  - Length: targets 10..40 tokens, `--per_length` samples each, EOS pinned at the target;
    success = the output has target ± 2 tokens (and exact, reported too).
  - Infilling: the first reference of `--num_infill` test MRs; its middle third of words is
    blanked (the same number of one-word blanks, so the length is known) and filled; corpus
    BLEU-4 against all references of that MR, for one sample and for MBR over `--mbr`
    candidates. Diffusion-LM's infilling numbers are on ROCStories, not comparable. A workdir
    trained on another corpus (PTB through text_files) infills its test sentences, each its
    own single reference; the semantic section needs E2E.
  - Editing: `--num_edit` test references re-noised to strength s and denoised; survival = the
    fraction of the draft's words kept (in order, difflib matching).
  - Fluency: the AR judge's perplexity (`--judge_workdir`, diffusion_lm.evaluate) if given, and
    always the fraction of output word bigrams that occur in the E2E training references.

Example:
  python benchmarks/control.py --workdir=runs/e2e --steps=50 --output=runs/e2e/control_benchmark.json
"""

from __future__ import annotations

import collections
import datetime
import difflib
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_lm import cli, control, pipeline, scoring, text_metrics, workdir as workdir_lib  # noqa: E402
from diffusion_lm.data import datasets  # noqa: E402
from diffusion_lm.diffusion import guidance as guidance_lib  # noqa: E402
from diffusion_lm.semantic_classifier import SemanticClassifier, e2e_pairs, parse_mr  # noqa: E402

FIELDS = ("eatType", "food", "priceRange", "customer rating", "area")
PAPER = {"semantic": 81.2, "length": 99.9}  # Diffusion-LM, Table 2 (ctrl success %).

flags.DEFINE_string("workdir", None, "A trained E2E diffusion workdir with a classifier (train_classifier).")
flags.DEFINE_string("judge_workdir", None, "An autoregressive E2E workdir: fluency as its perplexity.")
flags.DEFINE_integer("steps", 50, "Sampling steps.")
flags.DEFINE_integer("per_target", 8, "Samples per semantic field=value target.")
flags.DEFINE_integer("per_length", 4, "Samples per length target.")
flags.DEFINE_integer("num_infill", 64, "Test references to infill.")
flags.DEFINE_integer("mbr", 4, "Candidates for MBR infilling (0 skips it).")
flags.DEFINE_integer("num_edit", 32, "Test references to edit per strength.")
flags.DEFINE_float("guidance_weight", guidance_lib.FLUENCY_WEIGHT, "λ (fluency weight).")
flags.DEFINE_float("guidance_step_size", guidance_lib.STEP_SIZE, "Adagrad step size.")
flags.DEFINE_integer("guidance_steps", guidance_lib.NUM_STEPS, "Adagrad steps per diffusion step.")
flags.DEFINE_integer("best_of", 1, "Semantic: also report picking the classifier's favourite of N guided samples.")
flags.DEFINE_integer("batch_size", 96, "Rows per sampler call.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "E2E split of the MRs and references; tune "
                  "guidance on validation, report on test.")
flags.DEFINE_bool("unguided", True, "Also sample the semantic targets without guidance (chance rate).")
flags.DEFINE_list("sections", ["semantic", "length", "infill", "editing"], "Which parts to run.")
flags.DEFINE_string("output", None, "Write the JSON report here.")
FLAGS = flags.FLAGS


def batched(pipe, plans, *, guidance_fn=None, drafts=None, start_time=1.0, steps=None, mbr=None):
  """Texts for per-row plans in chunks of --batch_size (guidance_fn(chunk_start, n) builds a Guidance)."""
  texts = []
  size = FLAGS.batch_size // (mbr or 1)
  for start in range(0, len(plans), size):
    chunk = plans[start:start + size]
    guide = guidance_fn(start, len(chunk)) if guidance_fn else None
    chunk_drafts = None if drafts is None else drafts[start:start + size]
    texts += pipe._generate(chunk, len(chunk), steps or FLAGS.steps, FLAGS.seed + start, None, None,
                            guidance=guide, mbr=mbr, drafts=chunk_drafts, start_time=start_time)
  return texts


def fluency(texts, known_bigrams, judge):
  result = {"train_bigram_coverage": round(text_metrics.bigram_coverage(texts, known_bigrams), 4)}
  if judge is not None:
    report = scoring.judge_texts(judge, texts, 64, "judge", False)
    result["judge_perplexity"] = round(report["judge_perplexity"], 2)
  return result


def reference_success(pairs, refs, mrs):
  """The criterion applied to the human references: per pair, the fraction of references of MRs
  with that pair that contain the value; averaged over pairs as the samples are (equal weight)."""
  hits = collections.defaultdict(list)
  for ref, mr in zip(refs, mrs):
    for pair in parse_mr(mr).items():
      hits[pair].append(text_metrics.contains_phrase(ref, pair[1]))
  per_pair = {pair: float(np.mean(hits[pair])) for pair in pairs}
  per_field = collections.defaultdict(list)
  for (field, _), rate in per_pair.items():
    per_field[field].append(rate)
  return {"success": round(100 * float(np.mean(list(per_pair.values()))), 1),
          "per_field": {f: round(100 * float(np.mean(r)), 1) for f, r in per_field.items()}}


def semantic(pipe, classifier, test_refs, test_mrs, known_bigrams, judge):
  pairs = sorted({(f, v) for mr in test_mrs for f, v in parse_mr(mr).items() if f in FIELDS})
  rows = [pair for pair in pairs for _ in range(FLAGS.per_target)]
  free = control.free_plan(pipe.config.data.seq_len)

  def summary(texts, rows, seconds):
    hits = [text_metrics.contains_phrase(text, value) for text, (_, value) in zip(texts, rows)]
    per_field = collections.defaultdict(list)
    for hit, (field, _) in zip(hits, rows):
      per_field[field].append(hit)
    step = len(rows) // len(pairs)
    return {"success": round(100 * float(np.mean(hits)), 1), "num_samples": len(texts),
            "per_field": {f: round(100 * float(np.mean(h)), 1) for f, h in per_field.items()},
            **fluency(texts, known_bigrams, judge), "seconds": round(seconds, 1),
            "examples": [f"[{f}={v}] {t}" for t, (f, v) in list(zip(texts, rows))[::step][:8]]}

  results = {"references": reference_success(pairs, test_refs, test_mrs)}
  for name in ("guided", "unguided") if FLAGS.unguided else ("guided",):
    n = FLAGS.best_of if name == "guided" else 1
    sample_rows = [pair for pair in rows for _ in range(n)]  # A row's n candidates are adjacent.
    guidance_fn = None
    if name == "guided":
      guidance_fn = lambda start, size: classifier.guidance(
          [[pair] for pair in sample_rows[start:start + size]], size, FLAGS.guidance_weight,
          FLAGS.guidance_step_size, FLAGS.guidance_steps)
    started = time.perf_counter()
    texts = batched(pipe, [free] * len(sample_rows), guidance_fn=guidance_fn)
    results[name] = summary(texts, sample_rows, time.perf_counter() - started)
    if n > 1:  # Best of k for k = 2, 4, ... n: the first k candidates of each group of n.
      every_row = classifier.guidance([[pair] for pair in sample_rows], len(sample_rows))
      scores_RN = pipe.control_scores(every_row, texts).reshape(len(rows), n)
      for k in sorted({*(2 ** i for i in range(1, n.bit_length())), n}):
        picks = [texts[i * n + int(np.argmax(row[:k]))] for i, row in enumerate(scores_RN)]
        results[f"{name}_best_of_{k}"] = summary(picks, rows, time.perf_counter() - started)
  results["targets"] = [f"{f}={v}" for f, v in pairs]
  return results


def length(pipe, known_bigrams, judge):
  started = time.perf_counter()
  targets = [n for n in range(10, 41) for _ in range(FLAGS.per_length)]
  plans = [control.build_plan(pipe.tokenizer, pipe.config.data.seq_len, length=n) for n in targets]
  texts = batched(pipe, plans)
  lengths = np.array([len(t.split()) for t in texts])
  targets = np.array(targets)
  return {"success_within_2": round(100 * float(np.mean(np.abs(lengths - targets) <= 2)), 1),
          "exact": round(100 * float(np.mean(lengths == targets)), 1), **fluency(texts, known_bigrams, judge),
          "seconds": round(time.perf_counter() - started, 1), "examples": texts[::FLAGS.per_length * 8]}


def references_and_groups(data_config, split: str) -> tuple[list[str], list[str]]:
  """(texts, the group of each): E2E references grouped by MR; on another corpus (PTB through
  text_files) every sentence is its own group, so it is its own single reference.

  Example:
    >>> refs, groups = references_and_groups(pipe.config.data, "test")
  """
  if data_config.name == "e2e":
    return e2e_pairs(data_config, split)
  texts = datasets.load_texts(data_config, split)
  return texts, texts


def infill(pipe, test_refs, test_mrs, known_bigrams, judge):
  by_mr = collections.defaultdict(list)
  for ref, mr in zip(test_refs, test_mrs):
    by_mr[mr].append(ref)
  chosen = [mr for mr in by_mr if 6 <= len(pipe.tokenizer.encode(by_mr[mr][0])) <= pipe.config.data.seq_len - 1]
  chosen = chosen[:FLAGS.num_infill]
  plans, contexts, references = [], [], []
  for mr in chosen:
    words = [pipe.tokenizer.id_to_piece(i).removeprefix("▁") for i in pipe.tokenizer.encode(by_mr[mr][0])]
    third = len(words) // 3
    left, right = words[:third], words[len(words) - third:]
    blanks = len(words) - 2 * third
    template = " ".join(left + [control.DEFAULT_BLANK] * blanks + right)
    try:
      plans.append(control.build_plan(pipe.tokenizer, pipe.config.data.seq_len, template))
    except control.UnencodableWordsError:
      continue  # A context word outside the model's vocabulary: the template cannot pin it.
    contexts.append(" ".join(left + right))
    references.append(by_mr[mr])
  if not plans:
    raise app.UsageError("no infilling template could be built: every chosen test text holds a word outside the "
                         "model's vocabulary (train with a larger --config.data.vocab_size)")
  result = {"num_examples": len(plans),
            "context_only_bleu": round(100 * text_metrics.corpus_bleu(contexts, references), 2)}
  for name, mbr in (("sample", None), (f"mbr{FLAGS.mbr}", FLAGS.mbr or None)):
    if name != "sample" and not mbr:
      continue
    started = time.perf_counter()
    texts = batched(pipe, plans, mbr=mbr)
    result[name] = {"bleu4": round(100 * text_metrics.corpus_bleu(texts, references), 2),
                    **fluency(texts, known_bigrams, judge), "seconds": round(time.perf_counter() - started, 1),
                    "examples": texts[:4]}
  return result


def editing(pipe, test_refs):
  drafts, texts = [], []
  for ref in dict.fromkeys(test_refs):
    ids = pipe.tokenizer.encode(ref)
    if pipe.tokenizer.unk_id not in ids and len(ids) < pipe.config.data.seq_len:
      drafts.append(ids)
      texts.append(pipe.tokenizer.decode(ids))
    if len(drafts) == FLAGS.num_edit:
      break
  rows = np.zeros((len(drafts), pipe.config.data.seq_len), np.int32)
  for row, ids in zip(rows, drafts):
    row[:len(ids)], row[len(ids)] = ids, pipe.tokenizer.eos_id
  free = control.free_plan(pipe.config.data.seq_len)
  result = {}
  for strength in (0.1, 0.25, 0.5, 0.75, 1.0):
    edited = batched(pipe, [free] * len(rows), drafts=rows, start_time=strength,
                     steps=max(1, round(FLAGS.steps * strength)))
    survival = [difflib.SequenceMatcher(a=d.split(), b=e.split(), autojunk=False).get_matching_blocks()
                for d, e in zip(texts, edited)]
    kept = [sum(block.size for block in blocks) / len(d.split()) for blocks, d in zip(survival, texts)]
    result[f"strength={strength}"] = {"draft_words_kept": round(100 * float(np.mean(kept)), 1),
                                      "example": f"{texts[0]}  ->  {edited[0]}"}
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax and tfds log every restore at INFO.
  started = time.perf_counter()
  pipe = pipeline.load(FLAGS.workdir)
  # Only guidance needs the classifier (a masked workdir has none): --sections=length,infill,editing.
  classifier = SemanticClassifier.load(FLAGS.workdir) if "semantic" in FLAGS.sections else None
  judge = workdir_lib.load_checkpoint(FLAGS.judge_workdir) if FLAGS.judge_workdir else None
  train_refs, _ = references_and_groups(pipe.config.data, "train")
  test_refs, test_mrs = references_and_groups(pipe.config.data, FLAGS.split)
  known_bigrams = text_metrics.bigram_set(train_refs)
  sections = {
      "semantic": lambda: semantic(pipe, classifier, test_refs, test_mrs, known_bigrams, judge),
      "length": lambda: length(pipe, known_bigrams, judge),
      "infill": lambda: infill(pipe, test_refs, test_mrs, known_bigrams, judge),
      "editing": lambda: editing(pipe, test_refs),
  }
  report = {
      **{name: sections[name]() for name in FLAGS.sections},
      "reference_fluency": fluency(test_refs[:256], known_bigrams, judge),
      "settings": {"workdir": os.path.abspath(FLAGS.workdir), "diffusion_step": pipe.step,
                   "classifier": classifier.info if classifier else None, "steps": FLAGS.steps,
                   "sampler": pipe.config.sample.sampler,
                   "clamp": pipe.config.sample.clamp, "per_target": FLAGS.per_target,
                   "per_length": FLAGS.per_length, "best_of": FLAGS.best_of, "split": FLAGS.split,
                   "guidance": {"weight": FLAGS.guidance_weight, "step_size": FLAGS.guidance_step_size,
                                "adagrad_steps": FLAGS.guidance_steps},
                   "seed": FLAGS.seed, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "wall_seconds": round(time.perf_counter() - started, 1)},
      "paper": PAPER,
  }
  text = json.dumps(report, indent=1, ensure_ascii=False)
  print(text)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
