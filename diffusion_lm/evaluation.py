"""Evaluation as a library: a likelihood report for a workdir, and sample quality under a judge.

`evaluate` scores a split (or a text file) with the workdir's EMA weights, through its model kind's
row function and report (scoring.py): the diffusion bound, or the AR model's exact perplexity, over
the same tokens. `evaluate_samples` scores generated text with an autoregressive judge. The eval
binary (evaluate.py) parses flags and calls these; its docstring says what every figure means.

Example:
  >>> report = evaluate("/tmp/e2e", split="test", num_t_samples=8)
  >>> report["nll_nats_per_token"], report["stderr"]
"""

import datetime
import os
import time

import jax
import numpy as np

from diffusion_lm import checkpoint, config_utils, kinds, parallel, pipeline, scoring, text_metrics
from diffusion_lm import workdir as workdir_lib
from diffusion_lm.data import datasets
from diffusion_lm.data.layout import split_pair
from diffusion_lm.diffusion import likelihood
from diffusion_lm.errors import UserError
from diffusion_lm.semantic_classifier import parse_mr

TOKENS_COUNTED = ("non-PAD positions of the encoded rows, EOS included; for the diffusion bound the "
                  "numerator sums over all positions, PAD included (the model generates the padding)")


def check_report_directory(workdir: str) -> None:
  """WORKDIR/eval must take the report: a read-only workdir fails before the scoring, not after it."""
  directory = os.path.join(workdir, "eval")
  workdir_lib.check_writable(directory, f"{directory} (where the report goes)")


def eval_texts(config, split: str, text_file: str | None) -> list[str]:
  """The texts of `split` of the workdir's dataset, or the non-blank lines of `text_file`."""
  if text_file:
    if not os.path.isfile(text_file):
      raise UserError(f"--text_file={text_file} does not exist; give a UTF-8 file with one example per line")
    texts = list(datasets.read_text_lines(text_file))
    if not texts:
      raise UserError(f"--text_file={text_file} has no non-blank lines; give one example per line")
    return texts
  return datasets.load_texts(config.data, split)


