"""What the browser tests share: where Chromium is, how to launch it, where screenshots go."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.auth import _SALT
from tests.support.procfile import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.support.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DOCS = ROOT / "docs"
# Set to 1 to refresh docs/demo.png and docs/dashboard.png from this run's screenshots.
UPDATE_DOCS = os.environ.get("TOKENBRIDGE_UPDATE_DOCS") == "1"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; the system Chromium is used)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}"
    return None


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


def publish(screenshot: Path, doc_name: str) -> None:
    """Copy a screenshot to docs/ when TOKENBRIDGE_UPDATE_DOCS=1 (a plain test run leaves the tree clean)."""
    if UPDATE_DOCS:
        shutil.copyfile(screenshot, DOCS / doc_name)


@contextmanager
def chromium() -> Iterator[Browser]:
    """The system Chromium under Playwright (the caller has checked ``missing()``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def checked_page(browser: Browser, **context_options: Any) -> Iterator[Page]:
    """A page in a fresh context; fails the test when a JavaScript error reached the page."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


class _TwoHoursAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 7200


def expired_token(stack: Stack, generation_id: str) -> str:
    """A stream token for the generation, signed two hours ago (its time to live is one hour)."""
    serializer = URLSafeTimedSerializer(stack.env["SECRET_KEY"], salt=_SALT, signer=_TwoHoursAgo)
    token = str(serializer.dumps({"g": generation_id}))
    refused = httpx.get(stack.url(f"/v1/generations/{generation_id}"), params={"token": token})
    assert refused.json()["error"]["code"] == "token_expired"
    return token
