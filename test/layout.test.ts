// The layout is the architecture: dependencies point one way (model → engine → wire/ee/verify → swarm → cli),
// and the swarm and EE see the engine only through its interface module, never ONNX Runtime.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";

const SRC = join(import.meta.dirname, "..", "src");

/** Top-level modules every area may use. */
const SHARED = ["log", "canonical-json", "gc"];

/** What each area may import (besides itself and the SHARED modules). */
const ALLOWED: Record<string, string[]> = {
  model: [],
  engine: ["model"],
  wire: ["model"],
  ee: ["model", "engine/interface"],
  verify: ["model", "engine/interface"],
  swarm: ["model", "wire", "ee", "verify", "engine/interface"],
  cli: ["model", "engine", "wire", "ee", "swarm", "verify"],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    return e.isDirectory() ? sources(path) : e.name.endsWith(".ts") ? [path] : [];
  });
}

/** Every relative import of `file`, as a path under src without extension. */
function imports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)].map((m) => relative(SRC, join(dirname(file), m[1]!)).replace(/\.js$/, ""));
}

test("each area imports only the areas below it; swarm and ee reach the engine only through engine/interface", () => {
  const violations: string[] = [];
  for (const file of sources(SRC)) {
    const from = relative(SRC, file);
    const area = from.split("/")[0]!;
    const allowed = ALLOWED[area];
    if (!allowed) continue; // index.ts and the SHARED modules
    for (const target of imports(file)) {
      const targetArea = target.split("/")[0]!;
      if (targetArea === area || SHARED.includes(target)) continue;
      if (!allowed.some((a) => target === a || target.startsWith(`${a}/`))) violations.push(`${from} → ${target}`);
    }
  }
  assert.deepEqual(violations, []);
});

test("only the engine's runtime touches ONNX Runtime", () => {
  const users = sources(SRC)
    .filter((f) => /from "onnxruntime-node"/.test(readFileSync(f, "utf8")))
    .map((f) => relative(SRC, f))
    .sort();
  assert.deepEqual(users, ["engine/runtime.ts", "engine/span-model.ts"]);
});
