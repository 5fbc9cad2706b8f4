"""The README and docs/ as a reader meets them: short, every link resolves, no tracker numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


ANCHOR = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    text = page.read_text()
    targets = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://"))]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing {missing}"
    assert not re.search(r"[Ii]ssue \d+", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_section_link_finds_its_heading(page):
    """A contents entry or `page.md#section` link names a heading that exists on its page."""
    broken = []
    for target, anchor in ANCHOR.findall(page.read_text()):
        linked = page.parent / target if target else page
        if target.startswith(("http://", "https://")) or not linked.is_file():
            continue
        headings = {slug(line.lstrip("#")) for line in linked.read_text().splitlines() if line.startswith("#")}
        if anchor not in headings:
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.name}: no such heading {broken}"


PUBLISHED = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/recipe.yaml"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_published_scores_are_stages_of_the_published_recipe(folder):
    """What `fusekit report --publish` kept outlives the run folders: every scored stage is one its recipe plans,
    and the report beside it is the study's."""
    import json

    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study

    planned = {stage.name for stage in plan(load_study(folder / "recipe.yaml"), str(folder))}
    scores = json.loads((folder / "scores.json").read_text())
    assert scores and set(scores) <= planned, sorted(set(scores) - planned)
    assert (folder / "report.md").read_text().startswith("# fusekit report: ")
