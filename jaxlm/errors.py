"""User-facing errors: the CLI prints these as one line and exits non-zero, no traceback."""


class JaxlmError(ValueError):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(JaxlmError):
    pass


class DataError(JaxlmError):
    pass
