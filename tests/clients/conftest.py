"""The clients people install and the recipes in examples/, against one stack of their own.

The stack is configured as a deployment behind an app would be: the app's origin (``APP_ORIGIN``, where the
example backends listen) is in CORS_ORIGINS, so that its page can read streams from tokenbridge.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from bridge.embedded import free_port
from tests.procfile import ROOT
from tests.stack import Stack, running_stack

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
