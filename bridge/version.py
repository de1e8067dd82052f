"""tokenbridge's version, written once: ``version`` in pyproject.toml.

Read from the installed distribution's metadata. A PaaS that installs only requirements.txt runs the processes from
the checkout without installing the project, so there the checkout's pyproject.toml is read instead.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "tokenbridge"
# The pyproject.toml of a checkout: bridge/ sits at the root of the repository.
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def read_version(distribution: str = DISTRIBUTION, pyproject: Path = PYPROJECT) -> str:
    """The installed version of ``distribution``, else the version in ``pyproject``, else ``"unknown"``."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        pass
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return "unknown"
    return str(project.get("version", "unknown")) if project.get("name") == distribution else "unknown"


VERSION = read_version()
