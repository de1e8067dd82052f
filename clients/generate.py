"""Writes the ES module of the browser client, ``app/static/tokenbridge.mjs``, from ``app/static/tokenbridge.js``,
the plain script. (The Python client has one source, ``clients/python``: the server's command line imports it.)

Run it after editing the script: ``python clients/generate.py``. ``--check`` exits with 1 and names a stale copy
instead of writing it (a test runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "app" / "static"

MODULE_HEADER = """\
/**
 * tokenbridge.mjs: the browser client for tokenbridge generation streams as an ES module. The same code as
 * tokenbridge.js (the plain script that defines window.Tokenbridge), generated from it by clients/generate.py;
 * types in tokenbridge.d.ts.
 *
 *     import { stream, socket } from "./tokenbridge.mjs";   // your copy, or your bundler's import
 *     const reader = stream({
 *       eventsUrl: "https://tokenbridge.example.com" + created.events_url,   // from POST /v1/generations
 *       token: created.stream_token,
 *       onToken: (content, event, handle) => { answer.textContent = handle.text; },
 *     });
 *
 * Everything tokenbridge.js documents holds here.
 */
"""
SCRIPT_START = '(function (global) {\n  "use strict";\n'
SCRIPT_END = '  global.Tokenbridge = { stream: stream, socket: socket, version: "1" };\n})(window);\n'
MODULE_END = 'export { socket, stream };\nexport const version = "1";\n'


def module_copy(script: Path) -> str:
    """The body of the script's IIFE, at the top level of a module that exports what the script assigns."""
    text = script.read_text()
    start, end = text.find(SCRIPT_START), text.rfind(SCRIPT_END)
    if start < 0 or end < 0 or not text.endswith(SCRIPT_END):
        raise SystemExit(f"{script.relative_to(ROOT)} no longer has the wrapper clients/generate.py expects")
    body = text[start + len(SCRIPT_START) : end]
    lines = [line.removeprefix("  ") for line in body.splitlines(keepends=True)]
    # Modules are strict by themselves; `global` stays the name the script's code uses for window.
    return MODULE_HEADER + "const global = globalThis;\n" + "".join(lines) + MODULE_END


def outputs() -> dict[Path, str]:
    return {
        STATIC / "tokenbridge.mjs": module_copy(STATIC / "tokenbridge.js"),
    }


def main(argv: list[str]) -> int:
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python clients/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
