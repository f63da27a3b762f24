"""The one exception type for mistakes a user can make (bad task, bad size, unwritable path...).

The CLI turns it into a single ``iclvsft: error: ...`` line and a non-zero exit; library callers
can catch it like any ValueError.
"""


class IclvsftError(ValueError):
    """A problem with the user's input or environment, explained in one line."""


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``exc``'s message (its type name when it has none), for a one-line error.

    ``with_type`` prefixes the type name (``OSError: ...``), for errors whose message alone is unclear.
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
