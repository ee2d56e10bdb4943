"""Who owns a unit of work: rendezvous (highest random weight) hashing over the live nodes.

Each (node, unit) pair gets a score from a hash; the unit belongs to the live node of its group
with the highest score. When a node leaves, only its units move (each to the node with the next
score); when one joins, it takes only the units it now scores highest on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping


def _score(node: str, unit: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{unit}".encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def owner(unit: str, nodes: Iterable[str]) -> str | None:
    """The node that owns `unit` among `nodes` (None if there are none)."""
    return max(nodes, key=lambda node: (_score(node, unit), node), default=None)


def assign(units: Mapping[str, str], nodes: Mapping[str, Iterable[str]],
           newcomers: Collection[str] = ()) -> dict[str, str | None]:
    """unit -> owning node, for units (unit -> group) and live nodes (node -> its groups); a
    unit whose group no live node serves has no owner (None).

    `newcomers` (nodes that joined during the cycle being assigned) get only the units of
    groups that no other live node serves: the others may have run the newcomer's share of
    that cycle already, and the newcomer must not wait for its first run to be on time."""
    settled: dict[str, list[str]] = {}
    joining: dict[str, list[str]] = {}
    for node, groups in nodes.items():
        for group in groups:
            (joining if node in newcomers else settled).setdefault(group, []).append(node)
    return {unit: owner(unit, settled.get(group) or joining.get(group) or ())
            for unit, group in units.items()}
