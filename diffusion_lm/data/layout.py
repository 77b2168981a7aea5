"""The row layout every model, sampler and scorer shares: a text's tokens, one EOS, then PAD.

Special ids are the same in every model and tokenizer (pad=0, eos=1, bos=2, unk=3), so padding is
always id 0. A row of `seq_len` holds at most `seq_len − 1` tokens plus its EOS; a longer text is
cut and keeps the EOS as its last token. Training rows (data.batching), templates and drafts
(control, editing), rows scored by a classifier, and what the decoders emit after a row's first EOS
(`pad_after_eos`) all follow it.

A conditional example (a source given clean, a target generated) is the string `source<TAB>target`
(a `text_files` line; E2E's MR and reference) and the row `source, BOS, target, EOS, PAD`: BOS ends
the source, as it starts an autoregressive model's text. `source_mask` finds the source (BOS
included) from the ids alone, so rows need no side channel; a row without a BOS has no source (an
unconditional row, or one whose source was dropped for classifier-free training).

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
SOURCE_END_ID = BOS_ID  # Ends a conditional row's source; the target follows.
PAIR_SEPARATOR = "\t"  # Between source and target in a conditional example's text.
MIN_TARGET_ROOM = 2  # One target token and its EOS.


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


def split_pair(text: str) -> tuple[str, str] | None:
  """(source, target) of a conditional example's text `source<TAB>target`, or None without a tab.

  Example:
    >>> split_pair("name[The Eagle]\tThe Eagle is a pub .")
    ('name[The Eagle]', 'The Eagle is a pub .')
  """
  if PAIR_SEPARATOR not in text:
    return None
  source, target = text.split(PAIR_SEPARATOR, 1)
  return source.strip(), target.strip()


def max_source_len(seq_len: int) -> int:
  """The longest source that leaves room for a target: seq_len − BOS − one token − EOS."""
  return seq_len - 1 - MIN_TARGET_ROOM


def layout_pair(source_ids: Sequence[int], target_ids: Sequence[int], seq_len: int) -> np.ndarray:
  """int32 [seq_len]: source, BOS, target (cut to fit, EOS kept), PAD.

  The source is never cut (the caller checks it against `max_source_len`).

  Example:
    >>> layout_pair([40, 41], [7, 33], seq_len=8)
    array([40, 41,  2,  7, 33,  1,  0,  0], dtype=int32)
  """
  if len(source_ids) > max_source_len(seq_len):
    raise ValueError(f"a source of {len(source_ids)} tokens leaves no room for a target in seq_len={seq_len}")
  start = len(source_ids) + 1
  row = np.full(seq_len, PAD_ID, np.int32)
  row[:start - 1] = list(source_ids)
  row[start - 1] = SOURCE_END_ID
  row[start:] = layout_row(target_ids, seq_len - start)
  return row


def source_mask(tokens_BL):
  """bool [B, L]: a row's source positions, up to and including its first BOS (none without one).

  Works on numpy and jax arrays alike (the training loss and the sampler call it on device).

  Example:
    >>> source_mask(np.array([[40, 2, 7, 1], [7, 1, 0, 0]]))
    array([[ True,  True, False, False],
           [False, False, False, False]])
  """
  xp = jnp if isinstance(tokens_BL, jax.Array) else np
  is_end_BL = tokens_BL == SOURCE_END_ID
  ends_before_BL = (xp.cumsum(is_end_BL, axis=1) - is_end_BL) > 0
  return ~ends_before_BL & xp.any(is_end_BL, axis=1, keepdims=True)


def drop_source(row_L: np.ndarray) -> np.ndarray:
  """The row with its source emptied (`BOS, target, EOS, PAD`): conditioning dropout, which
  teaches the model the target alone so that it also samples without a source.

  Example:
    >>> drop_source(np.array([40, 41, 2, 7, 1, 0]))
    array([2, 7, 1, 0, 0, 0])
  """
  source_len = int(np.sum(source_mask(row_L[None])[0])) - 1  # Tokens before the BOS.
  if source_len <= 0:
    return row_L
  return np.concatenate([row_L[source_len:], np.full(source_len, PAD_ID, row_L.dtype)])


def pad_after_eos(tokens_BL: jax.Array) -> jax.Array:
  """Replaces every token after a row's first EOS by PAD (a generated row in the training layout).

  Example:
    >>> pad_after_eos(jnp.array([[5, 1, 7, 1]]))
    Array([[5, 1, 0, 0]], dtype=int32)
  """
  is_eos_BL = tokens_BL == EOS_ID
  after_eos_BL = (jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0
  return jnp.where(after_eos_BL, PAD_ID, tokens_BL)
