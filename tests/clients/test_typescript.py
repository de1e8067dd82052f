"""tokenbridge.d.ts describes the JS client: code that uses it right compiles with tsc --strict, wrong code does not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.client_module import module
from tests.support.procfile import ROOT

pytestmark = pytest.mark.slow

STATIC = ROOT / "app" / "static"
FILES = ("tokenbridge.js", "tokenbridge.mjs", "tokenbridge.d.ts", "tokenbridge.d.mts")

MODULE_USE = """
import { socket, stream, version, type TokenbridgeHandle } from "./tokenbridge.mjs";

const reader: TokenbridgeHandle = stream({
  eventsUrl: "/v1/generations/gen_1/events",
  token: "t",
  refreshToken: async () => ({ stream_token: "fresh" }),
  onToken: (content, event, handle) => console.log(content.length, event.id, handle.text),
  onDone: (event) => console.log(event.data.usage),
  onError: (error) => console.warn(error.code, error.status, error.fatal),
  onStatus: (status) => console.log(status === "done"),
});
reader.cancel().then(() => reader.close());
socket({ wsUrl: "/v1/generations/gen_1/ws", refreshToken: () => "fresh" });
const name: string = version;
"""

SCRIPT_USE = """/// <reference path="./tokenbridge.d.ts" />
const handle: Tokenbridge.TokenbridgeHandle = Tokenbridge.stream({ eventsUrl: "/x", lastEventId: "1-0", text: "" });
handle.close();
"""

WRONG_USE = """
import { socket, stream } from "./tokenbridge.mjs";
stream({ token: "t" });
stream({ eventsUrl: "/x", onToken: (content: number) => content });
socket({ wsUrl: "/x" }).text = "mine";
"""

MODES = (
    ["--module", "esnext", "--moduleResolution", "bundler"],
    ["--module", "node16", "--moduleResolution", "node16"],
)


def _compile(tsc: Path, directory: Path, files: list[str], mode: list[str]) -> subprocess.CompletedProcess[str]:
    options = ["--strict", "--noEmit", "--target", "es2020", "--lib", "es2020,dom", *mode]
    return subprocess.run([tsc, *options, *files], cwd=directory, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", MODES, ids=["bundler", "node16"])
def test_the_declarations_type_the_module_and_the_script(tsc: Path, tmp_path: Path, mode: list[str]) -> None:
    for name in FILES:
        if name == "tokenbridge.mjs":
            (tmp_path / name).write_text(module()[0])  # made from the script, as web serves it
        else:
            shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "module_use.mts").write_text(MODULE_USE)
    (tmp_path / "script_use.ts").write_text(SCRIPT_USE)
    (tmp_path / "wrong_use.mts").write_text(WRONG_USE)
    # Code that uses the module as documented compiles
    right = _compile(tsc, tmp_path, ["module_use.mts"], mode)
    assert right.returncode == 0, right.stdout
    # And so does a plain script that uses the window.Tokenbridge global
    script = _compile(tsc, tmp_path, ["script_use.ts"], MODES[0])
    assert script.returncode == 0, script.stdout
    # And each misuse is an error
    wrong = _compile(tsc, tmp_path, ["wrong_use.mts"], mode)
    assert [line.split(":")[0] for line in wrong.stdout.splitlines() if "error TS" in line] == [
        "wrong_use.mts(3,8)",
        "wrong_use.mts(4,27)",
        "wrong_use.mts(5,25)",
    ], wrong.stdout
