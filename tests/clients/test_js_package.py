"""tokenbridge-client for npm (clients/js): `npm pack` ships the files `web` serves, and an app imports it by name."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.client_module import module
from tests.support.procfile import ROOT

PACKAGE = ROOT / "clients" / "js"
STATIC = ROOT / "app" / "static"
SHIPPED = ("tokenbridge.d.mts", "tokenbridge.d.ts", "tokenbridge.js", "tokenbridge.mjs")
# The one-line install docs/clients.md gives: the package packed from a checkout, installed in the front end.
NPM_FROM_CHECKOUT = re.compile(r'^npm install "\$\(npm pack (?P<checkout>\S+)/clients/js --silent\)"', re.M)

# Runs in an app that installed the tarball: what the package's name and its script subpath resolve to.
IMPORT = """
import * as client from "tokenbridge-client";
console.log(JSON.stringify({
  names: Object.keys(client).sort(),
  types: [typeof client.stream, typeof client.socket, client.version],
  script: import.meta.resolve("tokenbridge-client/script"),
}));
"""

# Typed through the package's `types` condition: with no types found, --strict refuses the import itself.
TYPED_USE = """
import { socket, stream, version, type TokenbridgeHandle } from "tokenbridge-client";

const reader: TokenbridgeHandle = stream({
  eventsUrl: "/v1/generations/gen_1/events",
  token: "t",
  onToken: (content, event, handle) => console.log(content.length, event.id, handle.text),
});
reader.close();
socket({ wsUrl: "/v1/generations/gen_1/ws" });
const name: string = version;
// @ts-expect-error: a reader needs eventsUrl
stream({ token: "t" });
"""


def _version(pyproject: Path) -> str:
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def _targets(exports: Any) -> Iterator[str]:
    """Every file an `exports` map points at, through its conditions."""
    if isinstance(exports, str):
        yield exports
    else:
        for value in exports.values():
            yield from _targets(value)


def test_the_clients_carry_the_project_version() -> None:
    project = _version(ROOT / "pyproject.toml")
    assert json.loads((PACKAGE / "package.json").read_text())["version"] == project
    assert _version(ROOT / "clients" / "python" / "pyproject.toml") == project


@pytest.fixture(scope="module")
def npm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment npm runs in here: a cache of its own, offline (nothing here needs a registry)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the JS client's package is not checked")
    config = {"cache": str(tmp_path_factory.mktemp("npm-cache")), "offline": "true", "update_notifier": "false"}
    return {**os.environ, **{f"npm_config_{name}": value for name, value in config.items()}}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the package is made of, copied at the paths it has in the repository (packing writes next to it)."""
    checkout = tmp_path_factory.mktemp("checkout")
    shutil.copytree(PACKAGE, checkout / "clients" / "js", ignore=shutil.ignore_patterns("dist", "LICENSE", "*.tgz"))
    (checkout / "app" / "static").mkdir(parents=True)
    for name in SHIPPED:
        if (STATIC / name).exists():  # the module is made from the script, by web and by the package's build
            shutil.copy2(STATIC / name, checkout / "app" / "static" / name)
    shutil.copy2(ROOT / "LICENSE", checkout / "LICENSE")
    return checkout


@pytest.fixture(scope="module")
def tarball(npm: dict[str, str], checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    destination = tmp_path_factory.mktemp("packed")
    pack = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(destination)],
        cwd=checkout / "clients" / "js",
        env=npm,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pack.returncode == 0, pack.stderr
    (packed,) = json.loads(pack.stdout)
    filename: str = packed["filename"]
    return destination / filename


@pytest.fixture(scope="module")
def app(npm: dict[str, str], checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A front end that ran the npm line of docs/clients.md, pointed at the checkout."""
    (documented,) = NPM_FROM_CHECKOUT.finditer((ROOT / "docs" / "clients.md").read_text())
    project = tmp_path_factory.mktemp("front-end")
    (project / "package.json").write_text(json.dumps({"private": True, "type": "module"}))
    line = documented[0].replace(documented["checkout"], str(checkout))
    install = subprocess.run(["sh", "-c", line], cwd=project, env=npm, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    return project


@pytest.mark.slow
def test_the_tarball_ships_what_web_serves(tarball: Path) -> None:
    with tarfile.open(tarball) as archive:
        files = {member.name.removeprefix("package/"): archive.extractfile(member) for member in archive}
        contents = {name: file.read() for name, file in files.items() if file is not None}
    manifest = json.loads(contents["package.json"])
    # The files web serves, byte for byte, with the repository's licence
    assert {name for name in contents if name.startswith("dist/")} == {f"dist/{name}" for name in SHIPPED}
    served = {name: (STATIC / name).read_bytes() for name in SHIPPED if name != "tokenbridge.mjs"}
    served["tokenbridge.mjs"] = module()[0].encode()
    for name in SHIPPED:
        assert contents[f"dist/{name}"] == served[name], name
    assert contents["LICENSE"] == (ROOT / "LICENSE").read_bytes()
    assert manifest["license"] == "MIT"
    # An ES module with its types, and no dependency to fetch
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./dist/tokenbridge.d.mts", "import": "./dist/tokenbridge.mjs"}
    assert "dependencies" not in manifest
    # Every file the manifest names is in the tarball
    for target in [*_targets(manifest["exports"]), manifest["types"]]:
        assert target.removeprefix("./") in contents, target


@pytest.mark.slow
def test_an_app_imports_the_installed_package_by_name(app: Path) -> None:
    run = subprocess.run(
        ["node", "--input-type=module", "-e", IMPORT], cwd=app, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    imported = json.loads(run.stdout)
    assert imported["names"] == ["socket", "stream", "version"]
    assert imported["types"] == ["function", "function", "1"]
    assert imported["script"] == (app / "node_modules" / "tokenbridge-client" / "dist" / "tokenbridge.js").as_uri()


@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["bundler", "node16"])
def test_typescript_types_the_installed_package(tsc: Path, app: Path, resolution: str) -> None:
    (app / "use.mts").write_text(TYPED_USE)
    module = "esnext" if resolution == "bundler" else resolution
    options = ["--strict", "--noEmit", "--target", "es2020", "--lib", "es2020,dom"]
    check = subprocess.run(
        [tsc, *options, "--module", module, "--moduleResolution", resolution, "use.mts"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout
