// The package's prepack step (npm pack, npm publish): copies the browser client that tokenbridge's `web` serves
// from app/static into dist/, and the repository's LICENSE beside package.json. One source; the copies are ignored.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

const root = new URL("../../", import.meta.url);
const dist = new URL("dist/", import.meta.url);
const FILES = ["tokenbridge.js", "tokenbridge.mjs", "tokenbridge.d.ts", "tokenbridge.d.mts"];

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
for (const name of FILES) copyFileSync(new URL(`app/static/${name}`, root), new URL(name, dist));
copyFileSync(new URL("LICENSE", root), new URL("LICENSE", import.meta.url));
