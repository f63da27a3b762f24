"""The one exception type for mistakes a user can make (bad task, bad size, unwritable path...).

The CLI turns it into a single ``iclvsft: error: ...`` line and a non-zero exit; library callers
can catch it like any ValueError.
"""


class IclvsftError(ValueError):
    """A problem with the user's input or environment, explained in one line."""
