"""jaxlm: build, pretrain, fine-tune, compress and evaluate language and vision models in JAX."""

__version__ = "0.1.0"