def evaluate(workdir: str, split: str = "test", text_file: str | None = None, num_t_samples: int = 8,
             seed: int = 0, batch_size: int = 64, embedding_noise: bool | None = None, discrete_steps: int = 0,
             time_sampling: str = "log_snr", x0_estimate: str = "network", max_sequences: int = 0,
             step: int | None = None, write: bool = True, progress: bool = True) -> dict:
  """Scores `split` (or `text_file`) with the workdir's EMA weights; returns (and writes) the report.

  Diffusion: the likelihood bound with `num_t_samples` times per sequence (see
  diffusion/likelihood.py; `embedding_noise=None` folds Diffusion-LM's σ_0 noise into the forward
  process exactly when the model was trained with the `e2e` objective, and `x0_estimate`
  "rounding" bounds the soft-clamped model); autoregressive: exact perplexity. `max_sequences` > 0 keeps the first
  that many sequences (quick checks). The report goes to WORKDIR/eval/<split>.json
  (WORKDIR/eval/text_<stem>.json for a text file).

  Example:
    >>> report = evaluate("/tmp/e2e", split="test", num_t_samples=8)
    >>> report["nll_nats_per_token"], report["stderr"]
  """
  started = time.perf_counter()
  if num_t_samples < 2 or num_t_samples % 2:
    raise UserError(f"--num_t_samples={num_t_samples} must be even and >= 2 (two independent halves "
                    "give the standard error); use e.g. 8")
  if discrete_steps < 0 or max_sequences < 0:
    raise UserError("--discrete_steps and --max_sequences must be >= 0")
  if time_sampling not in likelihood.TIME_SAMPLING:
    raise UserError(f"--time_sampling={time_sampling} is not one of {', '.join(likelihood.TIME_SAMPLING)}")
  if x0_estimate not in likelihood.X0_ESTIMATES:
    raise UserError(f"--x0_estimate={x0_estimate} is not one of {', '.join(likelihood.X0_ESTIMATES)}")
  loaded = workdir_lib.load_checkpoint(workdir, step)
  if write:
    check_report_directory(workdir)
  config = loaded.config
  if embedding_noise is None:  # The forward process the model was trained on.
    embedding_noise = config.diffusion.objective == "e2e"
  texts = eval_texts(config, split, text_file)
  if max_sequences:
    texts = texts[:max_sequences]
  tokens_NL, stats = scoring.encode_rows(texts, loaded.tokenizer, config.data.seq_len, config.data.mode,
                                             config.data.conditional)
  if stats["num_truncated_sequences"]:
    parallel.warn(f"{stats['num_truncated_sequences']} of {len(texts)} sequences are longer than the model's "
                  f"seq_len={config.data.seq_len} and were cut (EOS kept): the figures are for the cut text")
  name = f"text_{os.path.splitext(os.path.basename(text_file))[0]}" if text_file else split
  kind = kinds.get(config.model.kind)
  options = scoring.ScoringOptions(num_t_samples, seed, embedding_noise, discrete_steps, time_sampling, x0_estimate)
  per_row = scoring.score_rows(kind.row_fn(loaded.model, config, options), loaded.params, tokens_NL, batch_size,
                               loaded.mesh, parallel.logical_rules(config.mesh), desc=f"score {name}",
                               progress=progress)
  report = kind.report(per_row, options)
  report |= stats | {"tokens_counted": TOKENS_COUNTED, "checkpoint_step": int(loaded.step),
                     "model_kind": config.model.kind}
  report["settings"] = {
      "workdir": os.path.abspath(workdir), "split": None if text_file else split,
      "text_file": os.path.abspath(text_file) if text_file else None, "num_t_samples": num_t_samples,
      "seed": seed, "batch_size": batch_size, "embedding_noise": embedding_noise,
      "discrete_steps": discrete_steps, "time_sampling": time_sampling, "x0_estimate": x0_estimate,
      "max_sequences": max_sequences,
      "weights": "ema", "seq_len": config.data.seq_len, "data_mode": config.data.mode,
      "objective": config.diffusion.objective, "schedule": config.diffusion.schedule,
      "parameterization": config.model.parameterization, "self_conditioning": config.model.self_conditioning,
      "num_devices": jax.device_count(), "num_processes": jax.process_count(), "platform": jax.default_backend(),
      "jax_version": jax.__version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "wall_seconds": round(time.perf_counter() - started, 1)}
  if write:
    workdir_lib.write_report(workdir, name, report)
  return report


def evaluate_samples(workdir: str, samples_file: str, judge_workdir: str, seed: int = 0, batch_size: int = 64,
                     write: bool = True, progress: bool = True) -> dict:
  """Generative perplexity (under an AR judge) and distinct-n of `samples_file`, and of as many real
  validation sentences of the workdir's dataset (a seeded random draw), the reference.

  Example:
    >>> report = evaluate_samples("/tmp/e2e", "/tmp/e2e/samples.txt", judge_workdir="/tmp/e2e_ar")
    >>> report["samples"]["judge_perplexity"], report["reference"]["judge_perplexity"]
  """
  started = time.perf_counter()
  if not os.path.isfile(samples_file):
    raise UserError(f"--samples={samples_file} does not exist; write one sample per line "
                    "(python -m diffusion_lm.sample --output=FILE)")
  with open(samples_file, encoding="utf-8") as f:
    samples = [line.strip() for line in f.read().splitlines()]
  while samples and not samples[-1]:
    samples.pop()  # A trailing blank line is the file's end, not an empty sample.
  if not samples:
    raise UserError(f"--samples={samples_file} is empty; write one sample per line")
  judge = workdir_lib.load_checkpoint(judge_workdir)
  if judge.config.model.kind != "autoregressive":
    raise UserError(f"--judge_workdir={judge_workdir} holds a {judge.config.model.kind} model; the judge must "
                    "be autoregressive (train one with --config=configs/e2e_ar.py)")
  config = workdir_lib.saved_config(workdir)
  if write:
    check_report_directory(workdir)
  validation = datasets.load_texts(config.data, "validation")
  chosen = np.sort(np.random.default_rng(seed).choice(len(validation), min(len(samples), len(validation)),
                                                      replace=False))
  references = [validation[i] for i in chosen]
  row_fn = scoring.autoregressive_row_fn(judge.model)
  judged = scoring.judge_texts(judge, samples, batch_size, "judge samples", progress, row_fn, keep_rows=True)
  real = scoring.judge_texts(judge, references, batch_size, "judge references", progress, row_fn, keep_rows=True)
  sample_rows, real_rows = judged.pop("rows"), real.pop("rows")
  report = {"samples": judged, "reference": real,
            # Samples' judge perplexity ÷ real sentences', with a 95 % bootstrap interval over both sets.
            "perplexity_ratio": judged["judge_perplexity"] / real["judge_perplexity"],
            "perplexity_ratio_ci95": list(scoring.perplexity_ratio_interval(sample_rows, real_rows, seed=seed)),
            "judge_step": int(judge.step), "tokens_counted": "non-PAD positions, EOS included"}
  report["settings"] = {
      "workdir": os.path.abspath(workdir), "samples_file": os.path.abspath(samples_file),
      "judge_workdir": os.path.abspath(judge_workdir), "reference_split": "validation", "seed": seed,
      "batch_size": batch_size, "judge_seq_len": judge.config.data.seq_len,
      "num_devices": jax.device_count(), "jax_version": jax.__version__,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "wall_seconds": round(time.perf_counter() - started, 1)}
  if write:
    workdir_lib.write_report(workdir, f"samples_{os.path.splitext(os.path.basename(samples_file))[0]}", report)
  return report


