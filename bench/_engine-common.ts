// Helpers shared by bench/engine.ts (the orchestrator) and bench/engine-worker.ts (its child processes).
import { readFileSync } from "node:fs";
import cliProgress from "cli-progress";
import { expectedShapes } from "../src/model/config.js";
import { fixtureConfig, type TestModelSpec } from "../src/model/fixtures.js";
import type { WeightFormat } from "../src/engine/weights.js";

/** Children print their result as one line starting with this marker. */
export const RESULT_MARKER = "@@BENCH_RESULT ";

export function emitResult(value: unknown): void {
  process.stdout.write(`${RESULT_MARKER}${JSON.stringify(value)}\n`);
}

/** A fixed, varied token sequence inside the vocabulary (same generator as the tests' sampleTokens). */
export function benchTokens(count: number, vocabSize: number, seed = 1): number[] {
  let s = seed;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % (vocabSize - 8);
  });
}

/** Peak and current resident set of this process, in bytes (Linux /proc). */
export function memoryStatus(): { peakRssBytes: number; rssBytes: number } {
  const status = readFileSync("/proc/self/status", "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
  return { peakRssBytes: kb("VmHWM"), rssBytes: kb("VmRSS") };
}

/** System-wide busy CPU time (/proc/stat) and this process's own CPU time, to see who else ran during a measurement. */
export interface CpuSnapshot {
  busyJiffies: number;
  stealJiffies: number;
  own: NodeJS.CpuUsage;
  at: number;
}

export function cpuSnapshot(): CpuSnapshot {
  const v = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal …
  return { busyJiffies: v[0]! + v[1]! + v[2]! + v[5]! + v[6]! + v[7]!, stealJiffies: v[7]!, own: process.cpuUsage(), at: Date.now() };
}

/** CPU seconds used by this process and by everything else between two snapshots (USER_HZ = 100). */
export function cpuBetween(a: CpuSnapshot, b: CpuSnapshot, cores: number) {
  const wall = (b.at - a.at) / 1000;
  const own = (b.own.user - a.own.user + b.own.system - a.own.system) / 1e6;
  const others = Math.max(0, (b.busyJiffies - a.busyJiffies) / 100 - own);
  return {
    wall_s: wall,
    own_cpu_s: own,
    others_cpu_s: others,
    others_cpu_share: wall > 0 ? others / (wall * cores) : 0,
    steal_s: (b.stealJiffies - a.stealJiffies) / 100,
  };
}

/** A progress display: a cli-progress bar on a terminal, otherwise a line every 10%. */
export function progress(label: string, total: number, unit: "count" | "bytes" = "count") {
  const fmt = (v: number) => (unit === "bytes" ? `${(v / 2 ** 20).toFixed(0)} MiB` : String(v));
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {percentage}% | {shown}`,
        stream: process.stderr,
        clearOnComplete: false,
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { shown: `${fmt(0)}/${fmt(total)}` });
    return {
      update(v: number) {
        bar.update(Math.min(v, total), { shown: `${fmt(v)}/${fmt(total)}` });
      },
      stop() {
        bar.stop();
      },
    };
  }
  let lastDecile = -1;
  const start = Date.now();
  return {
    update(v: number) {
      const decile = Math.floor((10 * Math.min(v, total)) / total);
      if (decile > lastDecile) {
        lastDecile = decile;
        process.stderr.write(`  ${label}: ${decile * 10}% (${fmt(v)}/${fmt(total)}, ${((Date.now() - start) / 1000).toFixed(0)} s)\n`);
      }
    },
    stop() {},
  };
}

// ------------------------------------------------------------------ byte accounting

export type GgufDType = "F32" | "F16" | "Q8_0" | "Q4_0";
/** The GGUF file each engine format runs on (ours and llama.cpp's). */
export const GGUF_DTYPE: Record<WeightFormat, GgufDType> = { f32: "F32", f16: "F16", q8: "Q8_0", q4: "Q4_0" };

export function modelShapes(spec: TestModelSpec): Map<string, number[]> {
  return expectedShapes(fixtureConfig(spec));
}

export function parameterCount(spec: TestModelSpec): number {
  let n = 0;
  for (const shape of modelShapes(spec).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/** Bytes of one GGUF tensor as the fixture writer stores it (1-D stays F32; quantized rows need K % 32 == 0, else F16). */
function ggufTensorBytes(shape: number[], dtype: GgufDType): number {
  const n = shape.reduce((a, b) => a * b, 1);
  if (shape.length < 2 || dtype === "F32") return 4 * n;
  if (dtype === "F16" || shape[shape.length - 1]! % 32 !== 0) return 2 * n;
  return dtype === "Q8_0" ? (n / 32) * 34 : (n / 32) * 18;
}

/** Expected size of the GGUF file's tensor data (for progress; the header adds a little). */
export function ggufDataBytes(spec: TestModelSpec, dtype: GgufDType): number {
  let total = 0;
  for (const shape of modelShapes(spec).values()) total += Math.ceil(ggufTensorBytes(shape, dtype) / 32) * 32;
  return total;
}

/** safetensors data bytes of the HF folder for a 16-bit dtype. */
export function hfDataBytes(spec: TestModelSpec, bytesPerElem: number): number {
  return parameterCount(spec) * bytesPerElem;
}

const isEmbedding = (name: string) => name.startsWith("token_embd") || name.startsWith("position_embd");

/**
 * Weight bytes Tessera streams per decoded token for an engine format: every projection as its
 * MatMul initializer (f32 or f16 [K, N]) or MatMulNBits weights (N·K·bits/8) + f32 scales (one per
 * 32-block), plus the f32 norms. The embedding table is only gathered (one row), so it is left
 * out; a tied head reads the embedding as a projection and counts.
 */
export function tesseraStreamedBytes(spec: TestModelSpec, format: WeightFormat): number {
  const c = fixtureConfig(spec);
  let total = 0;
  const linear = (rows: number, K: number) => {
    if (format === "f16") return 2 * rows * K;
    if (format === "f32" || K % 32 !== 0) return 4 * rows * K;
    const bits = format === "q8" ? 8 : 4;
    return (rows * K * bits) / 8 + ((rows * K) / 32) * 4;
  };
  for (const [name, shape] of modelShapes(spec)) {
    if (isEmbedding(name)) continue;
    total += shape.length === 2 ? linear(shape[0]!, shape[1]!) : 4 * shape[0]!;
  }
  if (c.tieWordEmbeddings) {
    const [rows, K] = modelShapes(spec).get("token_embd.weight")!;
    total += linear(rows!, K!);
  }
  return total;
}

/** Bytes Tessera's KV cache takes for a session of maxLength positions (f32 K and V per layer). */
export function tesseraKvBytes(spec: TestModelSpec, maxLength: number): number {
  const c = fixtureConfig(spec);
  return 2 * c.numLayers * c.numKvHeads * c.headDim * maxLength * 4;
}

/** Same for llama.cpp's default F16 KV cache. */
export function llamaKvBytes(spec: TestModelSpec, contextSize: number): number {
  return tesseraKvBytes(spec, contextSize) / 2;
}

/** KV cache bytes one decode step at `position` reads (all earlier positions, K and V, all layers). */
export function kvReadBytes(spec: TestModelSpec, position: number, bytesPerElem: number): number {
  const c = fixtureConfig(spec);
  return 2 * c.numLayers * c.numKvHeads * c.headDim * position * bytesPerElem;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
