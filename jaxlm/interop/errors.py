"""The one error type of :mod:`jaxlm.interop`: a one-line message naming the problem and the fix."""

from jaxlm.errors import JaxlmError


class InteropError(JaxlmError):
    """A Hugging Face directory, config or weight file jaxlm cannot use as it is (a ``ValueError``)."""
