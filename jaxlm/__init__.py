"""jaxlm: build, pretrain, fine-tune, compress and evaluate language and vision models in JAX."""

__version__ = "0.1.0"

_INTEROP = ("from_pretrained", "save_pretrained")


def __getattr__(name: str):
    """``jaxlm.from_pretrained`` / ``jaxlm.save_pretrained`` / ``jaxlm.generate``, imported on first
    use so that ``import jaxlm`` stays light."""
    if name in _INTEROP:
        from jaxlm import interop

        return getattr(interop, name)
    if name == "generate":  # the function; its module is jaxlm.generation
        from jaxlm.generation import generate

        return generate
    raise AttributeError(f"module 'jaxlm' has no attribute {name!r}")
