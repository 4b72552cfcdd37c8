"""Union-find over channel ids: the channels that an addition ties share one factor."""

from __future__ import annotations


class UnionFind:
    """Disjoint sets of the integers 0..len-1 (path halving; the smaller root wins, so a
    set is named after its first channel)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def __len__(self) -> int:
        return len(self.parent)

    def add(self, n: int) -> list[int]:
        """`n` fresh singletons; their ids."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> set[int]:
        return {self.find(i) for i in range(len(self.parent))}
