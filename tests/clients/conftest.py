"""The clients people install and the recipes in examples/, against one stack of their own.

The stack is configured as a deployment behind an app would be: the app's origin (``APP_ORIGIN``, where the
example backends listen) is in CORS_ORIGINS, so that its page can read streams from tokenbridge.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.embedded import free_port
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

CLIENT_SOURCE = ROOT / "clients" / "python" / "src"
APP_PORT = free_port()
APP_ORIGIN = f"http://127.0.0.1:{APP_PORT}"

# The examples import tokenbridge_client, as they would once it is installed (pip install ./clients/python).
if str(CLIENT_SOURCE) not in sys.path:
    sys.path.insert(0, str(CLIENT_SOURCE))
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("clients-redis"),
        ROOT / "test-artifacts" / "clients-logs",
        CORS_ORIGINS=APP_ORIGIN,
    ) as stack:
        yield stack


@pytest.fixture(scope="package")
def tsc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TypeScript compiler, installed with npm once for the clients' tests (skipped without npm)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the JS client's types are not checked")
    prefix = tmp_path_factory.mktemp("typescript")
    install = subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix), "typescript@5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        pytest.skip(f"typescript could not be installed with npm: {install.stderr.strip()[-300:]}")
    return prefix / "node_modules" / ".bin" / "tsc"
