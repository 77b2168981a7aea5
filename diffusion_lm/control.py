"""Parsing and validation of control inputs: templates, anchors, length, edits, control targets.

Everything here is plain Python / numpy and runs before any model call, so a bad input fails
with one line (a `ControlError`, a `UserError`) naming what is wrong and what would be valid.

A *plan* says, for each of the model's `seq_len` positions, whether its token is pinned
(an anchor, re-imposed at every sampling step) or free, and where the text ends:

  - `"The Eagle is a __ __ near __ ."`: words are pinned where they stand, each `__` is one free
    word, and EOS is pinned right after the last position (then PAD), so the length is exact.
  - `"__*"` is a variable-length blank of up to `max_blank_len` words (`"__*3"`: up to 3); the
    model may leave PAD or EOS in its slots, which `Plan.decode` drops. A template that *ends*
    in `"__*"` leaves the rest of the sequence free: prefix conditioning, the model picks the
    length by where it writes EOS.
  - `anchors={5: "quantum", 12: "entanglement"}` pins words at positions (0-based).
  - `length=n` pins EOS at position n and PAD after it (Diffusion-LM's length control).

Example:
  >>> plan = build_plan(tokenizer, seq_len=64, template="The Eagle is a __ __ near __ .")
  >>> plan.mask_L[:6], plan.end
  (array([ True,  True,  True,  True, False, False]), 9)
  >>> parse_controls(["food=Italian"], label_space)
  [('food', 'Italian')]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from diffusion_lm.data.layout import EOS_ID, PAD_ID, SOURCE_END_ID, SPECIAL_IDS, max_source_len
from diffusion_lm.errors import UnencodableTextError, UserError

DEFAULT_BLANK = "__"
DEFAULT_MAX_BLANK_LEN = 8


class ControlError(UserError):
  """A template, anchor, length, edit or control target that cannot be honoured."""


class TemplateError(ControlError):
  """A template or anchor set that does not fit the model's sequence length."""


class UnencodableWordsError(ControlError):
  """Words the tokenizer cannot encode (they would become <unk>)."""


class UnknownControlError(ControlError):
  """A control field or value the classifier was not trained on."""


