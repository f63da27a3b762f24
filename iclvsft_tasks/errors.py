"""The one exception type for mistakes a user can make (bad task, bad size, unwritable path...).

The CLI turns it into a single ``iclvsft: error: ...`` line and a non-zero exit; library callers
can catch it like any ValueError.
"""


class IclvsftError(ValueError):
    """A problem with the user's input or environment, explained in one line."""


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``exc``'s message (its type name when it has none), for a one-line error;
    a first line that only announces what follows (ends in ``:``) keeps the next line too.

    ``with_type`` prefixes the type name (``OSError: ...``), for errors whose message alone is unclear.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        # A heading such as torch's "Error(s) in loading state_dict for X:" says nothing by itself.
        first = f"{first} {lines[1]}"
    return f"{type(exc).__name__}: {first}" if with_type else first


#: Phrases of huggingface_hub's errors for a hub id that is neither cached nor reachable.
_OFFLINE_PHRASES = ("couldn't connect", "offline", "cannot find the requested files", "outgoing traffic")


def model_path_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a model, as far as the file system tells without loading anything
    (a missing local directory, a folder without config.json, an adapter given as a model), else None."""
    import os
    from pathlib import Path

    text = str(name)
    path = Path(text).expanduser()
    what = "give a model directory (holding config.json), a built-in alias (`iclvsft models`) or a hub id"
    if path.is_dir() and not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            return f"{text} is a LoRA adapter, not a model: load it on its base (e.g. pretrained=BASE,peft={text})"
        return f"{text} holds no config.json, so it is no model directory; {what}"
    if text.startswith((".", os.sep, "~")) or text.count("/") > 1:
        if not path.exists():
            return f"model directory {text} does not exist; {what}"
        if not path.is_dir():
            return f"model {text} is a file; {what}"
    return None


def model_load_message(name: object, exc: BaseException) -> str:
    """Why the model ``name`` (a local directory or a hub id) failed to load, and what to do, in one line.

    The libraries' own messages mislead here: a missing local directory is reported as
    "Repo id must be in the form 'repo_name'", an uncached hub id offline as a connection failure.
    """
    from pathlib import Path

    problem = model_path_problem(name)
    if problem:
        return problem
    text, message = str(name), str(exc).lower()
    if not Path(text).expanduser().exists():
        if any(phrase in message for phrase in _OFFLINE_PHRASES):
            return (
                f"model {text} is no local directory, and as a hub id it is not in the Hugging Face cache and the "
                "hub cannot be reached: download it where the hub is reachable, or give a local directory"
            )
        if "repo id" in message:
            return (
                f"model {text} is neither a local directory nor a valid hub id; give a model directory, "
                "a built-in alias (`iclvsft models`) or a hub id"
            )
    return f"cannot load model {text}: {one_line(exc, with_type=True)}"
