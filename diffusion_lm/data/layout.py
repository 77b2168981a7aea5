"""The row layout every model, sampler and scorer shares: a text's tokens, one EOS, then PAD.

Special ids are the same in every model and tokenizer (pad=0, eos=1, bos=2, unk=3), so padding is
always id 0. A row of `seq_len` holds at most `seq_len − 1` tokens plus its EOS; a longer text is
cut and keeps the EOS as its last token. Training rows (data.batching), templates and drafts
(control, editing), rows scored by a classifier, and what the decoders emit after a row's first EOS
(`pad_after_eos`) all follow it.

Example:
  >>> layout_row([7, 33, 4], seq_len=6)
  array([ 7, 33,  4,  1,  0,  0], dtype=int32)
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_IDS = (PAD_ID, EOS_ID, BOS_ID)  # Never text; banned from slots that must hold a word.


def layout_row(ids: Sequence[int], seq_len: int) -> np.ndarray:
  """int32 [seq_len]: `ids` (cut to seq_len − 1), EOS, then PAD.

  Example:
    >>> layout_row([5, 6, 7, 8], seq_len=3)
    array([5, 6, 1], dtype=int32)
  """
  row = np.full(seq_len, PAD_ID, np.int32)
  kept = min(len(ids), seq_len - 1)  # Room for the EOS, even when cutting.
  row[:kept] = list(ids)[:kept]
  row[kept] = EOS_ID
  return row


def layout_rows(token_lists: Sequence[Sequence[int]], seq_len: int) -> np.ndarray:
  """int32 [N, seq_len]: `layout_row` of each list."""
  rows = np.full((len(token_lists), seq_len), PAD_ID, np.int32)
  for row, ids in zip(rows, token_lists):
    row[:] = layout_row(ids, seq_len)
  return rows


def pad_after_eos(tokens_BL: jax.Array) -> jax.Array:
  """Replaces every token after a row's first EOS by PAD (a generated row in the training layout).

  Example:
    >>> pad_after_eos(jnp.array([[5, 1, 7, 1]]))
    Array([[5, 1, 0, 0]], dtype=int32)
  """
  is_eos_BL = tokens_BL == EOS_ID
  after_eos_BL = (jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0
  return jnp.where(after_eos_BL, PAD_ID, tokens_BL)
