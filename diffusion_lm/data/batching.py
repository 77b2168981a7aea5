"""Texts -> fixed-length token rows -> batches.

`BatchSource.batch(step)` is a pure function of (seed, step), so a run resumed at step s sees
exactly the batches an uninterrupted run sees, and the only "iterator state" to checkpoint is
the step. Plain numpy permutations instead of grain: the mapping is a few lines and its
definition (epoch e uses `np.random.default_rng([seed, e])`) stays visible and stable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from diffusion_lm.data.layout import PAD_ID, drop_source, layout_pair, layout_rows, max_source_len, split_pair
from diffusion_lm.errors import DataError

ENCODE_MODES = ("pad", "pack")


class _Encoder(Protocol):  # what encode_corpus needs from diffusion_lm.data.tokenizer.Tokenizer
  eos_id: int

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    ...


def encode_corpus(texts: Sequence[str], tokenizer: _Encoder, seq_len: int, mode: str,
                  conditional: bool = False) -> np.ndarray:
  """Encodes texts into an int32 array [N, seq_len]; every text ends with eos.

  `conditional`: each text is `source<TAB>target`, one row `source, BOS, target, EOS, PAD` per
  text (data/layout.py; pad mode only); a text without a tab, or a source leaving no room for a
  target, is a DataError.

  "pad": one row per text in the layout of data.layout (tokens, EOS, PAD; a long text is cut
  and keeps its EOS). "pack": all (tokens + [eos]) streams concatenated and cut into
  consecutive seq_len rows; the ragged tail is dropped.

  Example:
      >>> encode_corpus(["The pub.", "A cafe near it."], tok, seq_len=6, mode="pad")
      array([[ 7, 33,  4,  1,  0,  0],
             [ 9, 58, 40, 21,  4,  1]], dtype=int32)
  """
  if mode not in ENCODE_MODES:
    raise ValueError(f"mode={mode!r} is not one of {ENCODE_MODES}")
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len} must be >= 1")
  if conditional:
    return _encode_pairs(texts, tokenizer, seq_len)
  token_lists = tokenizer.encode_batch(list(texts))
  if mode == "pack":
    return _pack(token_lists, tokenizer.eos_id, seq_len)
  return layout_rows(token_lists, seq_len)


def _encode_pairs(texts: Sequence[str], tokenizer: _Encoder, seq_len: int) -> np.ndarray:
  pairs = [split_pair(text) for text in texts]
  missing = next((i for i, pair in enumerate(pairs) if pair is None), None)
  if missing is not None:
    raise DataError(f"example {missing + 1} ({texts[missing][:60]!r}) has no tab between source and target; a "
                    "conditional model reads source<TAB>target")
  sources = tokenizer.encode_batch([source for source, _ in pairs])
  targets = tokenizer.encode_batch([target for _, target in pairs])
  longest = max(range(len(sources)), key=lambda i: len(sources[i]))
  if len(sources[longest]) > max_source_len(seq_len):
    raise DataError(f"example {longest + 1}'s source has {len(sources[longest])} tokens and leaves no room for the "
                    f"target in --config.data.seq_len={seq_len} (at most {max_source_len(seq_len)}); raise seq_len")
  return np.stack([layout_pair(s, t, seq_len) for s, t in zip(sources, targets)]).astype(np.int32)


def _pack(token_lists: list[list[int]], eos_id: int, seq_len: int) -> np.ndarray:
  lengths = np.fromiter((len(t) + 1 for t in token_lists), dtype=np.int64, count=len(token_lists))
  stream = np.full(int(lengths.sum()), eos_id, dtype=np.int32)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  # Tokens go everywhere except the last slot of each text, which keeps its eos.
  is_token = np.ones(len(stream), dtype=bool)
  is_token[starts + lengths - 1] = False
  stream[is_token] = np.fromiter(
      (token for tokens in token_lists for token in tokens),
      dtype=np.int32,
      count=int(is_token.sum()),
  )
  num_rows = len(stream) // seq_len
  return stream[:num_rows * seq_len].reshape(num_rows, seq_len)


class BatchSource:
  """Deterministic, resumable batches of token rows.

  Global position p = step * global_batch_size + i reads row perm_e[p mod N] of epoch
  e = p // N, where perm_e = np.random.default_rng([seed, e]).permutation(N) (the identity
  when shuffle=False). Batches therefore wrap across epoch boundaries, and each process takes
  its contiguous slice of the global batch.

  Example:
      >>> source = BatchSource(tokens, global_batch_size=64, seed=0)
      >>> source.batch(step=1000, process_index=0, process_count=2).shape
      (32, 64)
  """

  def __init__(self, tokens: np.ndarray, global_batch_size: int, seed: int, shuffle: bool = True,
               source_dropout: float = 0.0):
    if tokens.ndim != 2 or len(tokens) == 0:
      raise ValueError(f"tokens must be a non-empty [N, seq_len] array, got {tokens.shape}")
    if global_batch_size < 1:
      raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
    self.tokens = tokens
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.source_dropout = source_dropout  # Share of conditional rows whose source is emptied (layout.drop_source).
    self._permutations: dict[int, np.ndarray] = {}  # epoch -> row order, a few cached

  @property
  def num_examples(self) -> int:
    """Rows per epoch."""
    return len(self.tokens)

  @property
  def steps_per_epoch(self) -> int:
    """Full global batches per epoch, N // global_batch_size (at least 1); batches are not
    aligned to epochs, so this is for progress reporting."""
    return max(1, self.num_examples // self.global_batch_size)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's rows of global batch `step`: [global_batch_size // process_count, L].

    Example:
        >>> np.array_equal(BatchSource(t, 8, seed=1).batch(5), BatchSource(t, 8, seed=1).batch(5))
        True
    """
    if self.global_batch_size % process_count:
      raise ValueError(f"global_batch_size={self.global_batch_size} is not divisible by "
                       f"process_count={process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if step < 0:
      raise ValueError(f"step={step} must be >= 0")
    local_size = self.global_batch_size // process_count
    first = step * self.global_batch_size + process_index * local_size
    positions = np.arange(first, first + local_size, dtype=np.int64)
    epochs, rows_in_epoch = np.divmod(positions, self.num_examples)
    row_ids = np.empty_like(positions)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      row_ids[in_epoch] = self._permutation(int(epoch))[rows_in_epoch[in_epoch]]
    rows = self.tokens[row_ids]
    if self.source_dropout:  # Drawn for the global batch, so it does not depend on the process count.
      dropped = np.random.default_rng([self.seed, step, 1]).random(self.global_batch_size) < self.source_dropout
      local_dropped = dropped[process_index * local_size:(process_index + 1) * local_size]
      rows = np.stack([drop_source(row) if drop else row for row, drop in zip(rows, local_dropped)])
    return rows

  def _permutation(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_examples)
    if epoch not in self._permutations:
      if len(self._permutations) >= 4:  # a batch touches at most a few epochs
        self._permutations.pop(min(self._permutations))
      self._permutations[epoch] = np.random.default_rng([self.seed,
                                                         epoch]).permutation(self.num_examples)
    return self._permutations[epoch]


def iterate_eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    pad_id: int = PAD_ID,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (batch [batch_size // process_count, L], row_is_real [same rows]) in row order,
  covering every row exactly once; the last global batch is filled with pad rows marked
  row_is_real=False, so eval sums over real rows are exact. Each process gets its slice of
  every global batch, so all processes yield the same number of batches.

  Example:
      >>> [(b.shape, m.sum()) for b, m in iterate_eval_batches(np.ones((5, 3), np.int32), 4)]
      [((4, 3), 4), ((4, 3), 1)]
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
  local_size = batch_size // process_count
  num_rows, seq_len = tokens.shape
  for start in range(0, num_rows, batch_size):
    local_start = start + process_index * local_size
    real = tokens[local_start:min(local_start + local_size, num_rows)]
    batch = np.full((local_size, seq_len), pad_id, dtype=tokens.dtype)
    batch[:len(real)] = real
    row_is_real = np.arange(local_size) < len(real)
    yield batch, row_is_real
