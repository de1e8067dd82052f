// Types of tokenbridge.mjs: those of tokenbridge.d.ts.
export * from "./tokenbridge.js";
