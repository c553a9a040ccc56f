// Builds (or reuses from the cache) the ONNX model of a span and opens it on ONNX Runtime.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import type { Checkpoint } from "../model/checkpoint.js";
import { ExternalWeights, GraphBuilder } from "./onnx-builder.js";
import { buildSpanGraph, type SpanSpec } from "./span-graph.js";
import type { WeightFormat } from "./weights.js";

/** Bumped whenever the graph layout changes, so stale cached models are not reused. */
const GRAPH_VERSION = 3;

export interface SpanModelOptions {
  format: WeightFormat;
  /** Longest sequence (prompt + generated) the span's rotary tables cover. */
  maxSequence: number;
  /** Intra-op threads; default: ORT's choice (all cores). */
  threads?: number;
  /** Where built models are cached; default $TESSERA_CACHE or ~/.cache/tessera. */
  cacheDir?: string;
  /** Called as each checkpoint tensor is read while a span model is built. */
  onTensorRead?: (name: string) => void;
}

export interface SpanModel {
  session: ort.InferenceSession;
  span: SpanSpec;
  options: SpanModelOptions;
  /** Folder holding model.onnx and its weights file. */
  dir: string;
}

export function defaultCacheDir(): string {
  return process.env.TESSERA_CACHE ?? join(homedir(), ".cache", "tessera");
}

export async function loadSpanModel(checkpoint: Checkpoint, span: SpanSpec, options: SpanModelOptions): Promise<SpanModel> {
  const dir = join(options.cacheDir ?? defaultCacheDir(), "spans", spanKey(checkpoint, span, options));
  const modelPath = join(dir, "model.onnx");
  if (!existsSync(modelPath)) await buildInto(dir, checkpoint, span, options);
  const session = await ort.InferenceSession.create(modelPath, sessionOptions(options));
  return { session, span, options, dir };
}

function sessionOptions(options: SpanModelOptions): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
    intraOpNumThreads: options.threads ?? 0,
    interOpNumThreads: 1,
    executionMode: "sequential",
    enableCpuMemArena: true,
    enableMemPattern: false,
    // ORT's pool threads spin after each run by default. With several span sessions in one
    // process, or anything else on the cores, the spinning threads starve the working ones:
    // measured on the 0.6B q4 model, 2 cores, 20 chained spans: 533 → 33 ms/token, one span:
    // 44 → 29 ms/token (with another process busy on the machine).
    extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
  };
}

/** Builds into a temporary folder and renames it, so a crash never leaves a half-built cache entry. */
async function buildInto(dir: string, checkpoint: Checkpoint, span: SpanSpec, options: SpanModelOptions): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  const weights = new ExternalWeights(join(tmp, "weights.bin"), "weights.bin");
  try {
    const g = new GraphBuilder(weights);
    await buildSpanGraph(g, checkpoint, span, options.format, options.maxSequence, options.onTensorRead);
    writeFileSync(join(tmp, "model.onnx"), g.encode());
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    weights.close();
  }
  if (existsSync(dir)) rmSync(tmp, { recursive: true, force: true });
  else renameSync(tmp, dir);
}

function spanKey(checkpoint: Checkpoint, span: SpanSpec, options: SpanModelOptions): string {
  const identity = JSON.stringify({
    v: GRAPH_VERSION,
    files: checkpoint.files.map((f) => {
      const st = statSync(f);
      return [f, st.size, st.mtimeMs];
    }),
    span,
    format: options.format,
    platform: process.arch,
    maxSequence: options.maxSequence,
    config: checkpoint.config,
  });
  return createHash("sha256").update(identity).digest("hex").slice(0, 24);
}