def grouped_references(texts: list[str]) -> dict[str, list[str]]:
  """{source: [its targets]} in first-seen order, from `source<TAB>target` texts (E2E: ~7 references per MR).

  Example:
    >>> grouped_references(["a\tA one.", "a\tThe a.", "b\tB."])
    {'a': ['A one.', 'The a.'], 'b': ['B.']}
  """
  groups: dict[str, list[str]] = {}
  for text in texts:
    source, target = split_pair(text)
    groups.setdefault(source, []).append(target)
  return groups


def load_drafter(workdir: str, draft_workdir: str):
  """The autoregressive pipeline of `draft_workdir`, which must share `workdir`'s tokenizer."""
  drafter = pipeline.load(draft_workdir)
  if not isinstance(drafter, pipeline.AutoregressivePipeline) or not drafter.config.data.conditional:
    raise UserError(f"--draft_workdir={draft_workdir} must hold a conditional autoregressive model "
                    "(configs/e2e_cond_ar.py)")
  mine = os.path.join(workdir, workdir_lib.TOKENIZER_FILE)
  if checkpoint.file_sha256(drafter.tokenizer.model_file) != checkpoint.file_sha256(mine):
    raise UserError(f"--draft_workdir={draft_workdir} has another tokenizer than {workdir}; train both on the same "
                    f"data and vocabulary (copy {mine} into the draft workdir before training it)")
  return drafter


