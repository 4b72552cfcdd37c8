"""From traced channels to hidden units, grouped for block coordinate descent.

A *unit* is a set of tied channels (one root of the union-find): it has one factor d.
It is balanced when nothing stopped it and it has both producers (incoming weights)
and consumers (outgoing weights). Units with the same producers form a `UnitGroup`:
no weight then has rows and columns in one group (that would be a unit with the weight
on both sides, which is not balanced), so the objective is separable over a group and
one step updates all of its units exactly. Each group holds the `UnitSlice`s of the
weights it touches, each slice knowing its depth for the c-weighted objective.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .channels import ChannelMap, WeightAxis, trace_channels


@dataclass
class UnitSlice:
    """The part of one weight (with its bias, for rows) that belongs to the units of one
    group: what a cycle measures and rescales."""

    name: str
    param: Tensor
    bias: Tensor | None  # rescaled with the rows (dim 0 only)
    dim: int
    incoming: bool  # True: x d (a producer's rows); False: x 1/d (a consumer's columns)
    depth: int  # the weight's depth: its longest path, in layers, from the input
    # how much deeper the weight is than its side of the group expects (producers: the
    # group's depth; consumers: one more): 0 in a chain. Its squared norms count
    # c^(-2 depth_shift) in the unit's l^2 or r^2 (see ENorm).
    depth_shift: int
    n: int  # number of indices along dim
    start: int | None  # contiguous: indices start..start+n, unit first_unit + i // per_unit
    first_unit: int = 0
    per_unit: int = 1  # consecutive indices per unit (a Linear reading a flatten: H*W)
    index: Tensor | None = None  # scattered (start is None): the indices along dim...
    units: Tensor | None = None  # ...and the unit of each

    def c_weight(self, c: float) -> float:
        """The weight of this slice's squared norms in its units' l^2 or r^2."""
        return c ** (-2 * self.depth_shift)

    def unit_of_index(self) -> list[int]:
        """The group's unit at each of the slice's indices, in order."""
        if self.start is None:
            return self.units.tolist()
        return [self.first_unit + i // self.per_unit for i in range(self.n)]


@dataclass
class UnitGroup:
    """Hidden units updated together: no weight is shared by two of its units."""

    n: int
    depth: int  # depth of its shallowest producer
    order: int  # graph position of its first producer (the sequential order)
    incoming: list[UnitSlice] = field(default_factory=list)
    outgoing: list[UnitSlice] = field(default_factory=list)

    @property
    def slices(self) -> list[UnitSlice]:
        return [*self.incoming, *self.outgoing]


@dataclass
class UnitAnalysis:
    """What `find_unit_groups` found in a model."""

    groups: list[UnitGroup]  # in sequential order (input to output)
    excluded: Counter  # why the other units are not balanced -> how many

    @property
    def num_units(self) -> int:
        return sum(g.n for g in self.groups)


def _slice(axis: WeightAxis, positions: list[int], units: list[int], depth: int, shift: int) -> UnitSlice:
    s = UnitSlice(axis.name, axis.param, axis.bias if axis.dim == 0 else None, axis.dim, axis.incoming,
                  depth, shift, len(positions), None)
    per = 1
    while per < len(units) and units[per] == units[0]:
        per += 1
    if (positions == list(range(positions[0], positions[0] + len(positions))) and len(positions) % per == 0
            and units == [units[0] + i // per for i in range(len(positions))]):
        s.start, s.first_unit, s.per_unit = positions[0], units[0], per
    else:
        device = axis.param.device
        s.index = torch.tensor(positions, dtype=torch.long, device=device)
        s.units = torch.tensor(units, dtype=torch.long, device=device)
    return s


def _group(axes: list[WeightAxis], unit_of: dict[int, int], found: ChannelMap,
           depth: dict[int, int]) -> UnitGroup:
    """The group whose units (tie roots) are numbered by `unit_of`, over the axes touching them."""
    group_depth = min(depth[id(a.param)] for a in axes if a.incoming)
    group = UnitGroup(len(unit_of), group_depth, min(a.order for a in axes if a.incoming))
    for a in axes:
        positions, units = [], []
        for j, i in enumerate(a.channels):
            u = unit_of.get(found.ties.find(i))
            if u is not None:
                positions.append(j)
                units.append(u)
        d = depth[id(a.param)]
        shift = d - group_depth - (0 if a.incoming else 1)
        (group.incoming if a.incoming else group.outgoing).append(_slice(a, positions, units, d, shift))
    return group


def find_unit_groups(model: nn.Module, *, bn: str = "ignore", attention: bool = False,
                     balance_last: bool = True) -> UnitAnalysis:
    """The unit groups of `model` in sequential order, and why the other channels were excluded."""
    found = trace_channels(model, bn=bn, attention=attention, balance_last=balance_last)
    ties, roots = found.ties, found.ties.roots()
    why_not: dict[int, str] = {}
    for i, why in found.stopped.items():
        why_not.setdefault(ties.find(i), why)
    producers, consumers = defaultdict(set), defaultdict(set)  # unit -> ids of the weights on each side
    names: dict[int, str] = {}
    depth: dict[int, int] = {}  # weight -> its depth (the deepest of its calls)
    for a in found.axes:
        names[id(a.param)] = a.name
        depth[id(a.param)] = max(depth.get(id(a.param), a.depth), a.depth)
        for i in a.channels:
            (producers if a.incoming else consumers)[ties.find(i)].add(id(a.param))
    for u in roots:
        both = producers[u] & consumers[u]
        if u not in why_not and both:  # e.g. a layer applied twice: d/d on its own entries
            why_not[u] = f"{names[min(both)]} both produces and consumes it"
    balanced = {u for u in roots if u not in why_not and producers[u] and consumers[u]}

    # units with the same producers are updated together
    key = {u: frozenset(producers[u]) for u in balanced}
    members: dict[frozenset, list[WeightAxis]] = defaultdict(list)
    for a in found.axes:
        for k in {key[u] for u in map(ties.find, a.channels) if u in balanced}:
            members[k].append(a)
    groups = []
    for k, axes in members.items():
        unit_of: dict[int, int] = {}  # numbered producers first, in graph order
        for a in sorted(axes, key=lambda a: (not a.incoming, a.order)):
            for u in map(ties.find, a.channels):
                if u in balanced and key[u] == k and u not in unit_of:
                    unit_of[u] = len(unit_of)
        groups.append(_group(axes, unit_of, found, depth))
    groups.sort(key=lambda g: g.order)

    excluded = Counter(why_not[u] for u in roots if u in why_not)
    excluded.update(["no producer or no consumer"] * sum(
        1 for u in roots if u not in why_not and not (producers[u] and consumers[u])))
    return UnitAnalysis(groups, excluded)


def describe_groups(groups: list[UnitGroup], excluded: Counter) -> str:
    def fmt(s: UnitSlice) -> str:
        where = ("rows" if s.param.ndim > 1 else "entries") if s.dim == 0 else "columns"
        return f"{s.name} {where} x{'d' if s.incoming else '1/d'} (depth {s.depth})"

    lines = [f"ENorm: {len(groups)} unit groups, {sum(g.n for g in groups)} balanced units"]
    for k, g in enumerate(groups):
        tied = f"; tied: each unit has {len(g.incoming)} producers" if len(g.incoming) > 1 else ""
        lines.append(f"  group {k}: {g.n} units{tied}")
        lines.append("    in:  " + ", ".join(fmt(s) for s in g.incoming))
        lines.append("    out: " + ", ".join(fmt(s) for s in g.outgoing))
    if excluded:
        lines.append(f"  not balanced: {sum(excluded.values())} units")
        lines.extend(f"    {n} x {why}" for why, n in excluded.most_common())
    return "\n".join(lines)
