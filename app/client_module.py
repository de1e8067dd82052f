"""The browser client as an ES module, made from its one source, the plain script ``app/static/tokenbridge.js``.

``web`` serves it at ``/static/tokenbridge.mjs`` (made once, when first asked for); the npm package's build
(``clients/js/build.mjs``) makes the same file the same way, and a test holds the two to each other. The module is
the body of the script's wrapper at the top level, exporting what the script puts on ``window.Tokenbridge``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

SCRIPT = Path(__file__).parent / "static" / "tokenbridge.js"

MODULE_HEADER = """\
/**
 * tokenbridge.mjs: tokenbridge.js as an ES module (made from it; types in tokenbridge.d.mts).
 *
 *     import { stream, socket } from "./tokenbridge.mjs";
 */
"""
SCRIPT_START = '(function (global) {\n  "use strict";\n'
SCRIPT_END = '  global.Tokenbridge = { stream: stream, socket: socket, version: "1" };\n})(window);\n'
MODULE_END = 'export { socket, stream };\nexport const version = "1";\n'


def module_from_script(text: str) -> str:
    """The body of the script's wrapper, at the top level of a module that exports what the script assigns."""
    start, end = text.find(SCRIPT_START), text.rfind(SCRIPT_END)
    if start < 0 or end < 0 or not text.endswith(SCRIPT_END):
        raise ValueError("tokenbridge.js no longer has the wrapper its module is made from")
    body = text[start + len(SCRIPT_START) : end]
    lines = [line.removeprefix("  ") for line in body.splitlines(keepends=True)]
    # Modules are strict by themselves; `global` stays the name the script's code uses for window.
    return MODULE_HEADER + "const global = globalThis;\n" + "".join(lines) + MODULE_END


@cache
def module() -> tuple[str, str]:
    """The module's text and its entity tag."""
    text = module_from_script(SCRIPT.read_text())
    return text, hashlib.sha256(text.encode()).hexdigest()[:32]
