"""What the browser tests share: where Chromium is, how to launch it, where screenshots go."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from tests.procfile import ROOT

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
