"""The lock: exact versions of everything tokenbridge installs, resolved by pip from pyproject.toml.

- ``requirements.txt``: what running needs (the runtime dependencies and what they need, plus the build
  backend that installs the project itself). Python buildpacks (Heroku, Render, Dokku) and the Dockerfile
  install it; ``make dev`` too.
- ``requirements-dev.txt``: ``-r requirements.txt`` plus the ``dev`` and ``bench`` extras (tests, lint,
  benchmark) and what they need. ``make install`` / ``make test`` install it.

Both come from one resolution, so a dependency shared by the server and a test tool has one version.

    python scripts/lock.py            # resolve again, keeping every pin that pyproject.toml still allows
    python scripts/lock.py --upgrade  # resolve to the newest releases that pyproject.toml allows
    python scripts/lock.py --check    # exit 1 when a lock file no longer satisfies pyproject.toml

Nothing is installed: pip resolves with ``--dry-run --report`` for this interpreter (the lock is written for
the Python of .python-version on Linux; a platform that needs one more package gets it from pip as usual).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"
EXTRAS = ("dev", "bench")
HEADER = """\
# The lock{what}.
# Written by `make lock` (scripts/lock.py) from pyproject.toml; do not edit by hand. Resolved for
# Python {python} on Linux (see .python-version); `make lock UPGRADE=1` moves to newer releases.
"""
# Distributions of this repository that tokenbridge depends on: installed from their folder, never from an index.
LOCAL = {"tokenbridge-client": "./clients/python"}
RUNTIME_WHAT = " of what running needs: PaaS buildpacks, the Dockerfile and make dev install it"
DEV_WHAT = " of the test, lint and benchmark tools, on top of requirements.txt: make install and make test"


def pyproject(path: Path = ROOT / "pyproject.toml") -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def declared(extra: str | None = None, path: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """pyproject.toml's runtime dependencies (with the build backend), or those of one extra."""
    data = pyproject(path)
    if extra is None:
        texts = [*data["project"]["dependencies"], *data["build-system"]["requires"]]
    else:
        texts = data["project"]["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def read_pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of a lock file, by canonical name (``-r`` lines are followed)."""
    pins: dict[str, str] = {}
    local = {folder: name for name, folder in LOCAL.items()}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(read_pins(path.parent / line[3:].strip()))
        elif line in local:
            pins[local[line]] = line
        elif line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def unsatisfied(requirements: Iterable[Requirement], pins: dict[str, str]) -> list[str]:
    """A sentence for each requirement that ``pins`` miss or pin outside its range."""
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{name} ({requirement}) is not pinned")
        elif name in LOCAL:
            continue  # installed from its folder: the version is the repository's
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside {requirement}")
    return problems


def check() -> list[str]:
    runtime, everything = read_pins(RUNTIME), read_pins(DEV)
    problems = [f"requirements.txt: {p}" for p in unsatisfied(declared(), runtime)]
    for extra in EXTRAS:
        problems += [f"requirements-dev.txt [{extra}]: {p}" for p in unsatisfied(declared(extra), everything)]
    return problems


# -- resolving -------------------------------------------------------------------------------------


def _kept_pins(upgrade: bool) -> list[str]:
    """Current pins that pyproject.toml still allows, as constraints (none with ``upgrade``)."""
    source = DEV if DEV.exists() else RUNTIME
    if upgrade or not source.exists():
        return []
    ranges = {canonicalize_name(r.name): r.specifier for r in declared()}
    for extra in EXTRAS:
        ranges.update({canonicalize_name(r.name): r.specifier for r in declared(extra)})
    return [
        f"{name}=={version}"
        for name, version in read_pins(source).items()
        if name not in LOCAL and (name not in ranges or ranges[name].contains(version, prereleases=True))
    ]


def _report(upgrade: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{pin}\n" for pin in _kept_pins(upgrade)))
        report = Path(tmp) / "report.json"
        build = [str(r) for r in declared() if canonicalize_name(r.name) == "setuptools"]
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        command += ["--report", str(report), "-c", str(constraints), f".[{','.join(EXTRAS)}]", *build]
        command += LOCAL.values()  # found in their folders, not looked for on an index
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode:
            raise SystemExit("pip could not resolve the lock (a kept pin may conflict: try `make lock UPGRADE=1`)")
        items: list[dict[str, Any]] = json.loads(report.read_text())["install"]
        return items


def _closure(roots: Iterable[Requirement], metadata: dict[str, dict[str, Any]]) -> set[str]:
    """The canonical names ``roots`` need, following each resolved distribution's ``Requires-Dist``."""
    environment = default_environment()
    found: dict[str, set[str]] = {}
    queue = [(root, {""}) for root in roots]
    while queue:
        requirement, extras = queue.pop()
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({**environment, "extra": e}) for e in extras):
            continue
        name = canonicalize_name(requirement.name)
        wanted = {"", *requirement.extras}
        if name in found and wanted <= found[name]:
            continue
        found[name] = found.get(name, set()) | wanted
        queue.extend((Requirement(text), wanted) for text in metadata[name].get("requires_dist") or [])
    return set(found)


def resolve(upgrade: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(runtime pins, dev-only pins), by canonical name."""
    metadata = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in _report(upgrade)}
    metadata.pop("tokenbridge", None)
    versions = {name: data["version"] for name, data in metadata.items()}
    runtime = _closure(declared(), metadata)
    return (
        {name: versions[name] for name in sorted(runtime)},
        {name: versions[name] for name in sorted(set(versions) - runtime)},
    )


def render(pins: dict[str, str], what: str, include: str | None = None) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    head = HEADER.format(what=what, python=python) + (f"-r {include}\n" if include else "")
    lines = (f"{LOCAL[name]}\n" if name in LOCAL else f"{name}=={version}\n" for name, version in pins.items())
    return head + "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="newest releases instead of keeping current pins")
    parser.add_argument("--check", action="store_true", help="only check the lock files against pyproject.toml")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem)
        if problems:
            print("the lock is out of step with pyproject.toml: run `make lock`")
        return 1 if problems else 0
    runtime, dev = resolve(args.upgrade)
    RUNTIME.write_text(render(runtime, RUNTIME_WHAT))
    DEV.write_text(render(dev, DEV_WHAT, RUNTIME.name))
    print(f"wrote {RUNTIME.name} ({len(runtime)} pins) and {DEV.name} ({len(dev)} more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
