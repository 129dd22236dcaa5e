"""The README is the overview and docs/ the detail: every relative link in them reaches a file, and every page of
docs/ is reached from the README (a page nothing links to is one a user never finds)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code blocks hold no links
    return [t for t in LINK.findall(text) if "://" not in t]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(page):
    broken = [t for t in _links(page) if not (page.parent / t).resolve().is_file()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / t).resolve() for t in _links(ROOT / "README.md")}
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert PAGES[1:] and not orphans, f"docs pages the README does not link: {orphans}"


def test_each_docs_page_links_back_to_the_readme():
    for page in PAGES[1:]:
        assert (ROOT / "README.md").resolve() in {(page.parent / t).resolve() for t in _links(page)}, page
