"""Seeded, group-disjoint, class-stratified splits of a list of examples.

Clips cut from the same source recording (or said by the same speaker) must not be on both sides
of a split, or the test score measures memorised recordings. :func:`stratified_group_split`
assigns whole groups to splits so that each split gets about its fraction of every class.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

_TIE = 1e-9


def stratified_group_split(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable],
    fractions: dict[str, float],
    seed: int,
    cover: Sequence[str] | None = None,
) -> dict[str, list[int]]:
    """Assign example indices to the named splits, keeping every group within one split.

    1. Greedy: groups in a seeded random order, larger first, each to the split with the largest
       remaining need for its classes (relative to each class's size; ties go to the larger
       fraction).
    2. Coverage: a class missing from a split named in ``cover`` (default: every split) takes
       one of its smallest groups from a split that has two or more groups of it, splits served
       by decreasing fraction. So with ``cover=("train", "test")`` a class with two groups lands
       in train and test for fractions train 0.7 / valid 0.1 / test 0.2.
    3. Size: a split short of its share of all examples (tiny classes all go to the largest
       split in step 1) takes small groups that the other splits can spare.

    Deterministic for a seed; each index is in exactly one split; lists are sorted.
    """
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    if cover is not None and not set(cover) <= set(fractions):
        raise ValueError(f"cover names {sorted(set(cover) - set(fractions))} are not splits")
    names = sorted((n for n in fractions if fractions[n] > 0), key=lambda n: -fractions[n])

    members: dict[Hashable, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    counts = {g: Counter(labels[i] for i in idx) for g, idx in members.items()}
    order = sorted(members, key=str)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # stable: random among equal sizes

    where = _greedy(order, counts, Counter(labels), fractions, names)
    covered = [n for n in names if cover is None or n in cover]
    while True:
        move = _next_move(order, counts, where, fractions, names, covered)
        if move is None:
            break
        where[move[0]] = move[1]
    result: dict[str, list[int]] = {n: [] for n in fractions}
    for group, split in where.items():
        result[split].extend(members[group])
    return {n: sorted(v) for n, v in result.items()}


def _greedy(order, counts, class_total, fractions, names) -> dict:
    """Each group to the split whose per-class quotas it fills best."""
    taken = {n: Counter() for n in names}
    where = {}
    for group in order:
        need = {
            n: sum(
                k * (fractions[n] * class_total[c] - taken[n][c]) / class_total[c]
                for c, k in counts[group].items()
            )
            for n in names
        }
        best = max(need.values())
        where[group] = next(n for n in names if need[n] >= best - _TIE)
        taken[where[group]].update(counts[group])
    return where


def _next_move(order, counts, where, fractions, names, cover) -> tuple | None:
    """The next (group, split) move of steps 2-3, or None when there is none.

    A move never takes a donor split's last group of any class. Coverage only grows and, between
    coverage moves, the splits' shortfall only shrinks, so repeated moves end.
    """
    holders = defaultdict(Counter)  # split -> class -> number of its groups holding the class
    sizes = Counter()
    size = {g: sum(counts[g].values()) for g in order}
    for group, split in where.items():
        holders[split].update(counts[group].keys())
        sizes[split] += size[group]
    total = sum(size.values())
    smallest_first = sorted(order, key=size.get)

    def spare(group: Hashable, to: str) -> bool:
        donor = where[group]
        return donor != to and all(holders[donor][c] >= 2 for c in counts[group])

    for split in cover:
        for group in smallest_first:
            if spare(group, split) and any(holders[split][c] == 0 for c in counts[group]):
                return group, split
    for split in names:
        quota = fractions[split] * total
        if sizes[split] >= math.floor(quota):
            continue
        for group in smallest_first:
            donor = where[group]
            fits = sizes[split] + size[group] <= math.ceil(quota)
            donor_ok = sizes[donor] - size[group] >= math.floor(fractions[donor] * total)
            if fits and donor_ok and spare(group, split):
                return group, split
    return None
