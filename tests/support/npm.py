"""npm packages a test needs (the Durable Streams client), installed once into a directory of the test's own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# The Durable Streams npm client, pinned: the version the tests were written against.
DURABLE_STREAMS_CLIENT = "@durable-streams/client@0.2.7"


def install(spec: str, prefix: Path) -> Path:
    """``npm install`` ``spec`` under ``prefix`` (its ``node_modules``); skips the test when node or npm is missing
    or the install fails (no network), never fails it."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: the npm client is not tried")
    done = subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix), spec],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"{spec} could not be installed with npm: {done.stderr.strip()[-300:]}")
    return prefix / "node_modules"
