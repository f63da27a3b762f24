"""Clean/corrupt item pairs for patching, and the two answer tokens the metric compares.

A pair is a pattern item (*clean*, from ``test``) and a pattern-broken item (*corrupt*, from
``test_broken``) of the same task such that

* both full prompts (the same fixed demonstrations, draw ``draw``, at every shot count analysed)
  have the same number of tokens, so that positions align and an activation of one can be
  patched into the other;
* the corrupt item's shortcut answer equals the clean item's gold: the clean answer is what the
  shortcut says on the corrupt item;
* the first token of the shortcut answer (the *target*) differs from the first token of the
  corrupt item's gold (the *foil*).

The metric is ``M(x) = logit[target] - logit[foil]`` at the last input position: high when the
model answers with the shortcut, low when it computes the corrupt item's real answer.

**Answer tokens.** The model writes an answer after ``prompts.TARGET_DELIMITER`` (a space), so the
answer's tokens are ``tokens(prompt + " " + answer)`` minus ``tokens(prompt)``; items where
``tokens(prompt)`` is not a prefix of the former are skipped. Some tokenizers write the delimiter
as a token of its own (Gemma 3 turns ``" 5"`` into ``▁`` ``5``, so every non-negative integer
would begin with the same ``▁``). Leading whitespace-only tokens (the *lead*) therefore belong to
the input: the input is ``prompt + lead`` and the target and foil are the first tokens after it.
Both answers must have the same lead (``" 5"`` and ``" -3"`` on Gemma do not: ``▁`` ``5`` vs
``▁-`` ``3``), else the pair is skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from iclvsft_tasks.data.spec import DataSpec
from iclvsft_tasks.data.splits import build_split
from iclvsft_tasks.demos import fixed_demos
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.prompts import TARGET_DELIMITER, render_prompt
from iclvsft_tasks.tasks.registry import get_task

Item = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Pair:
    """One clean/corrupt pair at one shot count, as token ids the model runs on."""

    clean_ids: tuple[int, ...]
    corrupt_ids: tuple[int, ...]
    target: int  # first token of the shortcut answer (= the clean item's gold)
    foil: int  # first token of the corrupt item's gold
    shots: int = 0
    clean_id: str = ""  # item ids, for the record
    corrupt_id: str = ""
    target_text: str = ""
    foil_text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clean_ids", tuple(int(t) for t in self.clean_ids))
        object.__setattr__(self, "corrupt_ids", tuple(int(t) for t in self.corrupt_ids))
        what = f"pair {self.clean_id or 'clean'}/{self.corrupt_id or 'corrupt'}"
        if not self.clean_ids or not self.corrupt_ids:
            raise IclvsftError(f"{what} does not match: an input is empty")
        if len(self.clean_ids) != len(self.corrupt_ids):
            raise IclvsftError(
                f"{what} does not match: the clean input has {len(self.clean_ids)} tokens and the "
                f"corrupt one {len(self.corrupt_ids)}, so positions would not align"
            )
        if int(self.target) == int(self.foil):
            raise IclvsftError(
                f"{what} does not match: the target and foil first tokens are the same token "
                f"({self.target}), so the metric would be 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean_id": self.clean_id,
            "corrupt_id": self.corrupt_id,
            "shots": self.shots,
            "tokens": len(self.clean_ids),
            "target": self.target,
            "foil": self.foil,
            "target_text": self.target_text,
            "foil_text": self.foil_text,
        }


def _encode(tokenizer: Any, text: str) -> list[int]:
    # The tokenizer's own default for special tokens, as lm-eval's HF model encodes a prompt.
    return list(tokenizer(text)["input_ids"])


def answer_tokens(tokenizer: Any, prompt: str, prompt_ids: Sequence[int], answer: str) -> tuple[tuple[int, ...], int]:
    """``(lead, first)``: the whitespace-only tokens before the answer, and the answer's first token.

    Raises IclvsftError when ``tokens(prompt)`` is not a prefix of ``tokens(prompt + " " + answer)``.
    """
    full = _encode(tokenizer, prompt + TARGET_DELIMITER + answer)
    n = len(prompt_ids)
    if full[:n] != list(prompt_ids):
        raise IclvsftError(f"the tokens of the prompt are not a prefix of the tokens of prompt + {answer!r}")
    lead: list[int] = []
    for token in full[n:]:
        if tokenizer.decode([token]).strip():
            return tuple(lead), token
        lead.append(token)
    raise IclvsftError(f"the answer {answer!r} has no non-space token")


def _pair(
    clean: Item,
    corrupt: Item,
    tokenizer: Any,
    demos: Sequence[Item],
    shots: int,
    prompt_ids: Mapping[str, list[int]] | None = None,
) -> Pair:
    """The pair of two items (IclvsftError with the reason when they do not make one)."""
    if clean.get("task") != corrupt.get("task"):
        raise IclvsftError(f"the items are from different tasks ({clean.get('task')}, {corrupt.get('task')})")
    if not clean.get("pattern") or corrupt.get("pattern"):
        raise IclvsftError("the clean item must be a pattern item and the corrupt one a pattern-broken item")
    shortcut = corrupt["shortcut_answer"]
    if shortcut != clean["answer"]:
        raise IclvsftError(
            f"the corrupt item's shortcut answer {shortcut!r} is not the clean item's gold {clean['answer']!r}"
        )
    if corrupt["answer"] == shortcut:
        raise IclvsftError("the corrupt item's gold equals its shortcut answer")
    texts = {"clean": render_prompt(clean, demos), "corrupt": render_prompt(corrupt, demos)}
    ids = {k: (prompt_ids or {}).get(k) or _encode(tokenizer, t) for k, t in texts.items()}
    if len(ids["clean"]) != len(ids["corrupt"]):
        raise IclvsftError(f"the prompts have {len(ids['clean'])} and {len(ids['corrupt'])} tokens")
    clean_lead, clean_first = answer_tokens(tokenizer, texts["clean"], ids["clean"], clean["answer"])
    lead, target = answer_tokens(tokenizer, texts["corrupt"], ids["corrupt"], shortcut)
    foil_lead, foil = answer_tokens(tokenizer, texts["corrupt"], ids["corrupt"], corrupt["answer"])
    if not clean_lead == lead == foil_lead:
        raise IclvsftError(
            "the answers start with different whitespace tokens, so their first tokens are not "
            "read at the same position"
        )
    if clean_first != target:
        raise IclvsftError("the clean gold and the corrupt shortcut begin with different tokens")
    if target == foil:
        raise IclvsftError(f"the shortcut {shortcut!r} and the gold {corrupt['answer']!r} begin with the same token")
    return Pair(
        tuple(ids["clean"]) + lead,
        tuple(ids["corrupt"]) + lead,
        target,
        foil,
        shots,
        str(clean.get("id", "")),
        str(corrupt.get("id", "")),
        tokenizer.decode([target]),
        tokenizer.decode([foil]),
    )


def build_pair(clean: Item, corrupt: Item, tokenizer: Any, demos: Sequence[Item] = ()) -> Pair:
    """The pair of a pattern item and a pattern-broken item shown with ``demos``.

    Raises IclvsftError, in one line, when they do not match (see the module docstring).
    """
    try:
        return _pair(clean, corrupt, tokenizer, list(demos), len(demos))
    except IclvsftError as exc:
        raise IclvsftError(
            f"items {clean.get('id', '?')} and {corrupt.get('id', '?')} do not make a pair: {exc}"
        ) from None


def make_pairs(
    task: str,
    tokenizer: Any,
    shots: int | Sequence[int],
    n: int,
    data: DataSpec | None = None,
    draw: int = 1,
) -> dict[int, list[Pair]]:
    """``n`` matched pairs, the same items at every shot count in ``shots``: ``{k: [Pair, ...]}``.

    Clean items are taken in ``test`` order; each gets the first unused ``test_broken`` item that
    matches it at every shot count (greedy, deterministic). Demonstrations are the fixed set of
    ``draw`` (``demos.fixed_demos``), so ``data`` (None: the default seed and sizes) should be the
    evaluation's to show the same demonstrations. Too few matches is an IclvsftError that says how many were found.
    """
    get_task(task)
    counts = sorted({int(k) for k in ([shots] if isinstance(shots, int) else shots)})
    if not counts or counts[0] < 0:
        raise IclvsftError(f"shots must be integers >= 0, got {shots!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise IclvsftError(f"the number of pairs must be an integer >= 1, got {n!r}")
    spec = (data or DataSpec()).split_spec(task)
    clean_pool, corrupt_pool = build_split(spec, "test"), build_split(spec, "test_broken")
    demos = {k: fixed_demos(spec, draw, k) if k else [] for k in counts}

    def lengths(item: Item) -> dict[int, list[int]]:
        return {k: _encode(tokenizer, render_prompt(item, demos[k])) for k in counts}

    corrupt_ids = [lengths(item) for item in corrupt_pool]
    index: dict[tuple, list[int]] = {}
    for j, item in enumerate(corrupt_pool):
        key = (item["shortcut_answer"], tuple(len(corrupt_ids[j][k]) for k in counts))
        index.setdefault(key, []).append(j)
    used: set[int] = set()
    found: list[dict[int, Pair]] = []
    rejected: dict[str, int] = {}
    for clean in clean_pool:
        if len(found) == n:
            break
        clean_ids = lengths(clean)
        key = (clean["answer"], tuple(len(clean_ids[k]) for k in counts))
        candidates = [j for j in index.get(key, []) if j not in used]
        if not candidates:
            rejected["no test_broken item with that shortcut answer and prompt length"] = (
                rejected.get("no test_broken item with that shortcut answer and prompt length", 0) + 1
            )
        for j in candidates:
            try:
                pairs = {
                    k: _pair(
                        clean,
                        corrupt_pool[j],
                        tokenizer,
                        demos[k],
                        k,
                        {"clean": clean_ids[k], "corrupt": corrupt_ids[j][k]},
                    )
                    for k in counts
                }
            except IclvsftError as exc:
                rejected[str(exc)] = rejected.get(str(exc), 0) + 1
                continue
            used.add(j)
            found.append(pairs)
            break
    if len(found) < n:
        common = max(rejected, key=rejected.get) if rejected else "no candidates"
        raise IclvsftError(
            f"only {len(found)} matchable clean/corrupt pairs found for {task} among {len(clean_pool)} test and "
            f"{len(corrupt_pool)} test_broken items (shots {','.join(map(str, counts))}), {n} requested; "
            f"ask for fewer items or raise --test-size/--test-broken-size (most common reason: {common})"
        )
    return {k: [pairs[k] for pairs in found] for k in counts}
