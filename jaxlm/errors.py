"""User-facing errors: the CLI prints these as one line and exits non-zero, no traceback."""


class JaxlmError(ValueError):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(JaxlmError):
    pass


class DataError(JaxlmError):
    pass


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name if it has none), at most
    ``limit`` characters: libraries' messages can run to pages (TensorStore's do)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    line = line.split(" See full TensorStore details")[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."
