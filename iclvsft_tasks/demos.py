"""Which demonstrations a few-shot prompt shows: per item (lm-eval's default) or fixed sets.

``per-item``: lm-eval's own sampler draws k demonstrations from ``train`` for every query, as the
paper's authors did. ``fixed``: draw r (1, 2, ...) is one ordering of ``train``; its first k
items are the k demonstrations of *every* query. The sets are nested across k (the 4-shot set is
the first four of the 8-shot set), so a curve over k compares like with like, and R draws show
the between-draw variance that a single draw hides. A fixed set also makes every prompt of a
split share one long prefix, which the ``iclvsft-hf`` backend computes once.

In lm-eval the mode is metadata (``--metadata '{"iclvsft_demos": "fixed", "iclvsft_draw": 2}'``):
the dataset builder then returns ``train`` in the draw's order with a ``demo_draw`` field on every
document, and ``DemoSampler`` (every task's few-shot sampler) takes the first k of such a split.
Without the field it is exactly lm-eval's default sampler.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.samplers import ContextSampler

from iclvsft_tasks.data.seeding import demo_rng
from iclvsft_tasks.data.splits import SplitSpec, build_split
from iclvsft_tasks.errors import IclvsftError

DEMO_MODES: tuple[str, ...] = ("per-item", "fixed")
DEFAULT_DEMOS = "per-item"
#: Draws of fixed demonstration sets that ``iclvsft compare`` evaluates by default.
DEFAULT_DRAWS = 3
#: Field on each train document of a fixed draw: the draw's number.
DRAW_FIELD = "demo_draw"


def check_mode(mode: str) -> str:
    if mode not in DEMO_MODES:
        raise IclvsftError(f"demonstration mode must be one of {', '.join(DEMO_MODES)}, got {mode!r}")
    return mode


def check_draw(draw: Any, what: str = "draw") -> int:
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 1:
        raise IclvsftError(f"{what} must be an integer >= 1, got {draw!r}")
    return draw


def demo_order(spec: SplitSpec, draw: int) -> list[int]:
    """Indices into ``train`` in draw ``draw``'s order; the first k are its k-shot demonstrations."""
    check_draw(draw)
    size = spec.train_size
    return demo_rng(spec.task, spec.seed, draw).sample(range(size), size)


def fixed_demos(spec: SplitSpec, draw: int, shots: int) -> list[dict[str, Any]]:
    """The k demonstrations of a draw (the items, in prompt order)."""
    train = build_split(spec, "train")
    if shots > len(train):
        raise IclvsftError(f"{shots} demonstrations requested but {spec.task}'s train split holds {len(train)}")
    return [train[i] for i in demo_order(spec, draw)[:shots]]


def fixed_demo_ids(spec: SplitSpec, draw: int, shots: int) -> list[str]:
    return [item["id"] for item in fixed_demos(spec, draw, shots)]


class DemoSampler(ContextSampler):
    """lm-eval's default sampler, or the first k of a fixed draw's ordered ``train`` split."""

    def sample(self, n: int, eval_doc: dict[str, Any] | None = None, df: Any = None, **kwargs: Any):
        pool = self.fewshot_docs()
        if not pool or DRAW_FIELD not in pool[0]:
            return super().sample(n, eval_doc=eval_doc, df=df, **kwargs)
        if n > len(pool):
            raise IclvsftError(
                f"{n} demonstrations requested but the train split holds {len(pool)}; "
                "lower the shots or raise iclvsft_train_size"
            )
        return pool[:n]
