"""Flax (Linen) models: the shared Transformer backbone, the denoiser, the AR baseline and the
latent classifier. Which one a config builds is the model kind's choice (diffusion_lm/kinds)."""
