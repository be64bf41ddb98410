"""The project's single exception type for problems a user can fix.

The CLI turns it into one line and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class WatermarkOODError(Exception):
    """Bad input, a missing or malformed file, or an unusable configuration."""


def describe(error: BaseException) -> str:
    """First line of an exception's message, or its type when it has none (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
