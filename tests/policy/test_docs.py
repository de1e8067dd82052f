"""The documentation is whole: every relative link resolves, and docs/configuration.md matches the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge import settings_doc

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are not checked.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        fenced ^= line.lstrip().startswith("```")
        match = None if fenced else re.match(r"^#{1,6} (.*)$", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    dead = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            dead.append(target)
    assert dead == []


def test_every_doc_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    assert {page for page in PAGES[1:] if page.resolve() not in linked} == set()


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_every_setting_has_a_description() -> None:
    from bridge.settings import Settings

    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_configuration_doc_is_current() -> None:
    # Stale? Run: python -m bridge.settings_doc --output docs/configuration.md
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == settings_doc.markdown()


def _defined_metrics() -> dict[str, str]:
    """Every Prometheus metric the processes define (module-level objects of app, bridge, workers, tasks): the
    name a scrape shows (a counter's with ``_total``) and its type."""
    import importlib
    import pkgutil

    from prometheus_client.metrics import MetricWrapperBase

    from workers.metrics import TimingsHistogram

    metrics = {}
    for package in ("app", "bridge", "workers", "tasks"):
        for module_info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if module_info.name.endswith("__main__"):
                continue
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase | TimingsHistogram):
                    family = value.describe()[0]
                    suffix = "_total" if family.type == "counter" else ""
                    metrics[family.name + suffix] = family.type
    return metrics


def test_every_metric_is_in_the_operations_tables_with_its_type() -> None:
    rows = re.findall(r"^\| `(tokenbridge_\w+)` \| (\w+) \|", (ROOT / "docs" / "operations.md").read_text(), re.M)
    documented = dict(rows)
    defined = _defined_metrics()
    assert len(defined) > 20
    assert {name: kind for name, kind in defined.items() if documented.get(name) != kind} == {}
    assert set(documented) - set(defined) == set()
