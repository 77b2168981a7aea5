"""A small sentencepiece wrapper with fixed special ids and a word-level mode.

Special ids are the same in every model: pad=0, eos=1, bos=2, unk=3, so padding is always id 0.
`model_type="word"` is a word vocabulary like Diffusion-LM's (~821 words on E2E; here 905 words
occur >= 10 times in E2E train, 3,222 in all): text is first split into words and punctuation by
`normalize_words` (in training *and* in encode), case kept.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from diffusion_lm.data.layout import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from diffusion_lm.errors import DataError, UnencodableTextError

MODEL_TYPES = ("word", "unigram", "bpe")
MAX_SENTENCE_BYTES = 4192  # sentencepiece skips longer training lines (its default, kept explicit).
_WORD_BOUNDARY = "▁"  # sentencepiece's marker at the start of every word piece

# One token per match: a bracketed tag kept whole ("<unk>"), a detached clitic ("'s", "'re":
# PTB writes "company 's"), a number ("30", "3.5", "1,000"), a word with inner apostrophes or
# hyphens ("don't", "family-friendly"), or any other single non-space character ("£", ".").
# So "£20-25." -> "£ 20 - 25 .".
_WORD_PATTERN = re.compile(r"<\w+>|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)*|\w+(?:['’-]\w+)*|[^\w\s]",
                           re.IGNORECASE)


def normalize_words(text: str) -> str:
  """Splits punctuation from words and joins the tokens with single spaces.

  Example:
      >>> normalize_words("Near the riverside, prices £20-25.")
      'Near the riverside , prices £ 20 - 25 .'
  """
  return " ".join(_WORD_PATTERN.findall(text))


class Tokenizer:
  """A trained sentencepiece model; `Tokenizer.train(...)` or `Tokenizer.load(path)`.

  Example:
      >>> tok = Tokenizer.train(["The Eagle is a pub."], "/tmp/tok", "word", 100)
      >>> tok.decode(tok.encode("The Eagle is a pub.") + [tok.eos_id, 7])
      'The Eagle is a pub .'
  """

  def __init__(self, model_file: str):
    """Loads `model_file`; prefer `Tokenizer.load`, which reads the same."""
    self.model_file = os.fspath(model_file)
    self._processor = spm.SentencePieceProcessor(model_file=self.model_file)
    model_proto = sentencepiece_model_pb2.ModelProto.FromString(
        self._processor.serialized_model_proto())
    self.model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(
        model_proto.trainer_spec.model_type).lower()  # "word", "unigram" or "bpe"
    # Word mode looks words up itself: sentencepiece merges a run of unknown words into
    # one unk, which would change the length of a word-level sequence.
    self._word_to_id = {
        self._processor.id_to_piece(i).removeprefix(_WORD_BOUNDARY): i
        for i in range(self._processor.vocab_size())
        if self.model_type == "word" and
        not (self._processor.is_control(i) or self._processor.is_unknown(i))
    }
    ids = (self.pad_id, self.eos_id, self.bos_id, self.unk_id)
    if ids != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
      raise ValueError(f"{self.model_file}: special ids (pad, eos, bos, unk) are {ids}, expected "
                       f"{(PAD_ID, EOS_ID, BOS_ID, UNK_ID)}; train it with Tokenizer.train")

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      model_path_prefix: str,
      model_type: str,
      vocab_size: int,
  ) -> Tokenizer:
    """Trains a model on `texts` and writes it to `model_path_prefix + ".model"`.

    Deterministic: the same texts give a byte-identical model file (single-threaded, and
    the file does not record its own path). For "word", `vocab_size` is an upper bound
    (`hard_vocab_limit=False`); words rarer than the cut become unk.

    Example:
        >>> tok = Tokenizer.train(texts, f"{workdir}/tokenizer", "word", vocab_size=1000)
        >>> tok.model_file
        '/tmp/e2e/tokenizer.model'
    """
    if model_type not in MODEL_TYPES:
      raise ValueError(f"model_type={model_type!r} is not one of {MODEL_TYPES}")
    pretokenize = normalize_words if model_type == "word" else (lambda text: text)
    sentences = (pretokenize(text) for text in texts)
    model_bytes = io.BytesIO()
    try:
      _train_sentencepiece(sentences, model_bytes, model_type, vocab_size)
    except RuntimeError as error:  # sentencepiece reports every training failure as RuntimeError.
      reason = (str(error).strip().splitlines() or ["no reason given"])[-1].split("] ")[-1]
      if "sentences_.empty()" in reason:
        reason = "no line it could use"
      if "vocab" in reason.lower() and "size" in reason.lower():
        raise DataError(f"--config.data.vocab_size={vocab_size} is more than the training text supports for a "
                        f"{model_type} tokenizer (sentencepiece: {reason}); lower it") from None
      raise DataError(f"sentencepiece could not train a {model_type} tokenizer on the training text ({reason}); "
                      f"give it many lines of text (lines over {MAX_SENTENCE_BYTES:,} bytes are skipped)") from None
    model_file = f"{model_path_prefix}.model"
    os.makedirs(os.path.dirname(os.path.abspath(model_file)), exist_ok=True)
    # Written aside and renamed: a run killed mid-write never leaves a truncated model behind.
    with open(f"{model_file}.partial", "wb") as output:
      output.write(model_bytes.getvalue())
    os.replace(f"{model_file}.partial", model_file)
    return cls(model_file)

  @classmethod
  def load(cls, model_file: str) -> Tokenizer:
    """Loads a model written by `Tokenizer.train`.

    Example:
        >>> tok = Tokenizer.load("/tmp/e2e/tokenizer.model")
    """
    return cls(model_file)

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included."""
    return self._processor.vocab_size()

  @property
  def pad_id(self) -> int:
    """Id of padding (always 0)."""
    return self._processor.pad_id()

  @property
  def eos_id(self) -> int:
    """Id of end of sequence (always 1)."""
    return self._processor.eos_id()

  @property
  def bos_id(self) -> int:
    """Id of beginning of sequence (always 2)."""
    return self._processor.bos_id()

  @property
  def unk_id(self) -> int:
    """Id of unknown words (always 3)."""
    return self._processor.unk_id()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no eos or bos added; unknown words become `unk_id`.

    Example:
        >>> tok.encode("The Eagle.")
        [12, 57, 4]
    """
    if self.model_type == "word":
      return [self._word_to_id.get(word, UNK_ID) for word in _WORD_PATTERN.findall(text)]
    return self._processor.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` for many texts at once (sentencepiece's batch call, much faster).

    Example:
        >>> tok.encode_batch(["The Eagle.", "A pub."])
        [[12, 57, 4], [9, 31, 4]]
    """
    if self.model_type == "word":
      return [self.encode(text) for text in texts]  # dict lookups: already fast
    return self._processor.encode(list(texts), out_type=int)

  def encode_strict(self, text: str) -> list[int]:
    """Like `encode`, but raises UnencodableTextError naming the words that map to unk.

    Example:
        >>> tok.encode_strict("The Zyzzyva.")
        UnencodableTextError: not in the vocabulary of /tmp/e2e/tokenizer.model: 'Zyzzyva'
    """
    ids = self.encode(text)
    if self.model_type == "word":
      unknown = [w for w, i in zip(_WORD_PATTERN.findall(text), ids) if i == UNK_ID]
    else:
      # Pieces align with ids; an unknown piece comes back as its own surface text.
      pieces = self._processor.encode(text, out_type=str)
      unknown = [p.lstrip(_WORD_BOUNDARY) for p, i in zip(pieces, ids) if i == UNK_ID]
    if unknown:
      raise UnencodableTextError(
          f"not in the vocabulary of {self.model_file} (would become unk): " +
          ", ".join(repr(word) for word in dict.fromkeys(unknown)))
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids` up to the first eos, with pad and bos dropped.

    Word-level tokens are joined with single spaces and unk reads as "<unk>"; ids outside
    the vocabulary (a model whose output layer is padded past `vocab_size`) read as unk.

    Example:
        >>> tok.decode([12, 57, 4, tok.eos_id, 9, 0, 0])
        'The Eagle .'
    """
    kept: list[int] = []
    for token_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if token_id == self.eos_id:
        break
      if token_id in (self.pad_id, self.bos_id):
        continue
      kept.append(token_id if 0 <= token_id < self.vocab_size else self.unk_id)
    if self.model_type == "word":  # one piece per word; unk reads as "<unk>"
      return " ".join(self.id_to_piece(i).removeprefix(_WORD_BOUNDARY) for i in kept)
    return self._processor.decode(kept)

  def id_to_piece(self, token_id: int) -> str:
    """The vocabulary entry of `token_id` (word pieces start with "▁")."""
    return self._processor.id_to_piece(int(token_id))

  def word_mask(self, size: int | None = None) -> np.ndarray:
    """[size] bool (default `vocab_size`): True for ids whose piece holds a letter or digit (not the
    specials, unk, punctuation, or ids past the vocabulary).

    Example:
        >>> tok.word_mask()[tok.piece_to_id("▁pub")], tok.word_mask()[tok.piece_to_id("▁,")]
        (True, False)
    """
    mask = np.zeros((size or self.vocab_size,), bool)
    specials = {self.pad_id, self.eos_id, self.bos_id, self.unk_id}
    for token_id in range(min(mask.shape[0], self.vocab_size)):
      mask[token_id] = token_id not in specials and any(c.isalnum() for c in self.id_to_piece(token_id))
    return mask

  def piece_to_id(self, piece: str) -> int:
    """The id of a vocabulary entry, `unk_id` if absent. Example: piece_to_id("▁pub")."""
    return self._processor.piece_to_id(piece)


def _train_sentencepiece(sentences: Iterable[str], model_bytes: io.BytesIO, model_type: str, vocab_size: int):
  """SentencePieceTrainer.train with the project's fixed ids and deterministic settings."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=(s for s in sentences if s.strip()),
      max_sentence_length=MAX_SENTENCE_BYTES,
      model_writer=model_bytes,
      model_type=model_type,
      vocab_size=vocab_size,
      hard_vocab_limit=model_type != "word",
      pad_id=PAD_ID,
      eos_id=EOS_ID,
      bos_id=BOS_ID,
      unk_id=UNK_ID,
      # Words are whole pieces in "word" mode, so allow long ones (default cut is 16).
      max_sentencepiece_length=64 if model_type == "word" else 16,
      # Our regex is the word normaliser; NFKC would rewrite characters behind its back.
      normalization_rule_name="identity" if model_type == "word" else "nmt_nfkc",
      character_coverage=1.0,
      input_sentence_size=0,  # use every sentence: sampling would add randomness
      shuffle_input_sentence=False,
      num_threads=1,  # multi-threaded EM sums in varying order -> non-identical models
      minloglevel=2,
  )
