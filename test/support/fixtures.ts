// Test checkpoints written once per test file into a temporary folder (also the span cache).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { PRESETS, writeGgufTestModel, writeHfTestModel, type GgufWriteOptions } from "../../src/model/fixtures.js";

export const workDir = mkdtempSync(join(tmpdir(), "tessera-test-"));
process.env.TESSERA_CACHE = join(workDir, "cache");
// The reputation ledger of every client a test runs.
process.env.TESSERA_HOME = join(workDir, "home");
after(() => rmSync(workDir, { recursive: true, force: true }));

const written = new Map<string, Promise<string>>();

/** A Hugging Face folder of a preset (F32 unless asked). */
export function hfModel(preset: string, dtype: "F32" | "F16" | "BF16" = "F32", maxShardBytes?: number): Promise<string> {
  const dir = join(workDir, `${preset}-hf-${dtype}${maxShardBytes ? `-sharded` : ""}`);
  return once(dir, () => writeHfTestModel(dir, PRESETS[preset]!, { dtype, maxShardBytes }));
}

/** The GGUF conversion of the same weights. */
export function ggufModel(preset: string, dtype: GgufWriteOptions["dtype"] = "F32"): Promise<string> {
  const file = join(workDir, `${preset}-${dtype}.gguf`);
  return once(file, () => writeGgufTestModel(file, PRESETS[preset]!, { dtype }));
}

function once(path: string, write: () => Promise<void>): Promise<string> {
  let p = written.get(path);
  if (!p) {
    p = write().then(() => path);
    written.set(path, p);
  }
  return p;
}

/** A fixed, varied token sequence inside the vocabulary. */
export function sampleTokens(count: number, vocabSize: number, seed = 1): number[] {
  let s = seed;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % (vocabSize - 8);
  });
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
