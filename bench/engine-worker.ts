// Child process of bench/engine.ts: one job per process, so each engine's peak RSS is its own.
//   node --import tsx bench/engine-worker.ts <job> '<json args>'
// Prints its result as one line `@@BENCH_RESULT {json}` on stdout; logs go to stderr.
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { PRESETS, writeGgufTestModel, writeHfTestModel } from "../src/model/fixtures.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import type { WeightFormat } from "../src/engine/weights.js";
import { cpus } from "node:os";
import { benchTokens, cpuBetween, cpuSnapshot, emitResult, memoryStatus, progress, type GgufDType } from "./_engine-common.js";

const now = () => performance.now();

interface MakeArgs {
  path: string;
  preset: string;
  dtype: GgufDType | "BF16";
}

async function make(a: MakeArgs): Promise<unknown> {
  const spec = PRESETS[a.preset]!;
  const t0 = now();
  if (a.dtype === "BF16") await writeHfTestModel(a.path, spec, { dtype: "BF16" });
  else await writeGgufTestModel(a.path, spec, { dtype: a.dtype });
  return { ms: now() - t0 };
}

// ------------------------------------------------------------------ memory bandwidth

/**
 * Memory bandwidth over `mib` MiB buffers, one thread and `threads` worker threads (each with its
 * own share): copy = Buffer.copy (memmove), counted as read + write = 2 × size; read = equals() of
 * two identical buffers (memcmp), counted as 2 × size read.
 */
async function bandwidth(a: { mib: number; iters: number; threads: number }): Promise<unknown> {
  const size = a.mib * 2 ** 20;
  const code = `
    const { parentPort, workerData } = require("node:worker_threads");
    const { performance } = require("node:perf_hooks");
    const src = Buffer.alloc(workerData, 7), dst = Buffer.alloc(workerData, 0);
    src.copy(dst); // touched, so page faults stay out of the timing
    parentPort.on("message", (m) => {
      if (m === "stop") return process.exit(0);
      const t0 = performance.timeOrigin + performance.now();
      if (m === "copy") src.copy(dst);
      else if (!src.equals(dst)) throw new Error("buffers differ");
      parentPort.postMessage([t0, performance.timeOrigin + performance.now()]);
    });
    parentPort.postMessage("ready");`;
  const measure = async (threads: number) => {
    const share = Math.floor(size / threads);
    const workers = Array.from({ length: threads }, () => new Worker(code, { eval: true, workerData: share }));
    const next = (w: Worker) =>
      new Promise<unknown>((resolve, reject) => {
        w.once("message", resolve);
        w.once("error", reject);
      });
    await Promise.all(workers.map(next));
    const out: Record<"copy" | "read", number[]> = { copy: [], read: [] };
    for (let i = 0; i < a.iters; i++) {
      for (const kind of ["copy", "read"] as const) {
        const replies = workers.map(next);
        for (const w of workers) w.postMessage(kind);
        const spans = (await Promise.all(replies)) as [number, number][];
        const wall = Math.max(...spans.map((s) => s[1])) - Math.min(...spans.map((s) => s[0]));
        out[kind].push((2 * share * threads) / (wall / 1000) / 1e9);
      }
    }
    for (const w of workers) w.postMessage("stop");
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once("exit", resolve))));
    return out;
  };
  const one = await measure(1);
  const many = await measure(a.threads);
  return {
    single_thread_copy_gbs: one.copy,
    single_thread_read_gbs: one.read,
    multi_thread_copy_gbs: many.copy,
    multi_thread_read_gbs: many.read,
    threads: a.threads,
    buffer_bytes: size,
  };
}

// ------------------------------------------------------------------ Tessera

interface TesseraArgs {
  model: string;
  format: WeightFormat;
  cacheDir: string;
  maxSequence: number;
  threads: number;
  prompt: number;
  decode: number;
  vocabSize: number;
}

async function loadPipeline(model: string, format: WeightFormat, cacheDir: string, maxSequence: number, threads: number, label?: string) {
  const t0 = now();
  let bar: ReturnType<typeof progress> | undefined;
  const checkpoint = await openCheckpoint(model);
  const pipeline = await LocalPipeline.load(checkpoint, {
    format,
    threads,
    maxSequence,
    cacheDir,
    onProgress: label
      ? (done, total) => {
          bar ??= progress(label, total);
          bar.update(done);
        }
      : undefined,
  });
  bar?.stop();
  return { pipeline, ms: now() - t0 };
}

