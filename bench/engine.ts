// Engine benchmark: Tessera (ONNX Runtime span models) against llama.cpp (node-llama-cpp) on the
// same GGUF files, per weight format: prefill and decode speed, decode against the memory-
// bandwidth bound, peak memory, and the one-off cost of building span models.
//
//   npm run bench -- engine [--formats f32,q8,q4] [--prompt 512] [--decode 128] [--repeat 3]
//                           [--preset bench-0.6b] [--threads 2] [--reuse-cache] [--no-hf] [--no-boost] [--out bench/results]
//
// Every measurement runs in its own child process (bench/engine-worker.ts), so peak RSS belongs
// to one engine and format; Tessera and llama.cpp children alternate, so machine noise hits both.
import { execSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { groupedBarChartSvg } from "./_svg.js";
import { PRESETS, type TestModelSpec } from "../src/model/fixtures.js";
import { fixtureConfig } from "../src/model/fixtures.js";
import { readGguf } from "../src/model/gguf.js";
import { WEIGHT_FORMATS, type WeightFormat } from "../src/engine/weights.js";
import {
  GGUF_DTYPE,
  RESULT_MARKER,
  ggufDataBytes,
  hfDataBytes,
  kvReadBytes,
  llamaKvBytes,
  median,
  parameterCount,
  progress,
  tesseraKvBytes,
  tesseraStreamedBytes,
} from "./_engine-common.js";

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = dirname(benchDir);
const workerPath = join(benchDir, "engine-worker.ts");

interface Flags {
  formats: WeightFormat[];
  prompt: number;
  decode: number;
  repeat: number;
  preset: string;
  threads: number;
  reuseCache: boolean;
  hf: boolean;
  boost: boolean;
  out: string;
}

function parseFlags(args: string[]): Flags {
  const { values } = parseArgs({
    args,
    options: {
      formats: { type: "string", default: "f32,q8,q4" },
      prompt: { type: "string", default: "512" },
      decode: { type: "string", default: "128" },
      repeat: { type: "string", default: "3" },
      preset: { type: "string", default: "bench-0.6b" },
      threads: { type: "string", default: "2" },
      "reuse-cache": { type: "boolean", default: false },
      "no-hf": { type: "boolean", default: false },
      "no-boost": { type: "boolean", default: false },
      out: { type: "string", default: join(benchDir, "results") },
    },
    strict: true,
  });
  const int = (name: string, v: string, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got '${v}'`);
    return n;
  };
  const formats = values.formats.split(",").map((f) => f.trim()) as WeightFormat[];
  for (const f of formats) if (!WEIGHT_FORMATS.includes(f)) throw new Error(`unknown format '${f}'; use ${WEIGHT_FORMATS.join(", ")}`);
  if (!PRESETS[values.preset]) throw new Error(`unknown preset '${values.preset}'; one of ${Object.keys(PRESETS).join(", ")}`);
  return {
    formats,
    prompt: int("prompt", values.prompt, 2),
    decode: int("decode", values.decode, 1),
    repeat: int("repeat", values.repeat, 1),
    preset: values.preset,
    threads: int("threads", values.threads, 1),
    reuseCache: values["reuse-cache"],
    hf: !values["no-hf"],
    boost: !values["no-boost"],
    out: values.out,
  };
}

// ------------------------------------------------------------------ child processes

interface WorkerOptions {
  /** Shows write progress by polling the bytes of the files this returns (given the child's pid). */
  pollBytes?: { label: string; total: number; bytes: (pid: number) => number };
}

/**
 * With sched_autogroup on (the Linux default), CPU shares are split between sessions first, so a
 * background job in another session gets a whole core of 2 however it is niced, and spin-waiting
 * thread pools (llama.cpp's especially) collapse when one of their 2 threads loses its core. So
 * each child starts its own session (detached) and, where allowed, its autogroup gets nice -20.
 */
const scheduling = { boost: true, boosted: 0, failed: 0 };

function runWorker<T>(job: string, args: unknown, opts: WorkerOptions = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", workerPath, job, JSON.stringify(args)], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "inherit"],
      detached: scheduling.boost,
    });
    if (scheduling.boost && child.pid) {
      try {
        writeFileSync(`/proc/${child.pid}/autogroup`, "-20");
        scheduling.boosted++;
      } catch {
        scheduling.failed++;
      }
    }
    let stdout = "";
    let result: T | undefined;
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      stdout += chunk;
      let nl: number;
      while ((nl = stdout.indexOf("\n")) >= 0) {
        const line = stdout.slice(0, nl);
        stdout = stdout.slice(nl + 1);
        if (line.startsWith(RESULT_MARKER)) result = JSON.parse(line.slice(RESULT_MARKER.length)) as T;
        else if (line.trim()) process.stderr.write(`  [${job}] ${line}\n`);
      }
    });
    let timer: NodeJS.Timeout | undefined;
    let bar: ReturnType<typeof progress> | undefined;
    if (opts.pollBytes) {
      const { label, total, bytes } = opts.pollBytes;
      bar = progress(label, total, "bytes");
      timer = setInterval(() => bar!.update(bytes(child.pid!)), 500);
    }
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      if (timer) clearInterval(timer);
      if (bar && code === 0) bar.update(opts.pollBytes!.total);
      bar?.stop();
      if (code === 0 && result !== undefined) resolve(result);
      else reject(new Error(`engine-worker ${job} failed (exit ${code ?? signal})`));
    });
  });
}

const fileSize = (path: string) => {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
};
const dirBytes = (dir: string): number =>
  existsSync(dir)
    ? readdirSync(dir, { withFileTypes: true }).reduce((n, e) => n + (e.isDirectory() ? dirBytes(join(dir, e.name)) : fileSize(join(dir, e.name))), 0)
    : 0;

// ------------------------------------------------------------------ results

interface RunResult {
  cpu: { wall_s: number; own_cpu_s: number; others_cpu_s: number; others_cpu_share: number; steal_s: number };
  load_ms: number;
  prefill_ms: number;
  decode_step_ms: number[];
  tokens: number[];
  rss_after_load_bytes: number;
  peak_rss_bytes: number;
  rss_bytes: number;
}

interface Bandwidth {
  single_thread_copy_gbs: number[];
  single_thread_read_gbs: number[];
  multi_thread_copy_gbs: number[];
  multi_thread_read_gbs: number[];
  threads: number;
  buffer_bytes: number;
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
const round = (x: number, digits = 3) => Number(x.toPrecision(digits + 2));

export async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args);
  const started = Date.now();
  scheduling.boost = flags.boost;
  const spec: TestModelSpec = PRESETS[flags.preset]!;
  const config = fixtureConfig(spec);
  const maxSequence = Math.max(1024, Math.ceil((flags.prompt + flags.decode + 8) / 256) * 256);
  const modelsDir = join(benchDir, ".models", flags.preset);
  const resultsDir = flags.out;
  mkdirSync(modelsDir, { recursive: true });
  mkdirSync(resultsDir, { recursive: true });
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;

  // ---------------------------------------------------------------- fixtures (cached)
  const ggufPath = (f: WeightFormat) => join(modelsDir, `${flags.preset}-${GGUF_DTYPE[f]}.gguf`);
  const hfDir = join(modelsDir, `${flags.preset}-hf-BF16`);
  const needF32 = flags.formats.includes("f32") || flags.hf;
  const ggufFormats = WEIGHT_FORMATS.filter((f) => flags.formats.includes(f) || (f === "f32" && needF32));
  const hfDone = () => existsSync(join(hfDir, "tokenizer_config.json"));
  const toWrite =
    ggufFormats.filter((f) => !existsSync(ggufPath(f))).reduce((n, f) => n + ggufDataBytes(spec, GGUF_DTYPE[f]), 0) +
    (flags.hf && !hfDone() ? hfDataBytes(spec, 2) : 0);
  // Span caches: f32 ≈ the F32 file, quantized ≈ their files plus an f16 embedding; the HF check builds another f32.
  const cacheNeed = flags.formats.reduce((n, f) => n + ggufDataBytes(spec, GGUF_DTYPE[f]) * 1.3, 0) + (flags.hf ? ggufDataBytes(spec, "F32") : 0);
  const fs = statfsSync(modelsDir);
  const free = fs.bavail * fs.bsize;
  log(`disk: ${gib(free)} free at ${modelsDir}; fixtures to write ${gib(toWrite)}, span caches up to ${gib(cacheNeed)}`);
  if (free < (toWrite + cacheNeed) * 1.1) throw new Error(`not enough free disk: need about ${gib((toWrite + cacheNeed) * 1.1)}`);

  for (const f of ggufFormats) {
    const path = ggufPath(f);
    if (existsSync(path)) continue;
    log(`writing ${path}`);
    const r = await runWorker<{ ms: number }>(
      "make",
      { path, preset: flags.preset, dtype: GGUF_DTYPE[f] },
      { pollBytes: { label: `GGUF ${GGUF_DTYPE[f]}`, total: ggufDataBytes(spec, GGUF_DTYPE[f]), bytes: (pid) => fileSize(`${path}.${pid}.partial`) } },
    );
    log(`  wrote ${gib(fileSize(path))} in ${(r.ms / 1000).toFixed(1)} s`);
  }
  if (flags.hf && !hfDone()) {
    log(`writing ${hfDir} (tensors are generated in memory first, then written)`);
    rmSync(hfDir, { recursive: true, force: true });
    const r = await runWorker<{ ms: number }>(
      "make",
      { path: hfDir, preset: flags.preset, dtype: "BF16" },
      { pollBytes: { label: "HF BF16", total: hfDataBytes(spec, 2), bytes: () => dirBytes(hfDir) } },
    );
    log(`  wrote ${gib(dirBytes(hfDir))} in ${(r.ms / 1000).toFixed(1)} s`);
  }

  // Let freshly written files reach the disk now, not during a measurement.
  execSync("sync");

  // ---------------------------------------------------------------- memory bandwidth
  log(`[${elapsed()}] measuring memory bandwidth (1 GiB, 1 and ${flags.threads} threads)`);
  const bw = await runWorker<Bandwidth>("bandwidth", { mib: 1024, iters: 5, threads: flags.threads });
  const best = (xs: number[]) => Math.max(...xs);
  // The bound uses the best rate with 1 or as many threads as the engines get.
  const copyGbs = Math.max(best(bw.single_thread_copy_gbs), best(bw.multi_thread_copy_gbs));
  const readGbs = Math.max(best(bw.single_thread_read_gbs), best(bw.multi_thread_read_gbs));
  log(
    `  copy (read + write bytes): 1 thread ${best(bw.single_thread_copy_gbs).toFixed(1)} GB/s, ${flags.threads} threads ${best(bw.multi_thread_copy_gbs).toFixed(1)} GB/s;` +
      ` read-only (memcmp): 1 thread ${best(bw.single_thread_read_gbs).toFixed(1)} GB/s, ${flags.threads} threads ${best(bw.multi_thread_read_gbs).toFixed(1)} GB/s`,
  );

  // ---------------------------------------------------------------- per format
  const tesseraArgs = (f: WeightFormat, cacheDir: string) => ({
    model: ggufPath(f),
    format: f,
    cacheDir,
    maxSequence,
    threads: flags.threads,
    prompt: flags.prompt,
    decode: flags.decode,
    vocabSize: spec.vocabSize,
  });
  const llamaArgs = (f: WeightFormat) => ({
    model: ggufPath(f),
    contextSize: maxSequence,
    threads: flags.threads,
    prompt: flags.prompt,
    decode: flags.decode,
    vocabSize: spec.vocabSize,
  });
  const cacheDirOf = (name: string) => join(modelsDir, `span-cache-${name}`);
  /** Bytes of the span model's initializers (weights.bin) of the newest entry in a cache. */
  const spanWeightsBytes = (cacheDir: string) => {
    const spans = join(cacheDir, "spans");
    if (!existsSync(spans)) return 0;
    const entries = readdirSync(spans)
      .filter((d) => existsSync(join(spans, d, "weights.bin")))
      .map((d) => ({ d, t: statSync(join(spans, d, "model.onnx")).mtimeMs }))
      .sort((a, b) => b.t - a.t);
    return entries.length ? fileSize(join(spans, entries[0]!.d, "weights.bin")) : 0;
  };
  const ensureBuilt = async (f: WeightFormat): Promise<{ build_ms: number; peakRssBytes: number } | undefined> => {
    const cacheDir = cacheDirOf(f);
    if (flags.reuseCache && spanWeightsBytes(cacheDir) > 0) return undefined;
    rmSync(cacheDir, { recursive: true, force: true });
    log(`[${elapsed()}] tessera ${f}: first load (empty cache: build the span model)`);
    const r = await runWorker<{ build_ms: number; peakRssBytes: number }>("tessera-build", tesseraArgs(f, cacheDir));
    log(`  built in ${(r.build_ms / 1000).toFixed(1)} s (peak RSS ${gib(r.peakRssBytes)})`);
    execSync("sync");
    return r;
  };

  const formats: Record<string, Record<string, unknown>> = {};
  const rows: Record<string, Record<string, string | number>> = {};
  for (const f of flags.formats) {
    const build = await ensureBuilt(f);
    const cacheDir = cacheDirOf(f);
    const tess: RunResult[] = [];
    const llam: RunResult[] = [];
    for (let r = 0; r < flags.repeat; r++) {
      const order = r % 2 === 0 ? (["tessera", "llamacpp"] as const) : (["llamacpp", "tessera"] as const);
      for (const engine of order) {
        log(`[${elapsed()}] ${f} run ${r + 1}/${flags.repeat}: ${engine} (prefill ${flags.prompt}, decode ${flags.decode})`);
        const res =
          engine === "tessera" ? await runWorker<RunResult>("tessera", tesseraArgs(f, cacheDir)) : await runWorker<RunResult>("llamacpp", llamaArgs(f));
        (engine === "tessera" ? tess : llam).push(res);
        const dsum = res.decode_step_ms.reduce((a, b) => a + b, 0);
        log(
          `  prefill ${((flags.prompt * 1000) / res.prefill_ms).toFixed(1)} tok/s, decode ${((flags.decode * 1000) / dsum).toFixed(2)} tok/s` +
            ` (${(dsum / flags.decode).toFixed(1)} ms/token), load ${(res.load_ms / 1000).toFixed(1)} s, peak RSS ${gib(res.peak_rss_bytes)},` +
            ` other processes used ${(100 * res.cpu.others_cpu_share).toFixed(0)}% of the CPUs meanwhile`,
        );
      }
    }

    const prefillTps = (rs: RunResult[]) => rs.map((x) => (flags.prompt * 1000) / x.prefill_ms);
    const decodeTps = (rs: RunResult[]) => rs.map((x) => (flags.decode * 1000) / x.decode_step_ms.reduce((a, b) => a + b, 0));
    const tDecode = median(decodeTps(tess));
    const lDecode = median(decodeTps(llam));
    const tPrefill = median(prefillTps(tess));
    const lPrefill = median(prefillTps(llam));

    const tStepMedian = median(tess.flatMap((x) => x.decode_step_ms));
    const lStepMedian = median(llam.flatMap((x) => x.decode_step_ms));
    const tStreamed = tesseraStreamedBytes(spec, f);
    const gg = await readGguf(ggufPath(f));
    const hasHead = gg.tensors.has("output.weight");
    let lStreamed = 0;
    for (const [name, info] of gg.tensors) {
      if (name.startsWith("position_embd")) continue;
      if (name.startsWith("token_embd") && hasHead) continue;
      lStreamed += info.byteLength;
    }
    const boundMs = (bytes: number, gbs = copyGbs) => (bytes / (gbs * 1e9)) * 1000;
    // Mean KV bytes a decode step reads: positions prompt … prompt + decode - 1.
    const meanPos = flags.prompt + (flags.decode - 1) / 2;
    const tKvRead = kvReadBytes(spec, meanPos, 4);
    const lKvRead = kvReadBytes(spec, meanPos, 2);

    const tWeights = spanWeightsBytes(cacheDir);
    const weightsPlusKv = tWeights + tesseraKvBytes(spec, maxSequence);
    const tPeak = Math.max(...tess.map((x) => x.peak_rss_bytes));
    const lPeak = Math.max(...llam.map((x) => x.peak_rss_bytes));
    const lWeightsPlusKv = fileSize(ggufPath(f)) + llamaKvBytes(spec, maxSequence);
    const agree = (a: number[], b: number[]) => {
      let i = 0;
      while (i < a.length && a[i] === b[i]) i++;
      return i;
    };

    formats[f] = {
      tessera_decode_tps: round(tDecode),
      llamacpp_decode_tps: round(lDecode),
      decode_ratio: round(tDecode / lDecode),
      tessera_prefill_tps: round(tPrefill),
      llamacpp_prefill_tps: round(lPrefill),
      prefill_ratio: round(tPrefill / lPrefill),
      tessera_bandwidth_fraction: round(boundMs(tStreamed) / (1000 / tDecode)),
      llamacpp_bandwidth_fraction: round(boundMs(lStreamed) / (1000 / lDecode)),
      tessera_peak_rss_bytes: tPeak,
      weights_plus_kv_bytes: weightsPlusKv,
      memory_ratio: round(tPeak / weightsPlusKv),
      // ---- extras
      statistic: `median of ${flags.repeat} runs (each run its own process)`,
      gguf_file: ggufPath(f).slice(repoRoot.length + 1),
      gguf_file_bytes: fileSize(ggufPath(f)),
      tessera_decode_ms_per_token: round(1000 / tDecode),
      llamacpp_decode_ms_per_token: round(1000 / lDecode),
      tessera_decode_tps_runs: decodeTps(tess).map((x) => round(x)),
      llamacpp_decode_tps_runs: decodeTps(llam).map((x) => round(x)),
      tessera_prefill_tps_runs: prefillTps(tess).map((x) => round(x)),
      llamacpp_prefill_tps_runs: prefillTps(llam).map((x) => round(x)),
      tessera_decode_step_ms_median: round(tStepMedian),
      llamacpp_decode_step_ms_median: round(lStepMedian),
      // Steps over twice the median step: stalls (scheduling, background load) that the totals include.
      tessera_decode_stall_steps: tess.map((x) => x.decode_step_ms.filter((v) => v > 2 * tStepMedian).length),
      llamacpp_decode_stall_steps: llam.map((x) => x.decode_step_ms.filter((v) => v > 2 * lStepMedian).length),
      tessera_decode_tps_from_median_step: round(1000 / tStepMedian),
      llamacpp_decode_tps_from_median_step: round(1000 / lStepMedian),
      tessera_streamed_weight_bytes: tStreamed,
      llamacpp_streamed_weight_bytes: lStreamed,
      tessera_bound_ms: round(boundMs(tStreamed)),
      llamacpp_bound_ms: round(boundMs(lStreamed)),
      tessera_bandwidth_fraction_with_kv: round(boundMs(tStreamed + tKvRead) / (1000 / tDecode)),
      llamacpp_bandwidth_fraction_with_kv: round(boundMs(lStreamed + lKvRead) / (1000 / lDecode)),
      tessera_read_bandwidth_fraction: round(boundMs(tStreamed, readGbs) / (1000 / tDecode)),
      llamacpp_read_bandwidth_fraction: round(boundMs(lStreamed, readGbs) / (1000 / lDecode)),
      tessera_others_cpu_share_runs: tess.map((x) => round(x.cpu.others_cpu_share, 2)),
      llamacpp_others_cpu_share_runs: llam.map((x) => round(x.cpu.others_cpu_share, 2)),
      tessera_span_weights_bytes: tWeights,
      tessera_kv_bytes: tesseraKvBytes(spec, maxSequence),
      tessera_rss_after_load_bytes: Math.max(...tess.map((x) => x.rss_after_load_bytes)),
      llamacpp_peak_rss_bytes: lPeak,
      llamacpp_weights_plus_kv_bytes: lWeightsPlusKv,
      llamacpp_memory_ratio: round(lPeak / lWeightsPlusKv),
      tessera_build_s: build ? round(build.build_ms / 1000) : null,
      tessera_build_peak_rss_bytes: build ? build.peakRssBytes : null,
      tessera_cached_load_s: round(median(tess.map((x) => x.load_ms)) / 1000),
      llamacpp_load_s: round(median(llam.map((x) => x.load_ms)) / 1000),
      greedy_tokens_compared: tess[0]!.tokens.length,
      greedy_prefix_agreement: agree(tess[0]!.tokens, llam[0]!.tokens),
    };
    rows[f] = {
      "decode tok/s T": round(tDecode, 2),
      "decode tok/s L": round(lDecode, 2),
      "decode T/L": round(tDecode / lDecode, 2),
      "step ms T": round(tStepMedian, 2),
      "step ms L": round(lStepMedian, 2),
      "prefill tok/s T": round(tPrefill, 2),
      "prefill tok/s L": round(lPrefill, 2),
      "prefill T/L": round(tPrefill / lPrefill, 2),
      "BW frac T": round(boundMs(tStreamed) / (1000 / tDecode), 2),
      "BW frac L": round(boundMs(lStreamed) / (1000 / lDecode), 2),
      "peak RSS T GiB": round(tPeak / 2 ** 30, 2),
      "W+KV GiB": round(weightsPlusKv / 2 ** 30, 2),
      "mem ratio": round(tPeak / weightsPlusKv, 2),
      "build s": build ? round(build.build_ms / 1000, 2) : "-",
      "cached load s": round(median(tess.map((x) => x.load_ms)) / 1000, 2),
    };
  }

  // ---------------------------------------------------------------- HF folder
  let hf: Record<string, unknown> | undefined;
  if (flags.hf) {
    if (spanWeightsBytes(cacheDirOf("f32")) === 0) await ensureBuilt("f32");
    rmSync(cacheDirOf("hf-f32"), { recursive: true, force: true });
    log(`[${elapsed()}] HF BF16 folder: build + cached load on the f32 engine, compared with the F32 GGUF`);
    const r = await runWorker<Record<string, number>>("hf", {
      hf: hfDir,
      gguf: ggufPath("f32"),
      hfCacheDir: cacheDirOf("hf-f32"),
      ggufCacheDir: cacheDirOf("f32"),
      maxSequence,
      threads: flags.threads,
      vocabSize: spec.vocabSize,
      prompt: Math.min(64, flags.prompt),
      decode: 16,
    });
    hf = {
      folder: hfDir.slice(repoRoot.length + 1),
      dtype: "BF16",
      engine_format: "f32",
      folder_bytes: dirBytes(hfDir),
      build_s: round(r.hf_build_ms! / 1000),
      cached_load_s: round(r.hf_cached_load_ms! / 1000),
      gguf_f32_cached_load_s: round(r.gguf_f32_cached_load_ms! / 1000),
      last_logits_max_abs_diff_vs_gguf_f32: round(r.last_logits_max_abs_diff!),
      last_logits_max_abs: round(r.last_logits_max_abs!),
      greedy_prefix_agreement: `${r.greedy_prefix_agreement}/${r.greedy_tokens_compared}`,
      note: "BF16 rounding of the weights is the only difference from the F32 GGUF",
    };
    log(
      `  HF build ${hf.build_s} s, cached load ${hf.cached_load_s} s (GGUF F32 cached load ${hf.gguf_f32_cached_load_s} s);` +
        ` logits max |diff| ${hf.last_logits_max_abs_diff_vs_gguf_f32} (max |logit| ${hf.last_logits_max_abs}), greedy agreement ${hf.greedy_prefix_agreement}`,
    );
  }

  // ---------------------------------------------------------------- output
  const wallS = (Date.now() - started) / 1000;
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const flagsLine = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const pkgVersion = (name: string) => JSON.parse(readFileSync(join(repoRoot, "node_modules", name, "package.json"), "utf8")).version as string;
  const output = {
    benchmark: "engine",
    date: new Date().toISOString(),
    wall_time_s: round(wallS),
    machine: {
      cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
      cpu_simd: flagsLine.filter((f) => /^(avx2|avx512f|avx512_vnni|avx_vnni|fma|f16c|amx_tile|amx_int8)$/.test(f)),
      cores: cpus().length,
      ram_bytes: totalmem(),
      node: process.version,
      onnxruntime_node: pkgVersion("onnxruntime-node"),
      node_llama_cpp: pkgVersion("node-llama-cpp"),
      copy_bandwidth_gbs: round(copyGbs),
      read_bandwidth_gbs: round(readGbs),
      bandwidth: {
        how:
          "1 GiB in one worker thread, or split across `threads` worker threads each with its own buffers; copy = Buffer.copy (memmove), " +
          "bytes = read + write = 2 × size; read = Buffer.equals of two identical buffers (memcmp), bytes = 2 × size read; best of 5, 1 or N threads",
        single_thread_copy_gbs: bw.single_thread_copy_gbs.map((x) => round(x)),
        multi_thread_copy_gbs: bw.multi_thread_copy_gbs.map((x) => round(x)),
        single_thread_read_gbs: bw.single_thread_read_gbs.map((x) => round(x)),
        multi_thread_read_gbs: bw.multi_thread_read_gbs.map((x) => round(x)),
        threads: bw.threads,
      },
    },
    settings: {
      threads: flags.threads,
      prompt_tokens: flags.prompt,
      decode_tokens: flags.decode,
      repeat: flags.repeat,
      statistic: "median over repeats (each repeat is a fresh child process per engine, engines alternating)",
      max_sequence: maxSequence,
      tessera: "LocalPipeline (one span), f32 KV cache; prefill = one append of the prompt; decode = append([t]) per token, argmax excluded from timing",
      llamacpp: `contextSize ${maxSequence}, batchSize 512, flashAttention off, default F16 KV cache; prefill = controlledEvaluate(prompt) with the next token; decode = sequence.evaluate iterator, time between yields`,
      bandwidth_fraction:
        "bound_ms / measured_ms_per_token, bound_ms = streamed weight bytes per token / copy_bandwidth (weights only; *_with_kv adds the mean KV cache read; *_read_bandwidth_fraction uses the read-only bandwidth instead)",
      noise: "*_others_cpu_share_runs: CPU time used by other processes during each timed section, as a share of all cores (/proc/stat minus own rusage)",
      streamed_weights:
        "Tessera: projections as stored in its graph (f32, or MatMulNBits N·K·bits/8 + f32 scale per 32-block) + norms, no embedding table; llama.cpp: GGUF tensor bytes without token_embd",
      memory_ratio: "peak RSS (VmHWM) of the Tessera child / (span model weights.bin bytes + KV cache bytes of the session)",
      scheduling: !flags.boost
        ? "default"
        : scheduling.failed === 0
          ? "each child process in its own session/autogroup at autogroup nice -20 (shields measurements from background jobs in other sessions)"
          : `each child in its own session; autogroup nice -20 failed for ${scheduling.failed} of ${scheduling.boosted + scheduling.failed} children`,
    },
    model: {
      preset: flags.preset,
      spec,
      params: parameterCount(spec),
      head_dim: config.headDim,
      file_bytes: Object.fromEntries(ggufFormats.map((f) => [`gguf_${GGUF_DTYPE[f]}`, fileSize(ggufPath(f))])),
      ...(flags.hf ? { hf_bf16_folder_bytes: dirBytes(hfDir) } : {}),
    },
    formats,
    ...(hf ? { hf } : {}),
  };
  writeFileSync(join(resultsDir, "engine.json"), `${JSON.stringify(output, null, 2)}\n`);
  writeFileSync(join(resultsDir, "engine.svg"), barChartSvg(formats as Record<string, Record<string, number>>, flags, output.machine.cpu));

  console.log(
    `\nEngine benchmark: ${flags.preset} (${(parameterCount(spec) / 1e6).toFixed(0)}M params), ${flags.threads} threads, prompt ${flags.prompt}, decode ${flags.decode}, median of ${flags.repeat}`,
  );
  console.log(
    `T = Tessera, L = llama.cpp; step ms = median decode step; BW frac = (weight bytes / copy bandwidth ${copyGbs.toFixed(1)} GB/s, read+write counted) / measured ms per token; read-only bandwidth ${readGbs.toFixed(1)} GB/s`,
  );
  console.table(rows);
  if (hf)
    console.log(
      `HF BF16 folder: build ${hf.build_s} s, cached load ${hf.cached_load_s} s, logits max|diff| vs GGUF F32 ${hf.last_logits_max_abs_diff_vs_gguf_f32}, greedy agreement ${hf.greedy_prefix_agreement}`,
    );
  console.log(`wrote ${join(resultsDir, "engine.json")} and engine.svg; wall time ${(wallS / 60).toFixed(1)} min`);
}

// ------------------------------------------------------------------ SVG

function barChartSvg(formats: Record<string, Record<string, number>>, flags: Flags, cpu: string): string {
  const names = Object.keys(formats);
  const panel = (title: string, keys: string[]) => ({ title, groups: names, values: keys.map((k) => names.map((n) => formats[n]![k]!)) });
  return groupedBarChartSvg({
    panels: [
      panel(`Decode tok/s (${flags.decode} tokens)`, ["tessera_decode_tps", "llamacpp_decode_tps"]),
      panel(`Prefill tok/s (${flags.prompt}-token prompt)`, ["tessera_prefill_tps", "llamacpp_prefill_tps"]),
    ],
    series: ["Tessera", "llama.cpp"],
    footer: `${flags.preset}, ${flags.threads} threads, ${cpu}, median of ${flags.repeat}`,
  });
}
