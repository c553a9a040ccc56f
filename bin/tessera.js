#!/usr/bin/env node
// The `tessera` command: the compiled CLI in dist/, which `npm run build` writes (`npm install`
// and `npm ci` run it as `prepare`). In a checkout, to run the TypeScript sources without
// building: `npm run tessera -- <command>` (node --import tsx src/cli/main.ts).
import { existsSync } from "node:fs";

const main = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error("tessera: dist/cli/main.js is missing; run `npm run build` first (or `npm run tessera -- <command>` to run the sources)");
  process.exit(1);
}
await import(main.href);
