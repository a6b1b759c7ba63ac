"""The repository's docs: every citation of METHODS.md outside docs/ names docs/METHODS.md, which
is in the repository, and the section it cites is one of its headings; every Markdown link to a
file of the repository resolves."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

METHODS = REPO / "docs" / "METHODS.md"
CITED = re.compile(r"(\S*)METHODS\.md\S*(?:\s+(?:§|section\s+)(\d+))?")
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_text_files(*suffixes: str) -> list[Path]:
    """Files of the repository with these suffixes, outside virtualenvs, caches and run folders."""
    skip = {".venv", ".git", "__pycache__", "exp", "data", ".pytest_cache", ".ruff_cache"}
    return [
        path
        for suffix in suffixes
        for path in REPO.rglob(f"*{suffix}")
        if not skip & set(path.relative_to(REPO).parts) and path.is_file()
    ]


def test_every_citation_names_docs_methods_and_one_of_its_sections():
    headings = set(re.findall(r"^## (\d+)\. ", METHODS.read_text(), re.M))
    citations = []
    for path in tracked_text_files(".py", ".md", ".yaml", ".sh"):
        if path == Path(__file__):
            continue
        for prefix, section in CITED.findall(path.read_text()):
            citations.append((path.relative_to(REPO), prefix, section))
    assert citations, "no file cites METHODS.md"
    for path, prefix, section in citations:
        in_docs = path.parent == Path("docs")  # its siblings cite it as METHODS.md
        assert prefix.endswith("docs/") or in_docs, (path, prefix)
        assert not section or section in headings, (path, section, sorted(headings))


def test_markdown_links_to_repository_files_resolve():
    for page in tracked_text_files(".md"):
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links {target}"
