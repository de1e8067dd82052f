"""A stack (web, worker, consumer) and one Chromium for the browser tests of the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.browser.support import checked_page
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the pages in a real browser (Playwright, system Chromium)")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("browser-redis"),
        ROOT / "test-artifacts" / "browser" / "logs",
    ) as stack:
        yield stack


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh browser context (empty storage) on the stack's web, with a desktop-sized viewport."""
    with checked_page(browser, base_url=stack.base_url, viewport={"width": 1200, "height": 860}) as page:
        yield page
