"""Defaults shared by every config: each field is documented where it is set.

Configs are Python files whose `get_config()` returns a locked `ml_collections.ConfigDict`;
override any field from the command line with `--config.section.field=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root seed; keys for params / noise / time / dropout / sample are split from it.

  config.data = data = ml_collections.ConfigDict()
  data.name = "e2e"  # "e2e" (bundled E2E NLG), "text_files" (one example per line) or "tfds".
  data.tfds_data_dir = ""  # Where tfds writes prepared datasets; "" = tfds's default.
  data.tfds_name = ""  # name="tfds": any tfds dataset, NAME[/CONFIG][:VERSION], e.g. "lm1b".
  data.tfds_text_field = "text"  # name="tfds": the feature holding the text.
  data.tfds_source_field = ""  # name="tfds" with conditional=True: the feature holding the source.
  data.tfds_splits = ""  # name="tfds": split renames, e.g. "validation=test" (lm1b has no validation).
  data.e2e_source = "bundled"  # "bundled" copy in the package, or "official" (downloads).
  data.text_field = "ref"  # E2E field used as text: "ref" (sentences) or "mr" (meaning rep).
  data.train_files = ""  # Comma-separated paths for name="text_files", one example per line.
  data.validation_files = ""  # As above, for the validation split.
  data.test_files = ""  # As above, for the test split.
  data.tokenizer = "word"  # SentencePiece model type: "word", "unigram" or "bpe".
  data.vocab_size = 1000  # Upper bound for "word" (rare words become <unk>), exact otherwise.
  data.seq_len = 64  # Tokens per training sequence (Diffusion-LM uses 64 on E2E).
  data.mode = "pad"  # "pad": one example per row, EOS then PAD; "pack": concatenated stream.
  data.conditional = False  # (source, target) pairs: the source is given clean, only the target is
  #                           generated and scored (E2E: MR → reference; text files: source<TAB>target).
  data.source_dropout = 0.0  # Conditional: share of training rows with the source emptied, so the
  #                            model also writes without one (pipe.generate([""])).
  data.distill_from = ""  # Conditional: a conditional AR workdir whose greedy output becomes each training source's
  #                         one target (sequence-level knowledge distillation; diffusion_lm/distillation.py).

  config.model = model = ml_collections.ConfigDict()
  model.kind = "diffusion"  # "diffusion" (bidirectional denoiser) or "autoregressive" (causal).
  model.embed_dim = 16  # d: width of the diffused token embeddings (Diffusion-LM: 16 on E2E).
  model.d_model = 128  # Transformer width.
  model.num_layers = 4  # Transformer blocks.
  model.num_heads = 4  # Attention heads; must divide d_model.
  model.mlp_dim = 512  # Hidden width of each block's MLP.
  model.dropout = 0.0  # Dropout rate inside the blocks (Diffusion-LM: 0.1 at 80M params).
  model.parameterization = "direct"  # "direct": predict x0, round with tied E; "categorical":
  #                                    predict logits, x0 = softmax(logits) E (Plaid / CDCD).
  model.self_conditioning = False  # Feed the previous x0 estimate back as an extra input.
  model.normalize_embeddings = False  # Rescale embedding rows to norm √d (CDCD); else free.
  model.dtype = "float32"  # Compute dtype ("bfloat16" on GPU/TPU); params stay float32.
  model.remat = False  # Recompute block activations in the backward pass (large models).
  model.attention = "auto"  # jax.nn.dot_product_attention implementation: "auto" (jax's choice,
  #                           XLA in jax 0.10), "xla", or "cudnn" (fused flash attention; NVIDIA
  #                           GPU with model.dtype=bfloat16 only).
  model.positions = "learned"  # "learned" (a table added to the input; BERT, Diffusion-LM) or "rotary" (RoPE on
  #                               queries and keys, so attention sees relative offsets; Plaid, MDLM, SEDD).
  model.tie_embeddings = True  # Autoregressive only: output head = input embedding table (Eᵀ).
  model.output_prior = False  # Categorical diffusion: logits += log N(z; αE[w], σ²) (Plaid's single-token
  #                             posterior), the output layer starting at zero; the network learns the rest.
  model.time_conditioning = "input"  # Diffusion: "input" (t's embedding added to the input) or "adaln_zero"
  #                                   (every block's LayerNorms and residuals modulated by t, DiT / MDLM).

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "sqrt"  # Noise schedule: "sqrt" (Diffusion-LM), "cosine", "linear_logsnr",
  #                             or "learned" (monotone, trained with objective="vlb"; VDM / Plaid).
  diffusion.max_log_snr = ml_collections.config_dict.placeholder(float)  # γ(0), the low-noise end of a "sqrt" or
  #                                                   "linear_logsnr" schedule; None: the schedule's own (sqrt 4.6).
  diffusion.objective = "e2e"  # Training loss: "e2e" (Diffusion-LM L_e2e-simple), "cdcd"
  #                              (cross-entropy on the denoiser's logits, CDCD) or "vlb" (the
  #                              continuous-time likelihood bound, VDM / Plaid).
  diffusion.num_timesteps = 2000  # T of the discrete grid; t < 1/T is the "t=0" bucket of e2e.
  diffusion.self_cond_rate = 0.5  # Fraction of each batch trained with self-conditioning.
  diffusion.time_warping = False  # Draw training t and place sampling steps where the loss
  #                                 changes fastest (CDCD); the profile is learned during training.
  diffusion.time_warp_bins = 64  # Bins of t for the loss profile behind time warping.

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 1500  # Optimizer steps in total; a finished run is not retrained.
  train.batch_size = 64  # Global batch size (sequences).
  train.learning_rate = 1e-3  # Peak AdamW learning rate.
  train.embedding_lr_multiplier = 1.0  # Diffusion: the embedding table's (and a learned schedule's) learning rate
  #                                     as a multiple of the network's (Plaid: 1e-2 vs 1.4e-3, ~7×).
  train.warmup_steps = 100  # Linear warm-up steps, then cosine decay to zero.
  train.weight_decay = 0.0  # AdamW decoupled weight decay.
  train.grad_clip = 1.0  # Global-norm gradient clipping (0 disables).
  train.ema_decay = 0.999  # EMA of parameters used for sampling and evaluation.
  train.log_every = 50  # Steps between metric writes (loss, throughput).
  train.eval_every = 500  # Steps between validation-loss evaluations and sample dumps.
  train.eval_batches = 4  # Validation batches per evaluation.
  train.checkpoint_every = 500  # Steps between checkpoints (and one at the end).
  train.keep_checkpoints = 3  # How many recent checkpoints to keep.
  train.num_samples = 8  # Samples written to samples/step_N.txt at each evaluation.
  train.skip_nonfinite_steps = False  # NaN/Inf loss or gradients: False stops the run (exit 3)
  #                                    naming the step; True drops that update and goes on.

  config.sample = sample = ml_collections.ConfigDict()
  sample.steps = 200  # Sampling steps (fewer than num_timesteps is the normal case).
  sample.sampler = "ancestral"  # "ancestral" (q(z_s|z_t, x0)), "ddim" (deterministic) or "renoise"
  #                              (q(z_s|x0): fresh noise around x0 at every step, forgetting z_t).
  sample.clamp = True  # Replace x0 by its nearest embedding row (Diffusion-LM's clamping).
  sample.warped_grid = True  # With diffusion.time_warping: place the steps by the training loss profile
  #                            (CDCD); False: uniform in t.
  sample.temperature = 1.0  # Score temperature for categorical models: x0 = softmax(logits/τ) E.
  sample.model_time_floor = 0.0  # c > 0: the denoiser is told noise level max(t, c) while z_t follows the grid
  #                               (DINOISER's condition-enhanced sampling: a conditional model leans on its source);
  #                               sampling from noise only (edits and refinements keep their draft's level).
  sample.predicted_length = False  # Conditional models: `generate` pins each target's EOS at the length the model
  #                                  expects from pure noise (Σ P(not PAD/EOS) at t = 1) instead of letting it choose.
  sample.source_coverage = 0.0  # Conditional models: b > 0 adds b to the logits of the source's words at the target
  #                               (b/8 for a word some position already holds) and takes 5 off a source word chosen
  #                               at a more confident position (each MR value said once: the parallel decoder repeats
  #                               some and drops others).
  sample.draw_tokens = False  # x0 = E[w], w ~ softmax(logits/τ) drawn at every step, instead of
  #                             the mean (a hard choice per position; clamping is then a no-op).
  sample.renoise_correlation = 0.0  # Renoise sampler: ρ ∈ (-1, 1) correlates each step's new noise with the noise the
  #                                   network just removed; ρ < 0 overrelaxes (moves further per step); 0: fresh noise.

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # Data-parallel axis size; -1 takes the remaining devices.
  mesh.fsdp = 1  # Fully-sharded data-parallel axis size.
  mesh.tensor = 1  # Tensor-parallel axis size.
  mesh.cpu_devices = 1  # The train binary on a CPU host: split it into this many XLA devices for the data axis
  #                       (XLA runs a small model's ops on one core at a time); 1 = jax's default, no effect on GPU/TPU.
  mesh.rules = ""  # Overrides of parallel.DEFAULT_RULES (logical name -> mesh axes), e.g.
  #                  "embed=,vocab=tensor,batch=data+fsdp" (empty axis = replicated).
  return config
