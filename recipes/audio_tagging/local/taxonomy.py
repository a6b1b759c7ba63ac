"""The SONYC-UST taxonomy (``dcase-ust-taxonomy.yaml``) as the recipe's output columns.

The file maps each coarse number to a name (``coarse``) and, per coarse number, each fine number
(1, 2, ... or ``X``, the incomplete "other/unknown" tag) to a name (``fine``). Column names follow
the release: ``<c>-<f>_<fine name>`` and ``<c>_<coarse name>``, with ``_presence`` appended in
``annotations.csv``; the submission CSV uses them without the suffix. Fine columns are ordered by
coarse number, then fine number, the X tag last (as in the organisers' baseline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from kd_modules.conversion import PrepareError

logger = logging.getLogger(__name__)
SHIPPED = Path(__file__).with_name("dcase-ust-taxonomy.yaml")  # MIT, LICENSE-taxonomy.md


def _fine_order(key) -> tuple[int, int]:
    return (1, 0) if str(key) == "X" else (0, int(key))


def _line_of(root: yaml.Node | None, keys: tuple) -> int:
    """The 1-based line of the deepest entry of ``keys`` (a path of mapping keys) in the file."""
    node, line = root, 1 if root is None else root.start_mark.line + 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        found = [(k, v) for k, v in node.value if k.value == str(key)]
        if not found:
            break
        line, node = found[0][0].start_mark.line + 1, found[0][1]
    return line


def _load(path: Path) -> tuple[object, yaml.Node | None]:
    """The taxonomy file as data and as its YAML node tree (for line numbers); a file YAML
    cannot read stops the run with one line naming the line, its text and the parser's
    complaint (and the line the parser's context started on, e.g. the key lacking its colon)."""
    text = path.read_text()
    lines = text.splitlines()

    def at(mark) -> str:
        shown = f" ({lines[mark.line].strip()!r})" if mark.line < len(lines) else ""
        return f"line {mark.line + 1}{shown}"

    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.MarkedYAMLError as error:
        where = f" {at(error.problem_mark)}" if error.problem_mark else ""
        context = f" ({error.context} at {at(error.context_mark)})" if error.context_mark else ""
        raise PrepareError(f"{path}{where}: not valid YAML: {error.problem}{context}") from None
    except yaml.YAMLError as error:
        raise PrepareError(f"{path}: not valid YAML: {error}") from None


def _check(taxonomy, root: yaml.Node, path: Path) -> None:
    """Stop on a file that parses but is no taxonomy, naming the line and the field: a
    ``coarse`` map of integer -> name and, per coarse number, a ``fine`` map of 1, 2, ... or X."""

    def fail(keys: tuple, problem: str) -> None:
        field = ".".join(str(k) for k in keys)
        raise PrepareError(f"{path} line {_line_of(root, keys)}: field {field}: {problem}")

    for key in ("coarse", "fine"):
        if not isinstance(taxonomy, dict) or not isinstance(taxonomy.get(key), dict):
            fail((key,), "missing or not a map (expected number: name entries)")
    for c in taxonomy["coarse"]:
        if not str(c).isdigit():
            fail(("coarse", c), "coarse numbers are integers")
        if not isinstance(taxonomy["fine"].get(c), dict):
            fail(("fine", c), f"coarse class {c} has no map of fine tags")
        for f in taxonomy["fine"][c]:
            if not (str(f).isdigit() or str(f) == "X"):
                fail(("fine", c, f), "fine numbers are integers or X")


def read_layout(path: str | Path = SHIPPED) -> dict:
    """``{"fine": [...], "coarse": [...], "fine_taxonomy": [...]}`` from a taxonomy file.

    ``fine_taxonomy`` has one entry per coarse class (in ``coarse`` order): the indices into
    ``fine`` of its complete tags and of its X tag (None when it has none). A malformed file
    stops the run (PrepareError) naming the file, line and field.
    """
    taxonomy, root = _load(Path(path))
    _check(taxonomy, root, Path(path))
    fine, coarse, fine_taxonomy = [], [], []
    for c in sorted(taxonomy["coarse"], key=int):
        coarse.append(f"{c}_{taxonomy['coarse'][c]}")
        entry = {"complete": [], "incomplete": None}
        for f in sorted(taxonomy["fine"][c], key=_fine_order):
            if str(f) == "X":
                entry["incomplete"] = len(fine)
            else:
                entry["complete"].append(len(fine))
            fine.append(f"{c}-{f}_{taxonomy['fine'][c][f]}")
        fine_taxonomy.append(entry)
    return {"fine": fine, "coarse": coarse, "fine_taxonomy": fine_taxonomy}


def release_taxonomy(data_root: Path) -> Path:
    """The release's own taxonomy file when it has one, else the copy shipped with the recipe
    (with a warning naming both: the columns then come from a file the release did not bring)."""
    own = Path(data_root) / SHIPPED.name
    if own.is_file():
        return own
    logger.warning(
        "no taxonomy file at %s: using the copy shipped with the recipe, %s", own, SHIPPED
    )
    return SHIPPED
