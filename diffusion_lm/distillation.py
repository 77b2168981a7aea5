"""Sequence-level knowledge distillation (Kim & Rush 2016): a conditional model trained on a teacher's outputs.

E2E gives each MR about nine human references, worded differently. A parallel decoder fits them all
at once, so its target positions take their words from different references: the repeats and
omissions of non-autoregressive models (Gu et al. 2018's multimodality problem; BENCHMARKS.md,
"Data-to-text"). With `data.distill_from` set to a conditional AR workdir, every distinct training
source keeps one target, the AR model's greedy output, and the student learns that one wording.
The validation and test splits keep their human references, so losses and scores stay comparable.

The outputs are decoded once, in every process (greedy, so the same everywhere), and cached as
WORKDIR/distilled_train.tsv: a resumed run reads the same targets back without the teacher (and
ignores a changed `distill_from`: delete the file, in a fresh workdir, to distil from another teacher).

Example:
  python -m diffusion_lm.train --config=configs/e2e_cond_ar.py --workdir=/tmp/e2e_cond_ar
  python -m diffusion_lm.train --config=configs/e2e_cond.py --workdir=/tmp/e2e_cond_kd \
      --config.data.distill_from=/tmp/e2e_cond_ar
"""

import os

from diffusion_lm import parallel, pipeline, workdir as workdir_lib
from diffusion_lm.data import datasets
from diffusion_lm.data.layout import max_source_len, split_pair
from diffusion_lm.errors import UnencodableTextError, UserError

DISTILLED_FILE = "distilled_train.tsv"


def check_teacher(teacher_workdir: str, workdir: str) -> None:
  """Before any work: a one-line UserError unless `teacher_workdir` holds a conditional AR model.

  No check once WORKDIR/distilled_train.tsv exists: a resumed run no longer needs the teacher.

  Example:
    >>> check_teacher("/tmp/e2e_cond", "/tmp/kd")   # UserError: ... holds a diffusion model ...
  """
  if os.path.exists(os.path.join(workdir, DISTILLED_FILE)):
    return
  try:
    teacher_config = workdir_lib.saved_config(teacher_workdir)
  except UserError as error:
    raise UserError(f"--config.data.distill_from={teacher_workdir}: {error}") from None
  if teacher_config.model.kind != "autoregressive" or not teacher_config.data.conditional:
    raise UserError(f"--config.data.distill_from={teacher_workdir} holds a {teacher_config.model.kind} model "
                    f"(conditional={teacher_config.data.conditional}); give a conditional autoregressive workdir "
                    "(configs/e2e_cond_ar.py)")


def distilled_texts(train_texts: list[str], teacher_workdir: str, workdir: str, seed: int = 0) -> list[str]:
  """`source<TAB>teacher's greedy output`, one per distinct source of `train_texts` (first-seen order).

  Read from WORKDIR/distilled_train.tsv when it is there (a resumed run); otherwise decoded and written
  there. A source the teacher writes nothing for is left out; one it cannot read (a word outside its
  vocabulary, or too long for its rows) keeps its original pairs.

  Example:
    >>> texts = distilled_texts(datasets.load_texts(config.data, "train"), "/tmp/e2e_cond_ar", "/tmp/kd")
    >>> len(texts)   # 4,862 for E2E's 42,061 training pairs
  """
  path = os.path.join(workdir, DISTILLED_FILE)
  if os.path.exists(path):
    return list(datasets.read_text_lines(path))
  check_teacher(teacher_workdir, workdir)
  teacher = pipeline.load(teacher_workdir)
  sources = list(dict.fromkeys(split_pair(text)[0] for text in train_texts))
  readable = [source for source in sources if _teacher_reads(teacher, source)]
  kept = [text for text in train_texts if not _teacher_reads(teacher, split_pair(text)[0])]
  if parallel.is_chief():
    print(f"Distilling: the {len(readable)} distinct training sources decoded by {teacher_workdir}"
          + (f"; {len(sources) - len(readable)} it cannot read (unknown words, or too long) keep their "
             f"{len(kept)} pairs." if kept else "."), flush=True)
  outputs = teacher.generate(readable, seed=seed) if readable else []
  texts = [text for text, output in zip(datasets.join_pairs(readable, outputs), outputs) if output.strip()] + kept
  if parallel.is_chief():
    partial = f"{path}.partial"  # Renamed when whole: a run stopped mid-write leaves no short cache.
    with open(partial, "w", encoding="utf-8") as f:
      f.write("".join(f"{text}\n" for text in texts))
    os.replace(partial, path)
  return texts


def _teacher_reads(teacher: pipeline.AutoregressivePipeline, source: str) -> bool:
  """Whether `teacher.generate` takes `source`: every word in its vocabulary, room left for a target."""
  try:
    return len(teacher.tokenizer.encode_strict(source)) <= max_source_len(teacher.config.data.seq_len)
  except UnencodableTextError:
    return False
