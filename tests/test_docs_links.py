"""The README and docs/ link only to files a clone has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Markdown links and images, plus paths named in backticks that look like our docs.
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED_DOC = re.compile(r"`((?:\.\./)*(?:shared/)?docs/[\w./-]+\.md)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    targets += NAMED_DOC.findall(text)
    for target in targets:
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{page.name} links outside the clone: {target}"
        assert resolved.exists(), f"{page.name} links to a missing file: {target}"


def test_the_inference_contract_is_the_projects_own() -> None:
    contract = (REPO / "docs" / "inference-contract.md").read_text(encoding="utf-8")
    for route in ("GET status", "POST get_action", "POST predict", "POST generate",
                  "POST generate_stream", "GET sessions", "DELETE sessions/{id}"):
        assert f"`{route}" in contract, route
    assert "docs/inference-contract.md" in (REPO / "README.md").read_text(encoding="utf-8")