/** First load of a format into an empty cache: reads the checkpoint, builds and writes the span model, opens it. */
async function tesseraBuild(a: TesseraArgs): Promise<unknown> {
  const { pipeline, ms } = await loadPipeline(a.model, a.format, a.cacheDir, a.maxSequence, a.threads, `building ${a.format} span model (tensors)`);
  await pipeline.release();
  return { build_ms: ms, ...memoryStatus() };
}

async function tesseraRun(a: TesseraArgs): Promise<unknown> {
  const { pipeline, ms: loadMs } = await loadPipeline(a.model, a.format, a.cacheDir, a.maxSequence, a.threads);
  const prompt = benchTokens(a.prompt, a.vocabSize);
  const session = pipeline.openSession(a.maxSequence);
  const afterLoad = memoryStatus();

  // Warm-up: a short prefill and a few decode steps, then forget them (same KV buffers reused).
  let t = argmax(await session.append(prompt.slice(0, Math.min(32, a.prompt))));
  for (let i = 0; i < 4; i++) t = argmax(await session.append([t]));
  session.truncate(0);

  const cpu0 = cpuSnapshot();
  let t0 = now();
  const logits = await session.append(prompt);
  const prefillMs = now() - t0;
  t = argmax(logits);
  const generated = [t];
  const stepMs: number[] = [];
  for (let i = 0; i < a.decode; i++) {
    t0 = now();
    const l = await session.append([t]);
    stepMs.push(now() - t0);
    t = argmax(l);
    generated.push(t);
  }
  const cpu = cpuBetween(cpu0, cpuSnapshot(), cpus().length);
  session.close();
  const mem = memoryStatus();
  await pipeline.release();
  return runResult({ cpu, loadMs, prefillMs, stepMs, generated, afterLoad, mem });
}

/** The measurements of one engine run, as the parent process reads them. */
function runResult(r: {
  cpu: ReturnType<typeof cpuBetween>;
  loadMs: number;
  prefillMs: number;
  stepMs: number[];
  generated: number[];
  afterLoad: ReturnType<typeof memoryStatus>;
  mem: ReturnType<typeof memoryStatus>;
}) {
  return {
    cpu: r.cpu,
    load_ms: r.loadMs,
    prefill_ms: r.prefillMs,
    decode_step_ms: r.stepMs,
    tokens: r.generated,
    rss_after_load_bytes: r.afterLoad.rssBytes,
    peak_rss_bytes: r.mem.peakRssBytes,
    rss_bytes: r.mem.rssBytes,
  };
}

// ------------------------------------------------------------------ llama.cpp

interface LlamaArgs {
  model: string;
  contextSize: number;
  threads: number;
  prompt: number;
  decode: number;
  vocabSize: number;
}

async function llamaRun(a: LlamaArgs): Promise<unknown> {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: a.threads });
  const t0Load = now();
  const model = await llama.loadModel({ modelPath: a.model, gpuLayers: 0 });
  const loadMs = now() - t0Load;
  const context = await model.createContext({
    contextSize: a.contextSize,
    threads: { ideal: a.threads, min: a.threads },
    batchSize: 512,
    flashAttention: false,
  });
  const sequence = context.getSequence();
  const afterLoad = memoryStatus();
  const prompt = benchTokens(a.prompt, a.vocabSize);

  /** Evaluates tokens and returns the greedy next token after the last one. */
  const evalNext = async (tokens: number[]): Promise<number> => {
    const items = tokens.map((tok, i) => (i === tokens.length - 1 ? ([tok, { generateNext: { token: true, options: { temperature: 0 } } }] as const) : tok));
    const out = await sequence.controlledEvaluate(items as never);
    const next = out[tokens.length - 1]?.next.token;
    if (next == null) throw new Error("llama.cpp returned no next token");
    return next as number;
  };
  /** Greedy decode: each yield follows one single-token forward of the previous token. */
  const decode = async (first: number, count: number, stepMs?: number[]): Promise<number[]> => {
    const out: number[] = [];
    let t0 = now();
    for await (const tok of sequence.evaluate([first] as never, { temperature: 0, yieldEogToken: true })) {
      stepMs?.push(now() - t0);
      out.push(tok as number);
      if (out.length >= count) break;
      t0 = now();
    }
    if (out.length < count) throw new Error(`llama.cpp stopped after ${out.length} of ${count} tokens`);
    return out;
  };

  // Warm-up, then forget it.
  await decode(await evalNext(prompt.slice(0, Math.min(32, a.prompt))), 4);
  await sequence.clearHistory();

  const cpu0 = cpuSnapshot();
  const t0 = now();
  const first = await evalNext(prompt);
  const prefillMs = now() - t0;
  const stepMs: number[] = [];
  const generated = [first, ...(await decode(first, a.decode, stepMs))];
  const cpu = cpuBetween(cpu0, cpuSnapshot(), cpus().length);
  const mem = memoryStatus();
  await context.dispose();
  await model.dispose();
  return runResult({ cpu, loadMs, prefillMs, stepMs, generated, afterLoad, mem });
}

