"""The diffusion model's inference API: sampling, infilling, editing, guidance, scoring.

`pipeline.load(WORKDIR)` (or `diffusion_lm.load`) returns a `Pipeline` for a diffusion workdir.

Example:
  >>> import diffusion_lm
  >>> pipe = diffusion_lm.load("/tmp/e2e")
  >>> for line in pipe.sample(num_samples=4, steps=50, seed=0):
  ...   print(line)
  >>> cond = diffusion_lm.load("/tmp/e2e_cond")          # data.conditional: MR → text
  >>> cond.generate(["name[The Eagle], eatType[pub], food[French]"], steps=50)
"""

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_lm import control, parallel, scoring, text_metrics
from diffusion_lm.data.layout import EOS_ID, PAD_ID, SPECIAL_IDS, layout_row, layout_rows, source_mask
from diffusion_lm.data.tokenizer import Tokenizer
from diffusion_lm.diffusion import guidance as guidance_lib
from diffusion_lm.diffusion import likelihood, process, samplers
from diffusion_lm.diffusion.model_fns import (bind_denoiser, with_clean_positions, with_source_coverage,
                                              with_source_guidance)
from diffusion_lm.semantic_classifier import SemanticClassifier


class Trajectory(NamedTuple):
  """What the reverse process believed at each of its K steps (from `Pipeline.trajectory`).

  At step k (time `times_K[k]`, from 1 towards 0) the denoiser sees z_t and predicts every
  position's token: `tokens_KBL` is that argmax and `confidence_KBL` its softmax probability.
  `final_tokens_BL` (argmax at t = 0) equal `sample_tokens` with the same arguments.
  """
  times_K: np.ndarray
  tokens_KBL: np.ndarray
  confidence_KBL: np.ndarray
  final_tokens_BL: np.ndarray
  step_texts: list[list[str]]  # [K][B]: tokens_KBL decoded (up to the first EOS).
  texts: list[str]  # [B]: the final samples.


GENERATE_BATCH_SIZE = 64  # Sources per sampler call in `generate` / `refine`: one compilation for any count.
# `complete` extends a draft that lacks a source word the model expects this many times or more in
# the target (its count at t = 1). At 0.5, 368 of the AR twin's 630 E2E test drafts lack one and
# the 209 with room are extended; slot errors 20.5 → 17.7 % (BENCHMARKS.md, "Data-to-text").
MISSING_WORD_COUNT = 0.5


def expected_counts(logits_BLV: jax.Array, target_BL: jax.Array) -> jax.Array:
  """[B, V]: how many times each row's target is expected to hold each token, Σ_n P(w_n = v) over `target_BL`.

  Example:
    >>> expected_counts(jnp.log(jnp.array([[[0.5, 0.0, 0.0, 0.5]]])), jnp.array([[True]]))
    Array([[0.5, 0. , 0. , 0.5]], dtype=float32)
  """
  probs_BLV = jax.nn.softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.where(target_BL[..., None], probs_BLV, 0.0), axis=1)


def expected_lengths(counts_BV: jax.Array) -> jax.Array:
  """[B]: the expected number of words in each row's target from its `expected_counts` (all but PAD and EOS).

  Example:
    >>> expected_lengths(jnp.array([[0.5, 0.0, 0.0, 0.5]]))  # PAD 0, EOS 1
    Array([0.5], dtype=float32)
  """
  return jnp.sum(counts_BV, axis=-1) - counts_BV[:, PAD_ID] - counts_BV[:, EOS_ID]


def missing_source_words(source_ids: np.ndarray, draft_ids: np.ndarray, counts_V: np.ndarray, words_V: np.ndarray,
                         min_count: float) -> np.ndarray:
  """The word tokens of a source that the model expects in its target (`expected_counts` ≥ `min_count`)
  and a draft of that target lacks.

  Example:
    >>> missing_source_words(np.array([5, 7, 4]), np.array([5, 9]), counts_V, words_V, min_count=0.5)
    array([7])  # If counts_V[7] >= 0.5 and words_V[7]; 4 a comma (not a word), 5 in the draft.
  """
  source_ids = np.unique(source_ids)
  expected = source_ids[words_V[source_ids] & (counts_V[source_ids] >= min_count)]
  return expected[~np.isin(expected, draft_ids)]