class StrengthError(ControlError):
  """An edit strength outside [0, 1]."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-position constraints for one sequence of length L.

  Attributes:
    tokens_L: int32 [L], the pinned token where `mask_L` is True (PAD elsewhere).
    mask_L: bool [L], True where the token is pinned.
    optional_L: bool [L], free slots of variable-length blanks (PAD/EOS there is dropped).
    end: the position of the pinned EOS, or None when the model chooses the length.
    start: where the text starts (after a conditional row's source and its BOS; 0 otherwise).
  """
  tokens_L: np.ndarray
  mask_L: np.ndarray
  optional_L: np.ndarray
  end: int | None
  start: int = 0

  @property
  def seq_len(self) -> int:
    return len(self.tokens_L)

  @property
  def words_only_L(self) -> np.ndarray:
    """bool [L]: free one-word slots before the text's end (a pinned EOS or the last pinned word).

    The sampler never puts PAD or EOS there, so lengths are exact and blanks hold words.
    """
    positions = np.arange(self.seq_len)
    if self.end is not None:
      limit = self.end
    else:
      pinned = np.flatnonzero(self.mask_L)
      limit = int(pinned.max()) if len(pinned) else 0
    return ~self.mask_L & ~self.optional_L & (positions < limit)

  def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, L], mask [B, L]): the plan repeated for a batch, ready for `samplers.Anchors`."""
    return (np.broadcast_to(self.tokens_L, (batch_size, self.seq_len)).copy(),
            np.broadcast_to(self.mask_L, (batch_size, self.seq_len)).copy())

  def content_ids(self, row_L: np.ndarray) -> list[int]:
    """The ids of a sampled row that make up the text, specials dropped.

    With a pinned EOS the text is everything before it (a stray EOS or PAD inside a blank is
    dropped, not a cut); otherwise it ends at the first EOS after the last pinned word.
    """
    row = np.asarray(row_L).tolist()
    end = self.end
    if end is None:
      pinned = np.flatnonzero(self.mask_L)
      start = int(pinned.max()) + 1 if len(pinned) else 0
      end = next((i for i in range(start, len(row)) if row[i] == EOS_ID), len(row))
    return [token for token in row[self.start:end] if token not in SPECIAL_IDS]

  def decode(self, tokenizer, rows_BL: np.ndarray) -> list[str]:
    """Text of each sampled row under this plan."""
    return [tokenizer.decode(self.content_ids(row)) for row in np.asarray(rows_BL)]


def free_plan(seq_len: int) -> Plan:
  """No constraints: every position free, the model picks the length.

  Example:
    >>> free_plan(64).decode(tok, rows)   # text up to each row's first EOS
  """
  return Plan(np.full(seq_len, PAD_ID, np.int32), np.zeros(seq_len, bool), np.zeros(seq_len, bool), None)


def conditional_plan(tokenizer, seq_len: int, source: str, **target_controls) -> Plan:
  """A plan for a conditional model: `source` and its BOS pinned first (data/layout.py's pair row),
  then the target under `build_plan`'s controls (template, prefix, suffix, anchors, length), whose
  positions count from the target's first token.

  Raises:
    TemplateError: the source leaves no room for a target in `seq_len`, or the controls do not fit.

  Example:
    >>> plan = conditional_plan(tok, 96, "name[The Eagle], food[French]", length=12)
    >>> plan.start, plan.end - plan.start
    (12, 12)
  """
  source_ids = encode_words(tokenizer, source, "the source") if source else []
  if len(source_ids) > max_source_len(seq_len):
    raise TemplateError(f"the source has {len(source_ids)} tokens and leaves no room for a target in this model's "
                        f"seq_len={seq_len} (at most {max_source_len(seq_len)}); shorten it")
  start = len(source_ids) + 1
  target = build_plan(tokenizer, seq_len - start, **target_controls)
  pinned = np.ones(start, bool)
  return Plan(np.concatenate([np.asarray(source_ids + [SOURCE_END_ID], np.int32), target.tokens_L]),
              np.concatenate([pinned, target.mask_L]), np.concatenate([~pinned, target.optional_L]),
              None if target.end is None else target.end + start, start)


def encode_words(tokenizer, text: str, what: str) -> list[int]:
  """`tokenizer.encode_strict(text)`, with unknown words reported as one UnencodableWordsError.

  Example:
    >>> encode_words(tok, "The Zyzzyva .", "the draft")
    UnencodableWordsError: the draft has words the model cannot write: ... 'Zyzzyva'
  """
  try:
    return tokenizer.encode_strict(text)
  except UnencodableTextError as error:
    raise UnencodableWordsError(f"{what} has words the model cannot write: {error}") from None


def _parse_blank(piece: str, blank: str, max_blank_len: int) -> tuple[int, bool] | None:
  """(slots, variable) if `piece` is a blank (`__`, `__*`, `__*3`), else None."""
  if piece == blank:
    return 1, False
  match = re.fullmatch(re.escape(blank) + r"\*(\d*)", piece)
  if not match:
    return None
  return (int(match.group(1)) if match.group(1) else max_blank_len), True


def build_plan(tokenizer, seq_len: int, template: str | None = None, *, prefix: str | None = None,
               suffix: str | None = None, anchors: Mapping[int, str] | None = None,
               length: int | None = None, blank: str = DEFAULT_BLANK,
               max_blank_len: int = DEFAULT_MAX_BLANK_LEN) -> Plan:
  """Turns a template and/or prefix, suffix, positional anchors and a length into a `Plan`.

  Args:
    tokenizer: the model's `Tokenizer` (words it cannot encode are an error, by name).
    seq_len: the model's sequence length L; a text holds at most L - 1 tokens plus EOS.
    template: words to keep, with `blank` for one free word and `blank*[N]` for up to N.
    prefix: text the output starts with (`"{prefix} __*"` when no template is given).
    suffix: text the output ends with; needs `length`, or gets a `__*` blank before it.
    anchors: {position: word} pinned at 0-based positions, e.g. {5: "quantum"}.
    length: the exact number of tokens (EOS pinned at position `length`).
    blank: the blank marker in templates.
    max_blank_len: slots of a `__*` blank without a number.

  Returns:
    A `Plan`.

  Raises:
    TemplateError: the constraints need more positions than L holds, or contradict each other.
    UnencodableWordsError: a word the tokenizer cannot encode (named).

  Example:
    >>> build_plan(tok, 64, prefix="The Eagle is", length=12).end
    12
  """
  if max_blank_len < 1:
    raise TemplateError(f"max_blank_len={max_blank_len} must be >= 1")
  if not blank or blank != blank.strip():
    raise TemplateError(f"--blank={blank!r} must be a marker with no spaces, e.g. __ (the default)")
  if length is not None and not 1 <= length <= seq_len - 1:
    raise TemplateError(f"length={length} does not fit: this model writes 1 to {seq_len - 1} tokens "
                        f"(seq_len={seq_len}, one slot is EOS)")
  if template is not None and (prefix is not None or suffix is not None):
    raise TemplateError("give either a template or prefix/suffix, not both "
                        f"(write the prefix and suffix into the template around {blank}*)")
  if template is None and (prefix is not None or suffix is not None):
    template = _prefix_suffix_template(tokenizer, prefix, suffix, length, blank, max_blank_len)

  slots, open_tail = _template_slots(tokenizer, template, blank, max_blank_len)
  _pin_anchors(tokenizer, slots, anchors or {})
  used = len(slots)
  if length is not None:
    if used > length:
      raise TemplateError(f"the template and anchors need {used} positions but length={length}")
    if not open_tail and used < length and template is not None:
      raise TemplateError(f"the template has {used} positions but length={length}; add blanks or end it with "
                          f"{blank}* to let the model fill the rest")
    slots.extend([("free", None)] * (length - used))
    open_tail = False
  if len(slots) > seq_len - 1:
    raise TemplateError(f"the template and anchors need {len(slots)} positions but the model holds "
                        f"{seq_len - 1} tokens plus EOS (seq_len={seq_len}); use fewer blanks or words")
  return _plan_from_slots(slots, open_tail, seq_len)


# A template's positions: ("word", id) | ("free", None) | ("optional", None).
Slots = list[tuple[str, int | None]]


def _template_slots(tokenizer, template: str | None, blank: str, max_blank_len: int) -> tuple[Slots, bool]:
  """(slots, open_tail): the template's positions, and whether the model writes on to its own EOS."""
  if template is None:
    return [], True
  if not template.strip():
    raise TemplateError("the template is empty; write words and blanks, e.g. 'The Eagle is a __ __ .'")
  slots: Slots = []
  open_tail = False
  pieces = template.split()
  literal: list[str] = []
  unknown: list[str] = []

  def flush():
    if literal:
      text = " ".join(literal)
      try:
        slots.extend(("word", token) for token in tokenizer.encode_strict(text))
      except UnencodableTextError as error:
        unknown.append(str(error).split(": ", 1)[-1])
      literal.clear()

  for index, piece in enumerate(pieces):
    parsed = _parse_blank(piece, blank, max_blank_len)
    if parsed is None:
      literal.append(piece)
      continue
    flush()
    slots_in_blank, variable = parsed
    if variable and index == len(pieces) - 1 and not re.search(r"\d$", piece):
      open_tail = True  # A trailing "__*": the model writes to its own EOS.
    else:
      slots.extend([("optional" if variable else "free", None)] * slots_in_blank)
  flush()
  if unknown:
    raise UnencodableWordsError(f"the template has words the model cannot write: {', '.join(unknown)} "
                                "(rephrase them or use a blank)")
  return slots, open_tail


def _pin_anchors(tokenizer, slots: Slots, anchors: Mapping[int, str]) -> None:
  """Writes each anchor's tokens into `slots` from its position on (free slots added as needed)."""
  if any(not isinstance(position, (int, np.integer)) or isinstance(position, bool) for position in anchors):
    raise TemplateError(f"anchor positions are 0-based ints, e.g. {{5: 'pub'}}; got {sorted(map(repr, anchors))}")
  for position, word in sorted(anchors.items()):
    ids = encode_words(tokenizer, word, f"anchor {position}:{word!r}")
    if position < 0:
      raise TemplateError(f"anchor position {position} is negative; positions start at 0")
    for offset, token in enumerate(ids):
      at = position + offset
      while len(slots) <= at:
        slots.append(("free", None))
      kind, existing = slots[at]
      if kind == "word" and existing != token:
        raise TemplateError(f"anchor {position}:{word!r} clashes with the template's word at position {at}")
      slots[at] = ("word", token)


def _plan_from_slots(slots: Slots, open_tail: bool, seq_len: int) -> Plan:
  """The plan's arrays: pinned words, optional slots, and EOS then PAD after a closed text."""
  tokens_L = np.full(seq_len, PAD_ID, np.int32)
  mask_L = np.zeros(seq_len, bool)
  optional_L = np.zeros(seq_len, bool)
  for position, (kind, token) in enumerate(slots):
    if kind == "word":
      tokens_L[position], mask_L[position] = token, True
    optional_L[position] = kind == "optional"
  end = None
  if not open_tail:
    end = len(slots)
    tokens_L[end] = EOS_ID  # PAD after it, as in training rows (data.layout).
    mask_L[end:] = True
  return Plan(tokens_L, mask_L, optional_L, end)


def _prefix_suffix_template(tokenizer, prefix: str | None, suffix: str | None, length: int | None,
                            blank: str, max_blank_len: int) -> str:
  """`prefix BLANKS suffix` as a template.

  No suffix: an open tail (`prefix __*`). A suffix with a length: exactly the missing number of
  one-word blanks. A suffix without one: a variable blank of up to `max_blank_len` words.
  """
  if suffix is None:
    middle = [f"{blank}*"]
  elif length is not None:
    used = sum(len(encode_words(tokenizer, text, what))
               for text, what in ((prefix, "the prefix"), (suffix, "the suffix")) if text)
    if used > length:
      raise TemplateError(f"the prefix and suffix have {used} tokens but length={length}")
    middle = [blank] * (length - used)
  else:
    middle = [f"{blank}*{max_blank_len}"]
  return " ".join([prefix or "", *middle, suffix or ""]).strip()


def parse_anchor_specs(specs: Sequence[str]) -> dict[int, str]:
  """`["5:quantum", "12:entanglement"]` → {5: "quantum", 12: "entanglement"}.

  Example:
    >>> parse_anchor_specs(["0:The", "3:pub"])
    {0: 'The', 3: 'pub'}
  """
  anchors = {}
  for spec in specs:
    position, sep, word = spec.partition(":")
    if not sep or not position.strip().isdigit() or not word.strip():
      raise TemplateError(f"--anchor={spec!r} is not POSITION:WORD (e.g. --anchor=5:quantum, 0-based)")
    anchors[int(position)] = word.strip()
  return anchors


def check_sampling_args(num_samples, steps) -> None:
  """A ControlError unless `num_samples` is an int >= 1 and `steps` None (the config's) or an int >= 1.

  Example:
    >>> check_sampling_args(-2, None)
    ControlError: --num_samples and --steps must be >= 1 (got num_samples=-2, steps=None)
  """
  is_count = lambda n: isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
  if not is_count(num_samples) or (steps is not None and not is_count(steps)):
    raise ControlError(f"--num_samples and --steps must be >= 1 (got num_samples={num_samples!r}, steps={steps!r})")


def check_strength(strength: float) -> float:
  """Returns `strength` if it is a number in [0, 1], else raises StrengthError.

  Example:
    >>> check_strength(1.5)
    StrengthError: --strength=1.5 is outside [0, 1]; 0 keeps the draft, 1 rewrites it from noise
  """
  if not isinstance(strength, (int, float)) or math.isnan(strength) or not 0.0 <= strength <= 1.0:
    raise StrengthError(f"--strength={strength} is outside [0, 1]; 0 keeps the draft, 1 rewrites it from noise")
  return float(strength)


def keep_mask(draft_ids: Sequence[int], keep: Sequence[int | str], tokenizer) -> np.ndarray:
  """Positions of the draft to pin while editing: ints are positions, strings are words.

  Example:
    >>> keep_mask(tok.encode("The Eagle is a pub ."), ["Eagle", 4], tok)
    array([False,  True, False, False,  True, False])
  """
  mask = np.zeros(len(draft_ids), bool)
  words = [tokenizer.id_to_piece(i).removeprefix("▁") for i in draft_ids]
  for item in keep:
    if isinstance(item, (int, np.integer)):
      if not 0 <= item < len(draft_ids):
        raise ControlError(f"keep position {item} is outside the draft's {len(draft_ids)} tokens")
      mask[item] = True
      continue
    for token in encode_words(tokenizer, item, f"keep word {item!r}"):
      hits = [i for i, draft_token in enumerate(draft_ids) if draft_token == token]
      if not hits:
        raise ControlError(f"keep word {item!r} is not in the draft; its words are: {' '.join(words)}")
      mask[hits] = True
  return mask


def normalize_field(name: str) -> str:
  """Field names compare without case, spaces, underscores or hyphens ("customer_rating")."""
  return re.sub(r"[\s_\-]", "", name).lower()


def normalize_value(value: str) -> str:
  return " ".join(value.split()).lower()


def parse_controls(specs: Sequence[str], label_space: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
  """`["food=Italian", "area=riverside"]` → [(field, value)] spelled as in `label_space`.

  Args:
    specs: `field=value` strings; several may be joined by ";" ("food=Italian;area=riverside").
    label_space: field → its valid values, as the classifier was trained.

  Raises:
    UnknownControlError: listing the valid fields, or the valid values of the field.

  Example:
    >>> parse_controls(["customer_rating=5 out of 5"], {"customer rating": ["5 out of 5", "low"]})
    [('customer rating', '5 out of 5')]
  """
  fields = {normalize_field(field): field for field in label_space}
  targets = []
  for spec in (part.strip() for joined in specs for part in joined.split(";")):
    if not spec:
      continue
    field, sep, value = spec.partition("=")
    if not sep or not field.strip() or not value.strip():
      raise UnknownControlError(f"--control={spec!r} is not FIELD=VALUE (e.g. --control=food=Italian)")
    canonical_field = fields.get(normalize_field(field))
    if canonical_field is None:
      raise UnknownControlError(f"unknown control field {field.strip()!r}; valid fields: "
                                f"{', '.join(sorted(label_space))}")
    values = {normalize_value(v): v for v in label_space[canonical_field]}
    canonical_value = values.get(normalize_value(value))
    if canonical_value is None:
      raise UnknownControlError(f"unknown value {value.strip()!r} for {canonical_field}; valid values: "
                                f"{', '.join(label_space[canonical_field])}")
    targets.append((canonical_field, canonical_value))
  return targets
