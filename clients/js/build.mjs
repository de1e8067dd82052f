// The package's prepack step (npm pack, npm publish): puts the browser client that tokenbridge's `web` serves into
// dist/ (the plain script and the types from app/static, and the ES module made from the script as web makes it,
// see app/client_module.py), and the repository's LICENSE beside package.json. One source; the copies are ignored.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

const root = new URL("../../", import.meta.url);
const dist = new URL("dist/", import.meta.url);
const COPIED = ["tokenbridge.js", "tokenbridge.d.ts", "tokenbridge.d.mts"];

const MODULE_HEADER = `/**
 * tokenbridge.mjs: tokenbridge.js as an ES module (made from it; types in tokenbridge.d.mts).
 *
 *     import { stream, socket } from "./tokenbridge.mjs";
 */
`;
const SCRIPT_START = '(function (global) {\n  "use strict";\n';
const SCRIPT_END = '  global.Tokenbridge = { stream: stream, socket: socket, version: "1" };\n})(window);\n';
const MODULE_END = 'export { socket, stream };\nexport const version = "1";\n';

/** The body of the script's wrapper, at the top level of a module that exports what the script assigns. */
function moduleFromScript(text) {
  const start = text.indexOf(SCRIPT_START);
  const end = text.lastIndexOf(SCRIPT_END);
  if (start < 0 || end < 0 || !text.endsWith(SCRIPT_END)) {
    throw new Error("tokenbridge.js no longer has the wrapper its module is made from");
  }
  const body = text.slice(start + SCRIPT_START.length, end);
  const lines = body.split(/(?<=\n)/).map((line) => (line.startsWith("  ") ? line.slice(2) : line));
  return MODULE_HEADER + "const global = globalThis;\n" + lines.join("") + MODULE_END;
}

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
for (const name of COPIED) copyFileSync(new URL(`app/static/${name}`, root), new URL(name, dist));
const script = readFileSync(new URL("app/static/tokenbridge.js", root), "utf8");
writeFileSync(new URL("tokenbridge.mjs", dist), moduleFromScript(script));
copyFileSync(new URL("LICENSE", root), new URL("LICENSE", import.meta.url));
