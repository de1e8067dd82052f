"""The version is written once, in pyproject.toml, and shown by ``tokenbridge --version``, /healthz and the
dashboard; CHANGELOG.md and docs/releases.md keep up with it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from bridge import version
from bridge.layout import LAYOUT_VERSION
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(Settings(auth_disabled=True, redis_url="redis://127.0.0.1:1"))


def test_the_version_is_pyproject_s() -> None:
    assert PROJECT["version"] == version.VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", version.VERSION)


def test_a_checkout_that_was_never_installed_reads_its_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the distribution is not installed (a PaaS installs requirements.txt only)
    monkeypatch.setattr(version, "version", _not_installed)
    # Then the version is the pyproject.toml's beside the code, if it is tokenbridge's
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "tokenbridge"\nversion = "9.8.7"\n')
    assert version.read_version("tokenbridge", pyproject) == "9.8.7"
    pyproject.write_text('[project]\nname = "another"\nversion = "1.0.0"\n')
    assert version.read_version("tokenbridge", pyproject) == "unknown"
    assert version.read_version("tokenbridge", tmp_path / "missing.toml") == "unknown"


def _not_installed(distribution: str) -> str:
    raise PackageNotFoundError(distribution)


def test_healthz_answers_the_version(app: Flask) -> None:
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok", "version": PROJECT["version"]}


def test_the_dashboard_shows_the_version(app: Flask) -> None:
    page = app.test_client().get("/dashboard").get_data(as_text=True)
    assert f'<small class="version" id="version" title="tokenbridge version">{PROJECT["version"]}</small>' in page


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert releases[0] == "Unreleased"
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", name) for name in releases[1:])
    headings = set(re.findall(r"^### (\w+)$", text, re.M))
    assert headings and headings <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert "keepachangelog.com" in text and "semver.org" in text


def test_the_release_notes_name_the_current_redis_layout() -> None:
    text = (ROOT / "docs" / "releases.md").read_text(encoding="utf-8")
    assert "## Upgrading the Redis layout" in text
    assert re.search(rf"^\| {LAYOUT_VERSION} \|", text, re.M), "docs/releases.md lists every layout version"
