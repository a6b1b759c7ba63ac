"""Stage 3's plan: which KD methods share one teacher cache, so one process builds each cache.

    python -m kd_modules.stages.cache_plan METHOD... -- CACHE_TEACHER_ARGS...

``CACHE_TEACHER_ARGS`` are the arguments of ``cache_teacher.py`` with ``{method}`` where the
method's name goes (``hparams/kd/{method}.yaml``). Prints one line per distinct cache, the
methods it serves (the first one's command builds it), in the order given. Two methods share a
cache when :func:`kd_modules.teacher.teacher_cache_folder` gives them the same folder: every
method of one stage-3 call distils the same teacher, so its fingerprint is left out and only
what the composition adds counts (the front end, the taps, the augmentation replayed, the storage
and, for IML-KD, the integrated-input settings). Composing imports torch: one process answers for
every method instead of one ``cache_teacher.py`` per method, most of which would find their cache
already built by another.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kd_modules.hparams import load_composed, parse_recipe_arguments, run_main
from kd_modules.teacher import as_composed, teacher_cache_folder

PLACEHOLDER = "{method}"


class SameTeacher:
    """The teacher every method of one stage-3 call distils, standing in for the loaded one."""

    fingerprint = "teacher"
    checkpoint = None


def cache_folder(argv: Sequence[str]) -> str:
    """The cache folder ``cache_teacher.py argv`` builds, for :class:`SameTeacher`."""
    files, _, overrides = parse_recipe_arguments(list(argv))
    hparams = load_composed(files, overrides)
    return str(teacher_cache_folder(hparams, as_composed(SameTeacher(), hparams)))


def cache_groups(methods: Sequence[str], template: Sequence[str]) -> list[list[str]]:
    """The methods grouped by the cache they share, groups and methods in the order given."""
    groups: dict[str, list[str]] = {}
    for method in methods:
        argv = [arg.replace(PLACEHOLDER, method) for arg in template]
        groups.setdefault(cache_folder(argv), []).append(method)
    return list(groups.values())


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("usage: cache_plan METHOD... -- CACHE_TEACHER_ARGS (with {method})")
    split = argv.index("--")
    for group in cache_groups(argv[:split], argv[split + 1 :]):
        print(" ".join(group))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