class Pipeline:
  """Samples text from a diffusion model's (EMA) parameters: free, infilled, edited, guided; and a
  conditional model's targets for given sources (`generate`, `refine`)."""

  def __init__(self, config: ml_collections.ConfigDict, model, params, tokenizer: Tokenizer,
               mesh: jax.sharding.Mesh | None = None, step: int | None = None,
               time_warp_table: jax.Array | None = None):
    self.config, self.model, self.params, self.tokenizer = config, model, params, tokenizer
    self.time_warp_table = time_warp_table  # CDCD time warping learned in training, if enabled.
    self.mesh = mesh or parallel.local_mesh()
    self.step = step
    # γ(t) of this model (a learned schedule has parameters, so bind them).
    self.log_snr_fn = lambda t: bind_denoiser(self.model, self.params).log_snr(t)
    self._compiled = {}
    self.workdir: str | None = None  # Set by load(); guidance looks for WORKDIR/classifier there.
    self._classifier = None

  def use_weights(self, params, time_warp_table: jax.Array | None = None) -> None:
    """Samples from new weights of the same model with the compilations already made (the train
    loop's evaluations)."""
    self.params, self.time_warp_table = params, time_warp_table

  def _word_mask(self) -> jax.Array:
    """[V] True for the model's ids that are words (the tokens `sample.source_coverage` counts)."""
    return jnp.asarray(self.tokenizer.word_mask(self.model.vocab_size))

  def _warped_grid(self) -> bool:
    """Whether sampling steps follow training's time-warping profile (else they are uniform in t)."""
    return bool(self.config.sample.get("warped_grid", True))

  def _sampler(self, num_samples: int, steps: int, sampler: str, clamp: bool, trajectory: bool = False,
               source_guidance: float = 0.0):
    # The config's sampling settings are baked into the compiled function: they belong in the key,
    # so `pipe.config.sample.temperature = 0.5` after a first call takes effect.
    key = (num_samples, steps, sampler, clamp, trajectory, float(self.config.sample.temperature),
           bool(self.config.sample.draw_tokens), self._warped_grid(), source_guidance,
           float(self.config.sample.model_time_floor), float(self.config.sample.source_coverage),
           float(self.config.sample.renoise_correlation))
    if self.config.sample.source_coverage and self.config.model.parameterization != "categorical":
      raise control.ControlError("sample.source_coverage moves the denoiser's logits, and x̂0 follows them only "
                                 "in a categorical model; this one predicts x̂0 directly (leave it 0)")
    if key not in self._compiled:
      # The control inputs are traced arguments: new anchors, drafts or targets reuse the compilation.
      # Weights and the time-warp table are arguments too: the train loop swaps in new ones.
      def run(params, time_warp_table, rng, anchor_tokens=None, anchor_mask=None, anchor_words_only=None,
              start_noisy=None, start_time=1.0, guidance=None):
        fns = bind_denoiser(self.model, params)
        if self.config.data.conditional and anchor_tokens is not None:  # The source is shown clean.
          clean_BL = source_mask(anchor_tokens)
          fns = (with_source_guidance(fns, anchor_tokens, clean_BL, jnp.maximum(jnp.sum(clean_BL, axis=1) - 1, 0), PAD_ID,
                                      source_guidance)
                 if source_guidance else with_clean_positions(fns, anchor_tokens, clean_BL))
          fns = with_source_coverage(fns, anchor_tokens, clean_BL, self._word_mask(),
                                     float(self.config.sample.source_coverage))
        anchors = None if anchor_tokens is None else samplers.Anchors(
            anchor_tokens, anchor_mask, anchor_words_only, SPECIAL_IDS)
        outputs = samplers.sample(fns, rng, (num_samples, self.config.data.seq_len), steps, fns.log_snr,
                                  sampler=sampler, clamp=clamp, temperature=self.config.sample.temperature,
                                  draw_tokens=self.config.sample.draw_tokens,
                                  # A property of the renoise step: a call with another sampler ignores it.
                                  renoise_correlation=(self.config.sample.renoise_correlation
                                                       if sampler == "renoise" else 0.0),
                                  # Edits and refinements start from a draft, whose noise level is the point.
                                  model_time_floor=self.config.sample.model_time_floor if start_noisy is None else 0.0,
                                  time_warp_table=time_warp_table if self._warped_grid() else None, anchors=anchors,
                                  start_noisy_BLD=start_noisy, start_time=start_time, guidance=guidance,
                                  return_trajectory=trajectory)
        if not trajectory:
          return outputs
        tokens_BL, logits_KBLV = outputs  # Reduced here: K·B·L values leave the device, not K·B·L·V.
        logits_KBLV = logits_KBLV.astype(jnp.float32)
        confidence_KBL = jnp.exp(jnp.max(logits_KBLV, -1) - jax.nn.logsumexp(logits_KBLV, -1))
        return tokens_BL, jnp.argmax(logits_KBLV, -1), confidence_KBL
      # Replicated output: every process of a multi-host run can read the tokens.
      self._compiled[key] = jax.jit(run, out_shardings=parallel.replicated(self.mesh))
    return self._compiled[key]

  def sample_tokens(self, num_samples: int = 8, steps: int | None = None, seed: int = 0,
                    sampler: str | None = None, clamp: bool | None = None, **control_inputs) -> np.ndarray:
    """Token ids [num_samples, seq_len] from the reverse process (defaults from config.sample).

    `control_inputs` (anchor_tokens, anchor_mask, anchor_words_only, start_noisy, start_time, guidance) go to the
    sampler as they are; `infill`, `edit` and `sample(length=, guidance=)` build them.
    """
    tokens = self._run_sampler(num_samples, steps, seed, sampler, clamp, False, control_inputs)
    return np.asarray(jax.device_get(tokens))

  def _run_sampler(self, num_samples, steps, seed, sampler, clamp, trajectory: bool, control_inputs: dict):
    """The compiled reverse process on this pipeline's mesh; None settings come from config.sample."""
    control.check_sampling_args(num_samples, steps)
    control_inputs = dict(control_inputs)
    source_guidance = float(control_inputs.pop("source_guidance", 0.0))
    steps = steps or self.config.sample.steps
    sampler = sampler or self.config.sample.sampler
    clamp = self.config.sample.clamp if clamp is None else clamp
    with parallel.activate(self.mesh, parallel.logical_rules(self.config.mesh)):
      return self._sampler(num_samples, steps, sampler, clamp, trajectory, source_guidance)(
          self.params, self.time_warp_table, jax.random.key(seed), **control_inputs)

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Text of each row, up to its first EOS."""
    return [self.tokenizer.decode(row.tolist()) for row in tokens]

  def sample(self, num_samples: int = 8, steps: int | None = None, seed: int = 0,
             sampler: str | None = None, clamp: bool | None = None, *, length: int | None = None,
             guidance=None, mbr: int | None = None, best_of: int | None = None) -> list[str]:
    """`num_samples` texts; same seed and settings give the same texts.

    Args:
      length: exact number of tokens (EOS pinned at that position, PAD after).
      guidance: `["food=Italian", ...]` (the workdir's semantic classifier) or a `Guidance`.
      mbr: draw this many candidates per sample and keep the minimum-Bayes-risk one.
      best_of: draw this many guided candidates per sample and keep the one the guidance's
        scorer rates highest on its finished text (log p(c | E[w], t=0)); needs `guidance`.

    Example:
      >>> pipe.sample(4, length=12, guidance=["food=Italian", "area=riverside"], best_of=4)
    """
    free = length is None and guidance is None and mbr is None and best_of is None
    if free and not self.config.data.conditional:
      return self.decode(self.sample_tokens(num_samples, steps, seed, sampler, clamp))
    return self.infill(None, num_samples, steps, seed, sampler, clamp, length=length, guidance=guidance, mbr=mbr,
                       best_of=best_of)

  def infill(self, template: str | None = None, num_samples: int = 1, steps: int | None = None, seed: int = 0,
             sampler: str | None = None, clamp: bool | None = None, *, prefix: str | None = None,
             suffix: str | None = None, anchors: dict[int, str] | None = None, length: int | None = None,
             blank: str = control.DEFAULT_BLANK, max_blank_len: int = control.DEFAULT_MAX_BLANK_LEN,
             guidance=None, mbr: int | None = None, best_of: int | None = None) -> list[str]:
    """Writes around pinned words: a template with blanks, a prefix/suffix, words at positions.

    Pinned tokens are re-imposed at every step (x̂0 = E[w] there), so they appear exactly where
    given. See `control.build_plan` for the template syntax (`__` one word, `__*N` up to N words,
    a trailing `__*` lets the model choose the length).

    Example:
      >>> pipe.infill("The Eagle is a __ __ near __ .", num_samples=2)
      >>> pipe.infill(prefix="The Eagle", suffix="in the city centre .", length=12)
      >>> pipe.infill(anchors={5: "Italian"}, length=14, mbr=4)
    """
    plan = self._plan(None, template=template, prefix=prefix, suffix=suffix, anchors=anchors, length=length,
                      blank=blank, max_blank_len=max_blank_len)
    return self._generate(plan, num_samples, steps, seed, sampler, clamp, guidance=guidance, mbr=mbr,
                          best_of=best_of)

  def edit(self, text: str, strength: float, num_samples: int = 1, steps: int | None = None, seed: int = 0,
           sampler: str | None = None, clamp: bool | None = None, *, keep=(), guidance=None,
           mbr: int | None = None, best_of: int | None = None) -> list[str]:
    """Rewrites a draft: noise its embeddings to time t* = `strength`, then denoise from there.

    Strength 0 adds no noise and returns the draft; 1 starts from pure noise (a new sample). The
    number of steps scales with the strength (`steps` is for a full run). `keep` pins words
    (strings, every occurrence) or positions (ints) of the draft.

    Example:
      >>> pipe.edit("The Eagle are a cheap pub .", strength=0.4, keep=["Eagle"])
    """
    strength = control.check_strength(strength)
    if not isinstance(text, str):
      raise control.ControlError(f"the draft to edit must be a string, not {type(text).__name__}")
    if self.config.data.conditional:
      if keep or guidance is not None or best_of is not None:
        raise control.ControlError("a conditional model edits through refine(drafts, sources, strength), which "
                                   "keeps the source; keep, guidance and best_of do not apply")
      return self.refine([text] * num_samples, [None] * num_samples, strength, steps, seed, sampler, clamp, mbr=mbr)
    seq_len = self.config.data.seq_len
    ids = control.encode_words(self.tokenizer, text, "the draft")
    if len(ids) > seq_len - 1:
      raise control.TemplateError(f"the draft has {len(ids)} tokens but the model holds {seq_len - 1} plus EOS")
    draft_L = layout_row(ids, seq_len)
    if strength == 0.0:
      return [self.tokenizer.decode(draft_L)] * num_samples  # Nothing is noised, nothing changes.
    mask_L = np.zeros(seq_len, bool)
    mask_L[:len(ids)] = control.keep_mask(ids, keep, self.tokenizer)
    plan = control.Plan(draft_L, mask_L, np.zeros(seq_len, bool), None)
    full_steps = steps or self.config.sample.steps
    return self._generate(plan, num_samples, max(1, round(full_steps * strength)), seed, sampler, clamp,
                          guidance=guidance, mbr=mbr, best_of=best_of, drafts=draft_L, start_time=strength)

  def generate(self, sources: list[str], num_samples: int = 1, steps: int | None = None, seed: int = 0,
               sampler: str | None = None, clamp: bool | None = None, *, mbr: int | None = None,
               source_guidance: float = 0.0, **target_controls) -> list[str]:
    """A conditional model's targets: `num_samples` per source, source-major, as one flat list.

    The source is pinned clean and the target sampled after it; `target_controls` (template,
    prefix, suffix, anchors, length, blank) constrain the target with positions counted from its
    first token, and `mbr` picks each output from that many candidates. A model trained with
    `data.source_dropout` > 0 also takes "" (no source). Sources go through the sampler
    `GENERATE_BATCH_SIZE` at a time, each batch with its own seed (seed + batch index).
    `source_guidance` w > 0 is classifier-free guidance (logits = c + w·(c − u), u without the
    source; twice the network passes); it needs a model trained with `data.source_dropout` > 0.
    With `sample.predicted_length` and no target controls, each target is written at
    `predicted_lengths` (its EOS pinned there).

    Example:
      >>> pipe.generate(["name[The Eagle], eatType[coffee shop], food[French], area[riverside]"], steps=50)
      >>> pipe.generate(["name[Loch Fyne], food[Italian]"], num_samples=4, length=12, mbr=4)
      >>> pipe.generate(["name[Loch Fyne], food[Italian]"], source_guidance=1.0)
    """
    sources = self._check_sources(sources)
    self._check_source_guidance(source_guidance)
    if self.config.sample.get("predicted_length") and not target_controls:
      lengths = self.predicted_lengths(sources, seed)
      plans = [self._plan(source, length=length) for source, length in zip(sources, lengths)
               for _ in range(num_samples)]
    else:
      plans = [self._plan(source, **target_controls) for source in sources for _ in range(num_samples)]
    return self._in_batches(plans, None, lambda chunk, drafts, chunk_seed: self._generate(
        chunk, len(chunk), steps, chunk_seed, sampler, clamp, mbr=mbr, source_guidance=source_guidance), seed)

  def predicted_lengths(self, sources: list[str], seed: int = 0) -> list[int]:
    """Each source's target length as the model expects it: Σ_n P(w_n ∉ {PAD, EOS}) over the target at t = 1.

    One denoiser pass from pure noise with the source shown clean (`expected_counts`). Left to
    choose, a conditional model writes short targets, most of them shorter than its references, and
    leaves MR values out (BENCHMARKS.md, "Data-to-text"); `sample.predicted_length` pins these.

    Example:
      >>> pipe.predicted_lengths(["name[The Eagle], eatType[coffee shop], area[riverside]"])
      [17]
    """
    if not self.config.data.conditional:
      raise control.ControlError("predicted lengths are a conditional model's (data.conditional=True): an "
                                 "unconditional model has no source to read a length from")
    plans = [self._plan(source) for source in self._check_sources(sources)]
    return self._lengths(plans, self._expected_counts(plans, seed))

  @staticmethod
  def _lengths(plans: list, counts_NV: np.ndarray) -> list[int]:
    """Rounded expected lengths: at least one word, and room for the EOS after it."""
    return [int(np.clip(np.rint(length), 1, plan.seq_len - plan.start - 1))
            for plan, length in zip(plans, np.asarray(expected_lengths(counts_NV)))]

  def _expected_counts(self, plans: list, seed: int) -> np.ndarray:
    """[N, V] `expected_counts` of each plan's target, from one denoiser pass at t = 1 with its source clean."""
    key = ("expected_counts", min(len(plans), GENERATE_BATCH_SIZE))
    if key not in self._compiled:
      def expected(params, rows_BL, rng):
        fns = with_clean_positions(bind_denoiser(self.model, params), rows_BL, source_mask(rows_BL))
        noise_BLD = jax.random.normal(rng, rows_BL.shape + (self.config.model.embed_dim,))
        logits_BLV, _ = fns.denoise(noise_BLD, jnp.ones(rows_BL.shape[:1]))
        return expected_counts(logits_BLV, ~source_mask(rows_BL))
      self._compiled[key] = jax.jit(expected, out_shardings=parallel.replicated(self.mesh))
    counts = []
    for index, start in enumerate(range(0, len(plans), GENERATE_BATCH_SIZE)):
      chunk = plans[start:start + GENERATE_BATCH_SIZE]
      rows_BL = np.stack([plan.tokens_L for plan in chunk + [chunk[-1]] * (key[1] - len(chunk))])
      counts.append(np.asarray(self._compiled[key](self.params, rows_BL, jax.random.key(seed + index)))[:len(chunk)])
    return np.concatenate(counts)

  def _check_source_guidance(self, weight) -> None:
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
      raise control.ControlError(f"source_guidance must be a finite number >= 0 (0 = none), not {weight!r}")
    if weight and not self.config.data.source_dropout:
      raise control.ControlError("source_guidance needs a model that also learned to write without a source: "
                                 "train it with --config.data.source_dropout=0.1 (this one used 0)")
    if weight and self.config.model.parameterization != "categorical":
      raise control.ControlError("source_guidance mixes the denoiser's logits: it needs "
                                 "--config.model.parameterization=categorical")

  def refine(self, drafts: list[str], sources: list[str | None], strength: float, steps: int | None = None,
             seed: int = 0, sampler: str | None = None, clamp: bool | None = None, *, mbr: int | None = None
             ) -> list[str]:
    """Revises each draft as the target of its source: noise it to t* = `strength`, denoise with the source clean.

    The hybrid pipeline: an AR model drafts fast, the diffusion model rewrites the whole text
    in parallel. Strength 0 returns the drafts; 1 ignores them (a fresh `generate`). `steps` is
    for a full run and scales with the strength, as in `edit`. A draft longer than the room after
    its source is cut (its EOS kept), as training rows are.

    Example:
      >>> drafts = ar_pipe.generate(mrs)
      >>> pipe.refine(drafts, mrs, strength=0.3, steps=200)
    """
    strength = control.check_strength(strength)
    plans, draft_rows = self._draft_rows(drafts, sources, "refine(list of drafts, list of sources, strength)")
    if strength == 0.0:
      return [plan.decode(self.tokenizer, row[None])[0] for plan, row in zip(plans, draft_rows)]
    refine_steps = max(1, round((steps or self.config.sample.steps) * strength))
    return self._in_batches(plans, np.stack(draft_rows), lambda chunk, chunk_drafts, chunk_seed: self._generate(
        chunk, len(chunk), refine_steps, chunk_seed, sampler, clamp, mbr=mbr, drafts=chunk_drafts,
        start_time=strength), seed)

  def complete(self, drafts: list[str], sources: list[str], steps: int | None = None, seed: int = 0,
               sampler: str | None = None, clamp: bool | None = None, *,
               min_count: float = MISSING_WORD_COUNT) -> list[str]:
    """Keeps each draft word for word and writes after it what it leaves out of its source.

    The hybrid pipeline's other half: an AR draft is fluent but drops MR values, and rewriting it
    (`refine`) breaks about as much as it fixes (BENCHMARKS.md). Here the model reads, from one
    pass at t = 1, which words of the source its target should hold (`expected_counts` ≥
    `min_count`). A draft that lacks one of them and is shorter than the model's predicted length
    is pinned as the target's prefix, and the positions after it, up to that length, are sampled
    from noise (`steps`, with the sampler's settings: `sample.source_coverage` nudges the missing
    words in). Other drafts come back unchanged. A draft longer than the room after its source is
    cut, as in `refine`.

    Example:
      >>> drafts = ar_pipe.generate(mrs)
      >>> pipe.complete(drafts, mrs, steps=20)
    """
    control.check_sampling_args(1, steps)  # Checked here: with nothing to add, no sampler would check it.
    if not isinstance(min_count, (int, float)) or not 0 <= min_count < np.inf:
      raise control.ControlError(f"min_count must be a number >= 0 (an expected count; 0 = any source word the "
                                 f"draft lacks), not {min_count!r}")
    plans, draft_rows = self._draft_rows(drafts, sources, "complete(list of drafts, list of sources)")
    counts_NV = self._expected_counts(plans, seed)
    words_V = self.tokenizer.word_mask(counts_NV.shape[1])
    outputs = [plan.decode(self.tokenizer, row[None])[0] for plan, row in zip(plans, draft_rows)]
    extend = []  # (index, the plan with the draft pinned up to the predicted length)
    for index, (plan, row_L, length) in enumerate(zip(plans, draft_rows, self._lengths(plans, counts_NV))):
      target_L = row_L[plan.start:]
      draft_len = int(np.argmax(target_L == EOS_ID))  # `_draft_rows` always ends a draft with EOS.
      missing = missing_source_words(row_L[:plan.start], target_L[:draft_len], counts_NV[index], words_V, min_count)
      if length <= draft_len or not missing.size:
        continue
      pinned = self._plan(sources[index], length=length)
      pinned.tokens_L[plan.start:plan.start + draft_len] = target_L[:draft_len]
      pinned.mask_L[plan.start:plan.start + draft_len] = True
      extend.append((index, pinned))
    if extend:
      texts = self._in_batches([pinned for _, pinned in extend], None, lambda chunk, _, chunk_seed: self._generate(
          chunk, len(chunk), steps, chunk_seed, sampler, clamp), seed)
      for (index, _), text in zip(extend, texts):
        outputs[index] = text
    return outputs

  def _draft_rows(self, drafts, sources, usage: str) -> tuple[list, list[np.ndarray]]:
    """Each source's plan and its draft laid out as the target (EOS after it; cut to the room left)."""
    if isinstance(drafts, str) or isinstance(sources, str) or len(drafts) != len(sources):
      raise control.ControlError(f"give one draft per source: {usage}")
    plans = [self._plan(source) for source in sources]  # A source for an unconditional model is refused here.
    draft_rows = []
    for index, (plan, draft) in enumerate(zip(plans, drafts)):
      if not isinstance(draft, str):
        raise control.ControlError(f"draft {index + 1} must be a string, not {type(draft).__name__}")
      ids = self.tokenizer.encode(draft)  # A model's draft may hold <unk>: kept as unk, not refused.
      row_L = plan.tokens_L.copy()
      row_L[plan.start:] = layout_row(ids, plan.seq_len - plan.start)  # A draft that never ended is cut, EOS kept.
      draft_rows.append(row_L)
    return plans, draft_rows

  def _check_sources(self, sources) -> list[str]:
    if isinstance(sources, str) or not all(isinstance(source, str) for source in sources) or not sources:
      raise control.ControlError("give the sources as a non-empty list of strings, e.g. generate(['name[The Eagle]'])")
    return list(sources)

  def _plan(self, source: str | None, **target_controls) -> control.Plan:
    """The plan for a row: the target's controls, after the source when the model is conditional."""
    seq_len = self.config.data.seq_len
    if not self.config.data.conditional:
      if source is not None:
        raise control.ControlError("this model was trained without sources (data.conditional=False); drop the "
                                   "source, or train a conditional config such as configs/e2e_cond.py")
      return control.build_plan(self.tokenizer, seq_len, **target_controls)
    if source is None:
      if not self.config.data.source_dropout:
        raise control.ControlError("this model writes a target for a source (data.conditional=True): give "
                                   "--source (pipe.generate(sources)); it was not trained to write without one "
                                   "(--config.data.source_dropout=0)")
      source = ""
    return control.conditional_plan(self.tokenizer, seq_len, source, **target_controls)

  @staticmethod
  def _in_batches(plans: list, drafts_NL, run, seed: int) -> list[str]:
    """run(plans, drafts, seed) over fixed batches of GENERATE_BATCH_SIZE (the last padded with its
    own last plan), so any number of sources compiles one sampler."""
    outputs = []
    for index, start in enumerate(range(0, len(plans), GENERATE_BATCH_SIZE)):
      chunk = plans[start:start + GENERATE_BATCH_SIZE]
      real = len(chunk)
      size = GENERATE_BATCH_SIZE if len(plans) > GENERATE_BATCH_SIZE else real
      chunk = chunk + [chunk[-1]] * (size - real)
      chunk_drafts = None
      if drafts_NL is not None:
        chunk_drafts = drafts_NL[start:start + real]
        chunk_drafts = np.concatenate([chunk_drafts, np.repeat(chunk_drafts[-1:], size - real, axis=0)])
      outputs.extend(run(chunk, chunk_drafts, seed + index)[:real])
    return outputs

  def guidance(self, controls, fluency_weight: float = guidance_lib.FLUENCY_WEIGHT,
               step_size: float = guidance_lib.STEP_SIZE, num_steps: int = guidance_lib.NUM_STEPS):
    """A `Guidance` towards `["food=Italian", ...]` from the workdir's semantic classifier.

    Example:
      >>> guide = pipe.guidance(["food=Italian"], fluency_weight=0.01, step_size=0.1, num_steps=3)  # Diffusion-LM's
      >>> pipe.sample(4, guidance=guide)
    """
    if self.config.data.conditional:
      raise control.ControlError("classifier guidance steers an unconditional model; a conditional model's "
                                 "source is its control (give the attributes in --source)")
    if self._classifier is None:
      if self.workdir is None:
        raise control.ControlError("this pipeline was not loaded from a workdir; load it with "
                                   "diffusion_lm.load(WORKDIR) to use its classifier")
      self._classifier = SemanticClassifier.load(self.workdir)
      trained_on = self._classifier.info.get("diffusion_step")
      if trained_on not in (None, self.step):  # Its latents came from other embeddings.
        warnings.warn(f"the classifier in {self.workdir} was trained on checkpoint {trained_on}, this is "
                      f"{self.step}; retrain it (python -m diffusion_lm.train_classifier --workdir=...)")
    return self._classifier.guidance(controls, 1, fluency_weight, step_size, num_steps)

  def mbr(self, candidates: list[str]) -> str:
    """The candidate with the highest mean BLEU against the others (minimum Bayes risk).

    Example:
      >>> pipe.mbr(pipe.infill("The Eagle is a __ __ .", num_samples=8))
    """
    return candidates[text_metrics.mbr_select(candidates)]

  def trajectory(self, num_samples: int = 1, steps: int | None = None, seed: int = 0, sampler: str | None = None,
                 clamp: bool | None = None, **control_inputs) -> Trajectory:
    """Samples like `sample_tokens` and records the denoiser's prediction at every step.

    Example:
      >>> traj = pipe.trajectory(num_samples=2, steps=50, seed=0)
      >>> traj.step_texts[0][0], traj.texts[0]  # The first step's guess and the final sample.
      >>> plt.imshow(traj.confidence_KBL[:, 0].T)  # Positions × steps, max softmax probability.
    """
    outputs = self._run_sampler(num_samples, steps, seed, sampler, clamp, True, control_inputs)
    final_BL, tokens_KBL, confidence_KBL = (np.asarray(x) for x in jax.device_get(outputs))
    start_time = float(control_inputs.get("start_time", 1.0))
    times_K = samplers.time_grid(steps or self.config.sample.steps, start_time,
                                 self.time_warp_table if self._warped_grid() else None)[:-1]
    return Trajectory(np.asarray(times_K), tokens_KBL, confidence_KBL, final_BL,
                      [self.decode(step_BL) for step_BL in tokens_KBL], self.decode(final_BL))

  def score(self, texts: str | list[str], num_t_samples: int = 8, seed: int = 0) -> list[dict]:
    """The likelihood bound of each text, as `python -m diffusion_lm.evaluate` computes it.

    Per text: `nll_nats_per_token` (an upper bound on −log p(w) per token, EOS counted),
    `bits_per_token`, `perplexity_bound`, `stderr` (Monte Carlo, `num_t_samples` times), the
    three terms (`prior_`, `diffusion_`, `reconstruction_nats_per_token`), `num_tokens`, and
    `num_unk_tokens` / `truncated` (words the tokenizer cannot encode, text longer than the
    model's sequence). Each text is one padded row; it is a bound on the unclamped model (see
    diffusion/likelihood.py).

    Example:
      >>> [r["nll_nats_per_token"] for r in pipe.score(["The Eagle is a pub .", "pub pub the the"])]
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or num_t_samples < 2 or num_t_samples % 2:
      raise control.ControlError("give at least one text and an even num_t_samples >= 2")
    key = ("score", num_t_samples, seed)
    if key not in self._compiled:  # The same row function each call, so jit reuses its compilation.
      self._compiled[key] = self._score_row_fn(num_t_samples, seed)
    seq_len = self.config.data.seq_len
    tokens_NL, _ = scoring.encode_rows(texts, self.tokenizer, seq_len, "pad", self.config.data.conditional)
    devices = parallel.data_parallel_size(self.mesh)
    batch_size = devices * -(-8 // devices)  # Fixed (short lists are padded): one compilation for any list.
    per_row = scoring.score_rows(self._compiled[key], self.params, tokens_NL, batch_size, self.mesh,
                                  parallel.logical_rules(self.config.mesh), progress=False)
    return [{"text": text, **likelihood.summarize({name: values[i:i + 1] for name, values in per_row.items()}),
             "num_unk_tokens": int(np.sum(tokens_NL[i] == self.tokenizer.unk_id)),
             "truncated": len(self.tokenizer.encode(text)) + 1 > seq_len}
            for i, text in enumerate(texts)]

  def _generate(self, plans, num_samples: int, steps: int | None, seed: int, sampler, clamp, *,
                guidance=None, mbr: int | None = None, best_of: int | None = None, drafts=None,
                start_time: float = 1.0, source_guidance: float = 0.0) -> list[str]:
    """Samples `num_samples` texts under constraints, each picked from `mbr` or `best_of` candidates.

    Args:
      plans: one `control.Plan` for every sample, or a list with one per sample.
      guidance: `["field=value", ...]` or a `Guidance` (targets [1 or num_samples, C, 2]).
      best_of: keep the candidate the guidance's scorer rates highest on its finished text.
      drafts: token rows to start from at `start_time` (editing): [L] or [num_samples, L].
    """
    control.check_sampling_args(num_samples, steps)
    if any(n is not None and n < 1 for n in (mbr, best_of)):
      raise control.ControlError("num_samples, mbr and best_of must be >= 1")
    if mbr is not None and best_of is not None:
      raise control.ControlError("choose one way to pick among candidates: mbr (consensus) or best_of (control score)")
    if best_of is not None and guidance is None:
      raise control.ControlError("best_of ranks candidates by the control's score: give guidance too "
                                 "(e.g. guidance=['food=Italian']), or use mbr")
    plans = [plans] * num_samples if isinstance(plans, control.Plan) else list(plans)
    if len(plans) != num_samples:
      raise ValueError(f"{len(plans)} plans for {num_samples} samples")
    copies = mbr or best_of or 1
    row_plans = [plan for plan in plans for _ in range(copies)]  # Candidates of a sample are adjacent.
    batch = len(row_plans)
    inputs = {"source_guidance": source_guidance} if source_guidance else {}
    if any(plan.mask_L.any() for plan in row_plans):
      inputs["anchor_tokens"] = np.stack([plan.tokens_L for plan in row_plans])
      inputs["anchor_mask"] = np.stack([plan.mask_L for plan in row_plans])
      inputs["anchor_words_only"] = np.stack([plan.words_only_L for plan in row_plans])
    if guidance is not None:
      guide = self.guidance(guidance) if isinstance(guidance, (list, tuple)) else guidance
      if copies > 1 and np.shape(guide.targets)[0] == num_samples > 1:
        guide = guide.replace(targets=np.repeat(np.asarray(guide.targets), copies, axis=0))
      inputs["guidance"] = guide
    if drafts is not None:
      drafts_BL = np.repeat(np.broadcast_to(drafts, (num_samples, self.config.data.seq_len)), copies, axis=0)
      inputs |= self._start_inputs(drafts_BL, start_time, seed)
    rows = self.sample_tokens(batch, steps, seed, sampler, clamp, **inputs)
    texts = [plan.decode(self.tokenizer, row[None])[0] for plan, row in zip(row_plans, rows)]
    if copies == 1:
      return texts
    if best_of is not None:
      scores = self.control_scores(inputs["guidance"], [plan.content_ids(row) for plan, row in zip(row_plans, rows)])
      return [texts[i * copies + int(np.argmax(scores[i * copies:(i + 1) * copies]))] for i in range(num_samples)]
    return [self.mbr(texts[i * copies:(i + 1) * copies]) for i in range(num_samples)]

  def _start_inputs(self, drafts_BL: np.ndarray, start_time: float, seed: int) -> dict:
    """Where editing starts: z = α_t* E[draft] + σ_t* ε at t* = `start_time`."""
    alpha, sigma = process.alpha_sigma(self.log_snr_fn(np.float32(start_time)))
    draft_BLD = bind_denoiser(self.model, self.params).embed(drafts_BL)
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1), draft_BLD.shape)
    return {"start_noisy": process.diffuse(draft_BLD, alpha, sigma, noise), "start_time": np.float32(start_time)}

  def _score_row_fn(self, num_t_samples: int, seed: int) -> scoring.RowFn:
    """The bound's row function `score` uses (the eval binary's default settings)."""
    return scoring.likelihood_row_fn(self.model, self.config, scoring.ScoringOptions(
        num_t_samples, seed, embedding_noise=False, discrete_steps=0, time_sampling="log_snr"))

  def control_scores(self, guide, texts_or_ids) -> np.ndarray:
    """log p(c | E[w], t=0) per text: how strongly a `Guidance`'s scorer sees its control in finished text.

    Each text is laid out as in training (tokens, EOS, PAD) and scored at t = 0; `guide`'s targets
    are [1, C, 2] (every text) or one row per text.

    Example:
      >>> pipe.control_scores(pipe.guidance(["food=Italian"]), ["An Italian pub .", "A pub ."])
    """
    seq_len = self.config.data.seq_len
    rows_BL = layout_rows([self.tokenizer.encode(item) if isinstance(item, str) else item
                           for item in texts_or_ids], seq_len)
    clean_BLD = bind_denoiser(self.model, self.params).embed(jnp.asarray(rows_BL))
    return np.asarray(guide.log_prob(clean_BLD, jnp.zeros(len(rows_BL))))
