"""WikiText-2 (tokenized, v1) for the diffusion LM: the default recipe on book-length prose, packed.

The recipe (objective, parameterisation, embeddings, schedule, learning rate, sampler) is
configs/e2e.py's, as for configs/ptb.py; here the text is Wikipedia articles packed into a stream
(no sentence boundaries kept) and split by a unigram SentencePiece model, the setting in which
researchers score their own text with the eval binary.

Point the config at a directory holding train.txt, valid.txt and test.txt (the tokenized v1
release's wiki.{train,valid,test}.tokens, renamed). The project's shared copy has no train.txt;
BENCHMARKS.md then trains on valid.txt and scores test.txt (see the example).

Example:
  python -m diffusion_lm.train --config=configs/wikitext2.py:/data/wikitext-2 --workdir=/tmp/wt2
  python -m diffusion_lm.train --config=configs/wikitext2.py:/work/shared/data/wikitext-2 --workdir=/tmp/wt2 \
      --config.data.train_files=/work/shared/data/wikitext-2/valid.txt
  python -m diffusion_lm.evaluate --workdir=/tmp/wt2 --split=test
"""

import os

from configs import e2e


def get_config(data_dir: str = ""):
  """`data_dir` (the text after ':' in --config=configs/wikitext2.py:DIR) fills in the three file paths."""
  config = e2e.get_config()
  config.data.name = "text_files"
  if data_dir:
    config.data.train_files = os.path.join(data_dir, "train.txt")  # 36,718 lines, 2.1M words.
    config.data.validation_files = os.path.join(data_dir, "valid.txt")  # 3,760 lines, 214k words.
    config.data.test_files = os.path.join(data_dir, "test.txt")  # 4,358 lines, 241k words.
  config.data.tokenizer = "unigram"  # Subwords: WikiText keeps 33k word types, too many for a word vocabulary.
  config.data.vocab_size = 4096  # Exact for unigram; small enough that the V-wide softmax stays a minor cost.
  config.data.seq_len = 64  # Pack mode: every row is 64 tokens of running text.
  config.data.mode = "pack"  # Articles concatenated into one stream and cut into rows (no PAD).
  config.train.num_steps = 1500  # About the main job's CPU time (see BENCHMARKS.md, the WikiText-2 rows).
  return config
