"""diffusion_lm: continuous-embedding diffusion language models in JAX.

Example:
  >>> import diffusion_lm
  >>> pipe = diffusion_lm.load("/tmp/e2e")
  >>> print(pipe.sample(num_samples=2, steps=50))
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """Loads a trained workdir as a `Pipeline` (see diffusion_lm.pipeline.load).

  The one function-level import of a project module: `import diffusion_lm` (and every
  `python -m diffusion_lm.<binary>`, which imports this package first) stays free of jax.
  """
  from diffusion_lm.pipeline import load as load_pipeline  # noqa: PLC0415 (see the docstring)
  return load_pipeline(workdir, step)


__all__ = ["load"]
