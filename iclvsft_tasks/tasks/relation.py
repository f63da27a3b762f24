"""relation_pattern: lines ``X is connected with Y``; are cities A and Z connected?

Pattern items: Z appears exactly when it is connected to A, so "does Z appear?" answers the
question. Broken items: the graph has at least two components and Z sits in one without A, so the
shortcut says True while the gold is False. (The authors' graphs were one chain through every
letter, which made the task "is there a Z?" outright.)
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import Any

from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import Draft, PatternTask, TaskConfig

_OTHERS = string.ascii_uppercase[1:-1]  # B..Y: the cities besides the two in the question


@dataclasses.dataclass(frozen=True)
class RelationConfig(TaskConfig):
    cities: tuple[int, int] = (5, 10)  # cities that appear, A (and Z) included
    extra_edge_prob: float = 0.3  # chance of one extra edge per component (a cycle)

    def validate(self) -> None:
        self.check_range("cities", self.cities, 4, len(_OTHERS) + 2)
        if not 0.0 <= self.extra_edge_prob <= 1.0:
            raise IclvsftError(f"extra_edge_prob must lie in [0, 1], got {self.extra_edge_prob}")


def _tree_edges(rng: random.Random, nodes: list[str]) -> list[tuple[str, str]]:
    """A random spanning tree: each node (in random order) attaches to an earlier one."""
    order = nodes[:]
    rng.shuffle(order)
    return [(order[i], order[rng.randrange(i)]) for i in range(1, len(order))]


def connected(edges: list[list[str]] | list[tuple[str, str]], a: str, b: str) -> bool:
    """Whether a and b are linked through the undirected edges (breadth-first search)."""
    neighbours: dict[str, list[str]] = {}
    for u, v in edges:
        neighbours.setdefault(u, []).append(v)
        neighbours.setdefault(v, []).append(u)
    seen, frontier = {a}, [a]
    while frontier:
        node = frontier.pop()
        for nxt in neighbours.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return b in seen


class RelationPattern(PatternTask):
    name = "relation_pattern"
    description = (
        "Each line says that two cities are directly connected; connections work both ways and "
        "chain through other cities. Answer True or False."
    )
    cue = "Answer:"
    choices = ("False", "True")
    max_answer_tokens = 4
    config_class = RelationConfig
    config: RelationConfig

    def _component(self, rng: random.Random, nodes: list[str]) -> list[tuple[str, str]]:
        edges = _tree_edges(rng, nodes)
        if len(nodes) >= 3 and rng.random() < self.config.extra_edge_prob:
            u, v = rng.sample(nodes, 2)
            if (u, v) not in edges and (v, u) not in edges:
                edges.append((u, v))
        return edges

    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        n_cities = rng.randint(*self.config.cities)
        if pattern:
            z_linked = rng.random() < 0.5
            z_present = z_linked
        else:
            z_linked, z_present = False, True
        others = rng.sample(_OTHERS, n_cities - 1 - z_present)
        z_apart = z_present and not z_linked
        # A keeps at least one neighbour; the other component is absent or has >= 2 cities
        # (Z counts there on broken items), on every kind of item, so its presence tells nothing.
        cuts = [c for c in range(1, len(others) + 1) if len(others) - c + z_apart != 1]
        if z_apart:
            cuts = [c for c in cuts if c < len(others)]
        cut = rng.choice(cuts)
        a_side = ["A", *others[:cut]] + (["Z"] if z_linked else [])
        rest = others[cut:] + (["Z"] if z_apart else [])
        edges = self._component(rng, a_side)
        if rest:
            edges += self._component(rng, rest)
        rng.shuffle(edges)
        edges = [(u, v) if rng.random() < 0.5 else (v, u) for u, v in edges]
        lines = [f"{u} is connected with {v}" for u, v in edges]
        question = "\n".join(lines) + "\nAre cities A and Z connected?"
        meta = {"edges": [[u, v] for u, v in edges]}
        return Draft(question, str(z_linked), str(z_present), meta)

    def solve(self, meta: dict[str, Any]) -> str:
        return str(connected(meta["edges"], "A", "Z"))

    def shortcut(self, meta: dict[str, Any]) -> str:
        return str(any("Z" in edge for edge in meta["edges"]))