def evaluate_generation(workdir: str, split: str = "test", steps: int | None = None, seed: int = 0,
                        max_sources: int = 0, draft_workdir: str | None = None, strength: float | None = None,
                        write: bool = True, source_guidance: float = 0.0, mbr: int | None = None,
                        model_time_floor: float | None = None, predicted_length: bool | None = None,
                        source_coverage: float | None = None, complete: bool = False) -> dict:
  """Data-to-text quality of a conditional workdir: one output per source of `split`, scored against
  all of that source's references.

  Figures: corpus BLEU (sacrebleu, lower-cased, 13a tokens, all references of each source) and chrF;
  for E2E the slot error rate (text_metrics.slot_errors: MR values missing or added) of the outputs
  and, as the checker's floor, of each source's first human reference; seconds per source. With
  `draft_workdir` (a conditional AR workdir) the AR model drafts and this one refines each draft at
  `strength` (strength None: the drafts themselves are scored), or with `complete` keeps each draft
  and writes the source words it lacks after it (`Pipeline.complete`); `source_guidance` w > 0 samples
  with classifier-free guidance on the source, `mbr` k keeps the minimum-Bayes-risk output of k
  (`Pipeline.generate`), `model_time_floor` replaces the config's `sample.model_time_floor`
  (DINOISER's condition-enhanced sampling) and `predicted_length` its `sample.predicted_length`
  (each target written at the length the model expects for its source), `source_coverage` its
  `sample.source_coverage` (each source word nudged in and not repeated). Outputs go to
  WORKDIR/eval/generate_<name>.txt, the report to WORKDIR/eval/generate_<name>.json.

  Example:
    >>> report = evaluate_generation("/tmp/e2e_cond", split="test", steps=200)
    >>> report["bleu"], report["slot_error_rate"]
    >>> evaluate_generation("/tmp/e2e_cond", steps=20, mbr=5)["bleu"]
  """
  if max_sources < 0:
    raise UserError("--max_sequences must be >= 0")
  if mbr is not None and mbr < 1:
    raise UserError(f"--mbr={mbr}: give the number of candidates per source, >= 1")
  if complete and (not draft_workdir or strength is not None):
    raise UserError("--complete extends AR drafts: give --draft_workdir=AR_WORKDIR, and no --strength (that "
                    "rewrites the drafts instead)")
  pipe = pipeline.load(workdir)
  config = pipe.config
  overrides = {name: value for name, value in (("sample.model_time_floor", model_time_floor),
                                                ("sample.predicted_length", predicted_length),
                                                ("sample.source_coverage", source_coverage)) if value is not None}
  if overrides:
    config_utils.validate(config_utils.apply_overrides(config, overrides))
  if not config.data.conditional:
    raise UserError(f"--generate needs a conditional workdir (data.conditional=True, e.g. configs/e2e_cond.py); "
                    f"{workdir} was trained without sources")
  if write:
    check_report_directory(workdir)
  groups = grouped_references(datasets.load_texts(config.data, split))
  sources = list(groups)[:max_sources or None]
  references = [groups[source] for source in sources]
  started = time.perf_counter()
  name = (f"generate_{split}" + (f"_refine{strength}" if draft_workdir and strength is not None else
                                 "_complete" if complete else "_drafts" if draft_workdir else "")
          + (f"_guided{source_guidance:g}" if source_guidance else "") + (f"_mbr{mbr}" if mbr else "")
          + (f"_floor{model_time_floor:g}" if model_time_floor is not None else "")
          + ({True: "_predicted_length", False: "_free_length"}.get(predicted_length, ""))
          + (f"_coverage{source_coverage:g}" if source_coverage is not None else ""))
  if source_guidance and (draft_workdir or not hasattr(pipe, "refine")):
    raise UserError("--source_guidance samples a conditional diffusion model's targets; it does not apply to "
                    "AR drafts or an autoregressive --workdir")
  if mbr and (draft_workdir or not hasattr(pipe, "refine")):
    raise UserError("--mbr picks among a conditional diffusion model's samples; it does not apply to AR drafts "
                    "or an autoregressive --workdir (greedy decoding draws one output)")
  if draft_workdir:
    if (strength is not None or complete) and not hasattr(pipe, "refine"):
      raise UserError(f"--{'strength' if strength is not None else 'complete'} revises drafts with a diffusion "
                      f"model; {workdir} holds a model of kind {config.model.kind}")
    drafter = load_drafter(workdir, draft_workdir)
    outputs = drafter.generate(sources, seed=seed)
    if strength is not None:
      outputs = pipe.refine(outputs, sources, strength, steps, seed)
    elif complete:
      outputs = pipe.complete(outputs, sources, steps, seed)
  else:
    outputs = pipe.generate(sources, steps=steps, seed=seed, mbr=mbr,
                            **({"source_guidance": source_guidance} if source_guidance else {}))
  seconds = time.perf_counter() - started
  report = {"bleu": 100 * text_metrics.corpus_bleu(outputs, references),
            "chrf": text_metrics.corpus_chrf(outputs, references),
            "seconds_per_source": seconds / len(sources), "num_sources": len(sources),
            "num_references": sum(map(len, references)), "checkpoint_step": int(pipe.step),
            "model_kind": config.model.kind,
            "bleu_scorer": "sacrebleu corpus BLEU, lower-cased, 13a tokenization, all references of each source "
                           "(the E2E challenge's script also lower-cases and uses mteval-v13a tokens; it may differ in "
                           "detail, so compare with the published figures as an approximation)"}
  if config.data.name == "e2e":
    mrs = [parse_mr(source) for source in sources]
    report |= text_metrics.slot_error_rate(mrs, outputs)
    report["human_slot_error_rate"] = text_metrics.slot_error_rate(mrs, [refs[0] for refs in references])[
        "slot_error_rate"]
  report["settings"] = {
      "workdir": os.path.abspath(workdir), "split": split, "steps": steps or config.sample.steps, "seed": seed,
      "sampler": config.sample.sampler, "draft_workdir": draft_workdir and os.path.abspath(draft_workdir),
      "strength": strength, "complete": complete, "source_guidance": source_guidance, "mbr": mbr,
      "model_time_floor": config.sample.model_time_floor, "predicted_length": config.sample.predicted_length,
      "source_coverage": config.sample.source_coverage,
      "max_sources": max_sources,
      "report_name": name, "num_devices": jax.device_count(),
      "platform": jax.default_backend(), "jax_version": jax.__version__,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
  if write:
    workdir_lib.write_report(workdir, name, report)
    if parallel.is_chief():
      with open(os.path.join(workdir, "eval", f"{name}.txt"), "w") as f:
        f.write("".join(f"{source}\t{output}\n" for source, output in zip(sources, outputs)))
  return report


def format_report(report: dict) -> str:
  """One human-readable line per figure."""
  if "bleu" in report:
    line = (f"{report['num_sources']} sources: BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}, "
            f"{report['seconds_per_source']:.3f} s per source")
    if "slot_error_rate" in report:
      line += (f"; slot error rate {100 * report['slot_error_rate']:.2f}% (missing {100 * report['missing_rate']:.2f}%, "
               f"added {100 * report['added_rate']:.2f}%; human references {100 * report['human_slot_error_rate']:.2f}%)")
    return line
  if "samples" in report:
    lines = []
    for name in ("samples", "reference"):
      part = report[name]
      lines.append(f"{name:9s}: judge perplexity {part['judge_perplexity']:.2f}, unigram entropy "
                   f"{part['unigram_entropy']:.3f} nats, distinct-1/2/3 "
                   f"{part['distinct_1']:.3f}/{part['distinct_2']:.3f}/{part['distinct_3']:.3f}, "
                   f"{part['num_sequences']} sequences, {part['mean_words']:.1f} words on average")
    low, high = report["perplexity_ratio_ci95"]
    lines.append(f"samples ÷ reference: judge perplexity {report['perplexity_ratio']:.3f} "
                 f"(95 % bootstrap interval {low:.3f}–{high:.3f})")
    return "\n".join(lines)
  where = report["settings"]["split"] or report["settings"]["text_file"]
  counted = f"{report['num_tokens']:,} tokens (EOS counted, PAD not) in {report['num_sequences']:,} sequences"
  if report["exact"]:
    return (f"{where}: {report['nll_nats_per_token']:.4f} nats/token, {report['bits_per_token']:.4f} bits, "
            f"perplexity {report['perplexity']:.3f} (exact) over {counted}")
  terms = ", ".join(f"{term} {report[f'{term}_nats_per_token']:.4f}" for term in likelihood.TERMS)
  terms += f"; of the total, PAD positions {report['pad_nats_per_token']:.4f}"
  return (f"{where}: <= {report['nll_nats_per_token']:.4f} ± {report['stderr']:.4f} nats/token "
          f"({report['bits_per_token']:.4f} bits, perplexity <= {report['perplexity_bound']:.5g}) over {counted}\n"
          f"  terms (nats/token): {terms}\n  a bound on {likelihood.MODEL_NAMES[report['settings']['x0_estimate']]}, "
          f"embedding_noise={report['settings']['embedding_noise']}")
