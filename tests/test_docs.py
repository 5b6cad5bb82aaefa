"""The user-facing pages: README within its size, links that resolve, and no machine paths or
accounts of how the project was built (the project speaks of itself alone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages that other open work adds; linked already, checked as soon as they exist.
FORBIDDEN = re.compile(r"/tmp/|/work/|/scratch|SIGSTOP|\bsessions?\b|\bwork periods?\b", re.I)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_page_not_a_notebook() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; measured tables go to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_speaks_of_the_project(page: Path) -> None:
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        hit = FORBIDDEN.search(line)
        assert hit is None, f"{page.relative_to(ROOT)}:{n}: {hit.group(0)!r} in {line.strip()!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path = (page.parent / target).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
