"""tokenbridge-client (clients/python): a distribution of its own, that streams with none of the server installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.clients.conftest import CLIENT_SOURCE
from tests.support.procfile import ROOT
from tests.support.stack import API_KEY, Stack

DISTRIBUTION = ROOT / "clients" / "python"
SERVER_PACKAGES = ("bridge", "app", "flask", "celery", "redis", "gevent", "pydantic")
# The one-line install docs/clients.md gives; the test runs it with the address of a repository of its own.
PIP_FROM_GIT = re.compile(r'^pip install "tokenbridge-client @ git\+(?P<url>[^#"]+)#subdirectory=clients/python"', re.M)

# Runs in the fresh environment: the sync and the async client each read a generation to its end.
SCRIPT = """
import importlib.util, json, sys
import anyio
from tokenbridge_client import AsyncTokenbridgeClient, TokenbridgeClient, acollect_text, collect_text

base_url, api_key, prompt = sys.argv[1:4]
with TokenbridgeClient(base_url, api_key) as client:
    sync_text = collect_text(client.stream(client.submit("echo", prompt)))

async def read():
    async with AsyncTokenbridgeClient(base_url, api_key) as client:
        return await acollect_text(client.stream(await client.submit("echo", prompt)))

print(json.dumps({
    "sync": sync_text,
    "async": anyio.run(read),
    "importable": [name for name in sys.argv[4:] if importlib.util.find_spec(name) is not None],
}))
"""

# Runs in the fresh environment after pip: where the client was installed from, and what it is.
INSTALLED = """
import json
from importlib import metadata
import tokenbridge_client

distribution = metadata.distribution("tokenbridge-client")
print(json.dumps({
    "module": tokenbridge_client.__file__,
    "version": distribution.version,
    "__version__": tokenbridge_client.__version__,
    "requires": distribution.requires,
    "direct_url": json.loads(distribution.read_text("direct_url.json")),
}))
"""


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need, their own requirements included (extras left out)."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _fresh_venv(directory: Path) -> tuple[Path, Path]:
    """A new virtual environment without pip: its python and its (empty) site-packages."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return python, Path(purelib)


def _install_dependencies(site: Path, names: list[str]) -> None:
    """``names`` with what they need, copied from this environment (no network)."""
    for name in _closure(names):
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            source = Path(str(distribution.locate_file(file)))
            if file.parts[0] != ".." and source.is_file():
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, site / file)


@pytest.mark.e2e
def test_the_client_streams_in_an_environment_without_the_server(stack: Stack, tmp_path: Path) -> None:
    # Given a fresh virtual environment with the client package and httpx and orjson, and nothing else
    python, site = _fresh_venv(tmp_path / "venv")
    shutil.copytree(CLIENT_SOURCE / "tokenbridge_client", site / "tokenbridge_client")
    _install_dependencies(site, ["httpx", "orjson"])
    # When a script there streams answers from the stack, with the sync and the async client
    prompt = "Installed on its own, the client still resumes."
    run = subprocess.run(
        [python, "-I", "-c", SCRIPT, stack.base_url, API_KEY, prompt, *SERVER_PACKAGES],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    # Then both read the whole answer, and none of the server's packages could have been imported
    assert json.loads(run.stdout) == {"sync": prompt, "async": prompt, "importable": []}


@pytest.mark.slow
def test_the_wheel_needs_only_httpx_and_orjson(tmp_path: Path) -> None:
    # Given the distribution's source, copied (a build writes next to it)
    source = tmp_path / "source"
    shutil.copytree(DISTRIBUTION, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # When pip builds its wheel (with setuptools from the index, as any install would)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.skip(f"the wheel could not be built here (no package index?): {build.stderr.strip()[-300:]}")
    # Then it holds the client package only, and requires httpx and orjson only
    (wheel,) = tmp_path.glob("tokenbridge_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA")))
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    requires = [
        line.split(":", 1)[1].strip() for line in meta.decode().splitlines() if line.startswith("Requires-Dist:")
    ]
    assert packages == {"tokenbridge_client"}
    assert sorted(Requirement(line).name for line in requires) == ["httpx", "orjson"]
    assert "tokenbridge_client/py.typed" in names


def _skip_unless_buildable_here() -> None:
    """Skips when this machine cannot clone and build the client without an index (no git, an old setuptools)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: pip cannot install from a git URL here")
    build = tomllib.loads((DISTRIBUTION / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, build):
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = "none"
        if installed == "none" or not requirement.specifier.contains(installed, prereleases=True):
            pytest.skip(f"clients/python builds with {requirement}, this environment has {installed} (make install)")


def _repository_of(distribution: Path, repo: Path) -> str:
    """A git repository with the working tree's copy of ``distribution`` committed at the same path; its HEAD."""
    target = repo / distribution.relative_to(ROOT)
    shutil.copytree(distribution, target, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    identity = ["-c", "user.name=tokenbridge tests", "-c", "user.email=tests@tokenbridge.invalid"]
    for command in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "--message", "the client"]):
        subprocess.run(["git", *identity, *command], cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return head.stdout.strip()


@pytest.mark.slow
def test_the_documented_pip_line_installs_the_client_from_the_repository(tmp_path: Path) -> None:
    _skip_unless_buildable_here()
    # Given the pip line of docs/clients.md, pointed at a git repository holding this checkout's clients/python
    (documented,) = PIP_FROM_GIT.finditer((ROOT / "docs" / "clients.md").read_text())
    repo = tmp_path / "tokenbridge"
    commit = _repository_of(DISTRIBUTION, repo)
    line = documented[0].replace(documented["url"], repo.as_uri())
    # And a fresh virtual environment that already has httpx, orjson and setuptools (there is no index to reach)
    python, site = _fresh_venv(tmp_path / "venv")
    _install_dependencies(site, ["httpx", "orjson", "setuptools"])
    # When pip runs that line there
    offline = ["--no-index", "--no-build-isolation", "--disable-pip-version-check"]
    pip = [sys.executable, "-m", "pip", "--python", str(python), *shlex.split(line)[1:], *offline]
    install = subprocess.run(pip, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    # Then the client is installed from that commit's clients/python, with the version and requirements it declares
    run = subprocess.run([python, "-I", "-c", INSTALLED], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    installed = json.loads(run.stdout)
    declared = tomllib.loads((DISTRIBUTION / "pyproject.toml").read_text())["project"]
    assert Path(installed["module"]).is_relative_to(site)
    assert installed["version"] == installed["__version__"] == declared["version"]
    assert sorted(installed["requires"]) == sorted(declared["dependencies"])
    assert installed["direct_url"] == {
        "url": repo.as_uri(),
        "vcs_info": {"vcs": "git", "commit_id": commit},
        "subdirectory": "clients/python",
    }
