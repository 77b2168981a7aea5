"""Text metrics for control and data-to-text: BLEU and chrF (sacrebleu), MBR selection, phrase
matching, bigram coverage, and E2E's slot error rate.

Phrases and bigrams are compared as the tokenizer's word sequences (`normalize_words`),
lower-cased, so "£20-25." and "£ 20 - 25 ." are the same words; BLEU lower-cases and tokenizes
with sacrebleu's 13a.

Example:
  >>> corpus_bleu(["the eagle is a pub ."], [["The Eagle is a pub."]])
  1.0
  >>> candidates[mbr_select(candidates)]          # the sample closest to all the others
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import sacrebleu

from diffusion_lm.data.tokenizer import normalize_words


def words(text: str) -> list[str]:
  """Lower-cased word sequence of `text`. Example: words("£20-25.") == ["£", "20", "-", "25", "."]."""
  return normalize_words(text).lower().split()


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
  """sacrebleu's layout: stream k holds every hypothesis's k-th reference (None where it has fewer)."""
  most = max((len(refs) for refs in references), default=0)
  return [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
  """Corpus BLEU-`max_n` in [0, 1], multi-reference (any number per hypothesis): sacrebleu, lower-cased,
  13a tokenization (mteval-v13a's, which the E2E challenge's BLEU runs on), no smoothing.

  Example:
    >>> corpus_bleu(["a pub near the river"], [["A pub near the river.", "A riverside pub."]])
  """
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
  metric = sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a", max_ngram_order=max_n)
  return metric.corpus_score(list(hypotheses), _reference_streams(references)).score / 100.0


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Corpus chrF (sacrebleu's defaults: character 6-grams, β = 2), in [0, 100], multi-reference.

  Example:
    >>> corpus_chrf(["a pub near the river"], [["A pub near the river."]])
  """
  return sacrebleu.metrics.CHRF().corpus_score(list(hypotheses), _reference_streams(references)).score


def sentence_bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
  """Smoothed sentence BLEU-`max_n` in [0, 1] (sacrebleu, add-one for n > 1), for ranking single sentences.

  Example:
    >>> sentence_bleu("a pub near the river", ["A pub by the river."])
  """
  metric = sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a", max_ngram_order=max_n, smooth_method="add-k",
                                  smooth_value=1, effective_order=True)
  return metric.sentence_score(hypothesis, list(references)).score / 100.0


def mbr_select(candidates: Sequence[str]) -> int:
  """Index of the minimum-Bayes-risk candidate: highest mean sentence BLEU against the others.

  Example:
    >>> mbr_select(["a pub near the river .", "a pub near the river in the centre .", "cheese"])
    1
  """
  if len(candidates) <= 1:
    return 0
  scores = [sum(sentence_bleu(candidate, [other]) for j, other in enumerate(candidates) if j != i)
            for i, candidate in enumerate(candidates)]
  return max(range(len(candidates)), key=lambda i: (scores[i], -i))


def contains_phrase(text: str, phrase: str) -> bool:
  """Whether `phrase`'s words appear contiguously in `text` (case-insensitive).

  Example:
    >>> contains_phrase("Prices are £20-25 here.", "£20-25")
    True
  """
  text_words, phrase_words = words(text), words(phrase)
  n = len(phrase_words)
  return n > 0 and any(text_words[i:i + n] == phrase_words for i in range(len(text_words) - n + 1))


def bigram_set(texts: Iterable[str]) -> set[tuple[str, str]]:
  """All word bigrams of `texts` (sentence boundaries included as "<s>" / "</s>").

  Example:
    >>> ("a", "pub") in bigram_set(["A pub ."])
    True
  """
  seen = set()
  for text in texts:
    tokens = ["<s>", *words(text), "</s>"]
    seen.update(zip(tokens, tokens[1:]))
  return seen


def bigram_coverage(texts: Iterable[str], known_bigrams: set[tuple[str, str]]) -> float:
  """Fraction of the texts' bigrams that occur in `known_bigrams` (a cheap fluency proxy).

  Example:
    >>> bigram_coverage(["a pub ."], bigram_set(["A pub near it ."]))   # all but (pub, .)
    0.75
  """
  total = hits = 0
  for text in texts:
    tokens = ["<s>", *words(text), "</s>"]
    for bigram in zip(tokens, tokens[1:]):
      total += 1
      hits += bigram in known_bigrams
  return hits / total if total else 0.0


