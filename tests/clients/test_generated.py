"""The copy clients/generate.py writes (the ES module of the browser client) matches its source."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procfile import ROOT


def test_the_generated_clients_are_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