// ------------------------------------------------------------------ HF folder vs GGUF

interface HfArgs {
  hf: string;
  gguf: string;
  hfCacheDir: string;
  ggufCacheDir: string;
  maxSequence: number;
  threads: number;
  vocabSize: number;
  prompt: number;
  decode: number;
}

/** HF folder (BF16) load speed, uncached and cached, and agreement with the F32 GGUF on the f32 engine. */
async function hfCheck(a: HfArgs): Promise<unknown> {
  const prompt = benchTokens(a.prompt, a.vocabSize, 7);
  const run = async (pipeline: LocalPipeline) => {
    const session = pipeline.openSession(a.maxSequence);
    const logits = await session.append(prompt);
    const tokens = [argmax(logits)];
    for (let i = 0; i < a.decode; i++) tokens.push(argmax(await session.append([tokens[tokens.length - 1]!])));
    session.close();
    return { logits, tokens };
  };
  const built = await loadPipeline(a.hf, "f32", a.hfCacheDir, a.maxSequence, a.threads, "building HF f32 span model (tensors)");
  await built.pipeline.release();
  const cached = await loadPipeline(a.hf, "f32", a.hfCacheDir, a.maxSequence, a.threads);
  const hf = await run(cached.pipeline);
  await cached.pipeline.release();
  const ggufLoad = await loadPipeline(a.gguf, "f32", a.ggufCacheDir, a.maxSequence, a.threads);
  const gg = await run(ggufLoad.pipeline);
  await ggufLoad.pipeline.release();
  let maxDiff = 0;
  let maxAbs = 0;
  for (let i = 0; i < gg.logits.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(gg.logits[i]! - hf.logits[i]!));
    maxAbs = Math.max(maxAbs, Math.abs(gg.logits[i]!));
  }
  let agree = 0;
  while (agree < gg.tokens.length && gg.tokens[agree] === hf.tokens[agree]) agree++;
  return {
    hf_build_ms: built.ms,
    hf_cached_load_ms: cached.ms,
    gguf_f32_cached_load_ms: ggufLoad.ms,
    last_logits_max_abs_diff: maxDiff,
    last_logits_max_abs: maxAbs,
    greedy_tokens_compared: gg.tokens.length,
    greedy_prefix_agreement: agree,
    prompt_tokens: a.prompt,
  };
}

// ------------------------------------------------------------------ entry

const jobs: Record<string, (args: never) => Promise<unknown>> = {
  make,
  bandwidth,
  "tessera-build": tesseraBuild,
  tessera: tesseraRun,
  llamacpp: llamaRun,
  hf: hfCheck,
};

const [job, json] = process.argv.slice(2);
const fn = job ? jobs[job] : undefined;
if (!fn) {
  console.error(`engine-worker: unknown job '${job}'; one of ${Object.keys(jobs).join(", ")}`);
  process.exit(2);
}
try {
  emitResult(await fn(JSON.parse(json ?? "{}") as never));
  // ORT / llama.cpp thread pools can keep the process alive; the result is out, so leave.
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