# How an E2E MR value shows in text: a regex per (field, value), matched on lower-cased text with the
# MR's names taken out (so "Café Rouge" is not a coffee shop). A value without an entry must appear
# as written (name, near, food). Hand-made after the E2E cleaning scripts (Dušek et al. 2019): a
# heuristic, so the same function scores the human references next to every system (their rate is
# this checker's floor, not a human error rate).
_SLOT_PATTERNS = {
    ("eatType", "pub"): r"\bpubs?\b",
    ("eatType", "coffee shop"): r"coffee[- ]?shops?|\bcaf[eé]s?\b",
    ("eatType", "restaurant"): r"\brestaurants?\b",
    ("food", "fast food"): r"fast[- ]food",
    ("food", "english"): r"\benglish\b|\bbritish\b",
    ("priceRange", "cheap"): r"\bcheap|inexpensive|low[- ]pric|affordab|budget",
    ("priceRange", "moderate"): r"moderat|mid[- ]?(range|price)|average[- ]pric|reasonabl",
    ("priceRange", "high"): r"expensive|high[- ]?(end|pric)|pricey|costly|upscale|pric[^.]{0,20}\bhigh",
    ("priceRange", "less than £20"): r"(less than|under|below|lower than|cheaper than) (£ ?20\b|20 pounds|twenty)|"
                                     r"£ ?20 or less",
    ("priceRange", "£20-25"): r"£ ?20 ?(-|to|and) ?£? ?25",
    ("priceRange", "more than £30"): r"(more than|over|above|higher than|upwards of) £ ?30|£ ?30 (plus|\+|or more)",
    ("customer rating", "low"): r"\blow(ly)?\b[^.]{0,25}(rat|review|score|star)|(rat|review|score)[^.]{0,25}\blow\b|poor",
    ("customer rating", "average"): r"\baverage\b[^.]{0,25}(rat|review|score|star|custom)|(rat|review|score)[^.]{0,25}\baverage\b",
    ("customer rating", "high"): r"\b(high|highly|excellent|great|top)\b[^.]{0,25}(rat|review|score|star)|(rat|review|score)[^.]{0,25}\bhigh",
    ("customer rating", "1 out of 5"): r"\b(1|one)\b ?(out of|/|of) ?(5|five)|\b(1|one)[- ]stars?",
    ("customer rating", "3 out of 5"): r"\b(3|three)\b ?(out of|/|of) ?(5|five)|\b(3|three)[- ]stars?",
    ("customer rating", "5 out of 5"): r"\b(5|five)\b ?(out of|/|of) ?(5|five)|\b(5|five)[- ]stars?",
    ("area", "city centre"): r"cent(re|er)|downtown|\bcity\b",
    ("area", "riverside"): r"river",
    ("familyFriendly", "yes"): r"(?<!not )(?<!n't )(?<!non-)(?<!non )\b(family|kid|child|children)[- ]?friendly|"
                              r"(welcomes?|for|allows?|accepts?) (the )?(famil|kid|child)",
    ("familyFriendly", "no"): r"(not|n't|non-?|no)\s?(\w+ ){0,3}(famil|kid|child)|adults? only|"
                             r"(famil|kid|child)\w*[^.]{0,20}(not|n't)\b",
}
# Every value of E2E's closed fields (a value without a pattern above must appear as written).
CLOSED_VALUES = {
    "eatType": ("pub", "coffee shop", "restaurant"),
    "food": ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"),
    "customer rating": ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
}
_OPEN_FIELDS = ("name", "near")  # Proper names: matched as written.


def _realised(field: str, value: str, text: str) -> bool:
  pattern = _SLOT_PATTERNS.get((field, value.lower()))
  if pattern is None:
    return contains_phrase(text, value)
  return re.search(pattern, text) is not None


def slot_errors(mr: Mapping[str, str], text: str, known_names: Iterable[str] = ()) -> dict[str, int]:
  """E2E slot errors of one text for its MR: `slots` (in the MR), `missing` (MR values not realised) and
  `added` (values the MR does not hold: another known name, or a value of a closed field the MR
  leaves out or sets otherwise). A wrong value counts as both.

  Example:
    >>> slot_errors({"name": "The Eagle", "food": "French"}, "The Eagle serves Italian food .", ["Zizzi"])
    {'slots': 2, 'missing': 1, 'added': 1}
  """
  names = {value for field, value in mr.items() if field in _OPEN_FIELDS}
  lowered = text.lower()
  for name in sorted(names, key=len, reverse=True):  # Names out before the closed fields are matched.
    lowered = lowered.replace(name.lower(), " ")
  missing = sum(not (_realised(field, value, text) if field in _OPEN_FIELDS else _realised(field, value, lowered))
                for field, value in mr.items())
  added = sum(contains_phrase(lowered, other) for other in set(known_names) - names)
  for field, values in CLOSED_VALUES.items():
    if field in ("eatType", "customer rating"):  # Said loosely of any place ("a restaurant", "highly rated").
      continue
    given = mr.get(field)
    if given is not None and _realised(field, given, lowered):
      continue  # Realised as given: a second phrasing of the same value is not an addition.
    added += sum(value.lower() != (given or "").lower() and _realised(field, value, lowered) for value in values)
  return {"slots": len(mr), "missing": int(missing), "added": int(added)}


def slot_error_rate(mrs: Sequence[Mapping[str, str]], texts: Sequence[str]) -> dict[str, float]:
  """(missing + added) / MR slots over a corpus, with its parts, for E2E outputs (`slot_errors`).

  Example:
    >>> slot_error_rate([{"name": "The Eagle", "food": "French"}], ["The Eagle serves French food ."])
    {'slot_error_rate': 0.0, 'missing_rate': 0.0, 'added_rate': 0.0, 'slots': 2}
  """
  known_names = {value for mr in mrs for field, value in mr.items() if field in _OPEN_FIELDS}
  totals = {"slots": 0, "missing": 0, "added": 0}
  for mr, text in zip(mrs, texts, strict=True):
    for key, count in slot_errors(mr, text, known_names).items():
      totals[key] += count
  slots = max(totals["slots"], 1)
  return {"slot_error_rate": (totals["missing"] + totals["added"]) / slots, "missing_rate": totals["missing"] / slots,
          "added_rate": totals["added"] / slots, "slots": totals["slots"]}
