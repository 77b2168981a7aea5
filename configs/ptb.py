"""Penn Treebank (Mikolov's language-modelling version) for the diffusion LM: the default recipe on PTB.

The recipe (objective, parameterisation, embeddings, schedule, learning rate, sampler) is
configs/e2e.py's, so the E2E and PTB rows of BENCHMARKS.md measure one recipe on two corpora; only
the data and the budget differ.

PTB is research-only (WSJ text, © LDC / Dow Jones): it is never bundled. Point the config at a
directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt, either with the config string
or with the three file fields; on the project's shared machine the files are in
/work/shared/data/ptb.

Words are split by the word tokenizer's regex (punctuation such as "mr." → "mr ." is split off),
so token counts, and hence perplexities, are not those of the standard 10k-word PTB setup; the
diffusion bound and the AR perplexity (configs/ptb_ar.py) are measured on the same tokens.

Example:
  python -m diffusion_lm.train --config=configs/ptb.py:/work/shared/data/ptb --workdir=/tmp/ptb
  python -m diffusion_lm.train --config=configs/ptb.py --workdir=/tmp/ptb \
      --config.data.train_files=/data/ptb/ptb.train.txt \
      --config.data.validation_files=/data/ptb/ptb.valid.txt --config.data.test_files=/data/ptb/ptb.test.txt
"""

import os

from configs import e2e


def get_config(data_dir: str = ""):
  """`data_dir` (the text after ':' in --config=configs/ptb.py:DIR) fills in the three file paths."""
  config = e2e.get_config()
  config.data.name = "text_files"  # One sentence per line.
  if data_dir:
    config.data.train_files = os.path.join(data_dir, "ptb.train.txt")  # 42,068 sentences.
    config.data.validation_files = os.path.join(data_dir, "ptb.valid.txt")  # 3,370 sentences.
    config.data.test_files = os.path.join(data_dir, "ptb.test.txt")  # 3,761 sentences.
  config.data.tokenizer = "word"  # PTB is already lower-cased, word-level, with <unk> and N.
  config.data.vocab_size = 10_500  # Upper bound for "word": keeps every type (~10k) plus specials.
  config.data.seq_len = 64  # Pad mode; 2 of 3,761 test sentences are longer and are cut (EOS kept).
  config.data.mode = "pad"  # One sentence per row, as in E2E, so numbers are per sentence.
  config.train.num_steps = 1000  # About the main job's CPU time (1,849 vs 1,542 CPU-seconds measured): a step costs
  #                               3.6× E2E's (the 10.5k-word softmax, seq 64 instead of 48).
  return config
