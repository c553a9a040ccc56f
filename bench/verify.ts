// Verification benchmark: how well replay verification (src/swarm/span-check.ts, the comparison of
// src/verify/compare.ts) separates honest nodes from the adversaries of test/support/adversary.ts,
// and what it costs, on the shipped model (f32), all in this process (no libp2p).
//   1. calibration: honest provers and verifiers at 1 and 2 threads, codecs none/f16/blockwise8
//      on the prover's wire; every window of 8 positions recomputed by another holder as one
//      step and compared with the real SpanCheck; the honest row-error distribution and the
//      false-positive rate.
//   2. detection at rate 1.0: each adversary mode serves one hop (alternately the hidden-state hop
//      and the logits hop, over the three codecs); for every cheated step whose window was checked,
//      whether it was caught, and the error distribution of the cheated rows.
//   3. catch rate at rate 0.1: real RouteSessions (generate(), greedy) over an in-process swarm
//      where the cheater serves a hop and two honest holders of each span can verify; the share of
//      sessions in which the cheater was caught.
//   4. overhead: node compute (time in SpanSession.forward) of verifiers against route hops, and
//      client wall time per token, against a no-verification baseline in interleaved rounds, for
//      replay at rates 1.0 and 0.1, the repo's consensus mode (k = 3), and redundant execution
//      (3 nodes run every step).
//   npm run bench -- verify [--quick] [--trials 400] [--windows 8000] [--sessions 100] [--rounds 12] [--round-sessions 6] [--out dir]
import { WINDOW_TOKENS } from "../src/swarm/span-check.js";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { generate } from "../src/engine/generate.js";
import type { ServedModel, SpanRuntime } from "../src/engine/interface.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import type { ModelConfig } from "../src/model/types.js";
import { RouteSession, type RouteSessionOptions } from "../src/swarm/route-session.js";
import type { VerifyPolicy } from "../src/swarm/span-check.js";
import { DEFAULT_TOLERANCE, type Tolerance } from "../src/verify/compare.js";
import type { Codec } from "../src/wire/tensor-frame.js";
import { type AdversarialModel, type AdversaryMode, adversarialModel, seededRandom } from "../test/support/adversary.js";
import { DIAGNOSE_ABOVE, type DriveHop, driveSession, type RowDiagnosis, type StepVerdict, type WindowVerdict } from "./_verify-drive.js";
import { errorDistributionSvg } from "./_verify-svg.js";
import { InProcessSwarm, type PeerSpec } from "./_verify-swarm.js";

const here = dirname(fileURLToPath(import.meta.url));
const MODES: AdversaryMode[] = ["noise-small", "noise-large", "perturbed", "skip-block", "stale", "q4", "selective"];
const CODECS: Codec[] = ["none", "f16", "blockwise8"];
const THREADS = [1, 2] as const;
const WINDOW = WINDOW_TOKENS;
const MAX_LENGTH = 128;
const GREEDY = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

// ------------------------------------------------------------------ statistics

const sortedCopy = (xs: readonly number[]) => [...xs].sort((a, b) => a - b);
/** Nearest-rank quantile of sorted values. */
const quantile = (s: readonly number[], q: number) => (s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]! : NaN);
const median = (xs: readonly number[]) => {
  const v = sortedCopy(xs);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};
const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
/** Largest value (without spreading a long array into arguments). */
const maxOf = (xs: readonly number[]) => xs.reduce((a, b) => Math.max(a, b), -Infinity);
const sig = (v: number, digits = 3) => (Number.isFinite(v) ? Number(v.toPrecision(digits)) : v);
const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
const exp = (v: number) => (Number.isFinite(v) ? v.toExponential(2) : String(v));

function distribution(values: readonly number[]) {
  const s = sortedCopy(values);
  return {
    rows: s.length,
    min: sig(s[0] ?? NaN),
    median: sig(quantile(s, 0.5)),
    p99: sig(quantile(s, 0.99)),
    p999: sig(quantile(s, 0.999)),
    max: sig(s.at(-1) ?? NaN),
  };
}

// ------------------------------------------------------------------ workload

interface Workload {
  prompt: number[];
  decode: number;
}

/** Prompts of 8–32 tokens cut from the held-out KJV text at random places, and 16–32 greedy decode steps. */
function workloads(heldOut: number[], seed: number): () => Workload {
  const rng = seededRandom(seed);
  return () => {
    const length = 8 + Math.floor(rng() * 25);
    const at = Math.floor(rng() * (heldOut.length - length));
    return { prompt: heldOut.slice(at, at + length), decode: 16 + Math.floor(rng() * 17) };
  };
}

// ------------------------------------------------------------------ flags

function flags(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      trials: { type: "string" },
      windows: { type: "string" },
      sessions: { type: "string" },
      rounds: { type: "string" },
      "round-sessions": { type: "string" },
      seed: { type: "string", default: "1" },
      out: { type: "string", default: join(here, "results") },
    },
  });
  const quick = values.quick;
  const num = (v: string | undefined, full: number, small: number) => (v !== undefined ? Number(v) : quick ? small : full);
  return {
    quick,
    /** Cheated steps per mode whose window was checked (at least). */
    trials: num(values.trials, 400, 30),
    /** Honest windows compared (at least), over all thread/codec configurations. */
    windows: num(values.windows, 8000, 120),
    /** RouteSessions per mode at rate 0.1. */
    sessions: num(values.sessions, 100, 10),
    /** Interleaved overhead rounds, and sessions per configuration per round. */
    rounds: num(values.rounds, 12, 2),
    roundSessions: num(values["round-sessions"], 6, 2),
    seed: Number(values.seed),
    out: values.out,
  };
}

// ------------------------------------------------------------------ main

export async function main(argv: string[]): Promise<void> {
  const opts = flags(argv);
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;
  const log = (s: string) => console.log(`[${elapsed()}] ${s}`);
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const c = checkpoint.config;
  const tokenizer = await loadTokenizer(checkpoint);
  const heldOut = tokenizer.encode(readFileSync(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false });
  const tolerance: Tolerance = DEFAULT_TOLERANCE;
  const split = Math.floor(c.numLayers / 2);
  const spans: [number, number][] = [
    [0, split],
    [split, c.numLayers],
  ];
  const honest: Record<1 | 2, ServedModel> = {
    1: await servedCheckpoint(checkpoint, { threads: 1 }),
    2: await servedCheckpoint(checkpoint, { threads: 2 }),
  };
  const loaded: SpanRuntime[] = [];
  const load = async (m: ServedModel, [a, b]: [number, number]) => {
    const r = await m.load(a, b);
    loaded.push(r);
    return r;
  };
  // Provers and verifiers are different nodes: runtimes of their own, per thread count and span.
  const provers = { 1: await Promise.all(spans.map((s) => load(honest[1], s))), 2: await Promise.all(spans.map((s) => load(honest[2], s))) };
  const verifiers = { 1: await Promise.all(spans.map((s) => load(honest[1], s))), 2: await Promise.all(spans.map((s) => load(honest[2], s))) };
  const drive = (hops: DriveHop[], w: Workload, codec: Codec) =>
    driveSession(c, hops, w.prompt, w.decode, { codec, window: WINDOW, tolerance, maxLength: MAX_LENGTH });
  const inconsistent: string[] = [];
  const noteConsistency = (what: string, ws: WindowVerdict[]) => {
    for (const w of ws) if (!w.consistent) inconsistent.push(`${what}: hop ${w.hop} [${w.from}, ${w.to})`);
  };

  // ---------------------------------------------------------------- 1. honest calibration
  log(`calibration: honest provers and verifiers, threads ${THREADS.join("/")} × ${THREADS.join("/")}, codecs ${CODECS.join(", ")}, windows of ${WINDOW}`);
  const nextHonest = workloads(heldOut, opts.seed);
  type Key = string;
  const configs: { key: Key; pt: 1 | 2; vt: 1 | 2; codec: Codec }[] = [];
  for (const pt of THREADS) for (const vt of THREADS) for (const codec of CODECS) configs.push({ key: `prover${pt}-verifier${vt}/${codec}`, pt, vt, codec });
  const honestRows = new Map<Key, { hidden: number[]; logits: number[]; windowMax: number[]; windows: number; flagged: number; stepsFlagged: number }>();
  for (const k of configs) honestRows.set(k.key, { hidden: [], logits: [], windowMax: [], windows: 0, flagged: 0, stepsFlagged: 0 });
  const perConfig = Math.ceil(opts.windows / configs.length);
  const honestWorst: ({ config: Key; output: "hidden" | "logits"; decode_step: boolean } & RowDiagnosis)[] = [];
  let honestSessions = 0;
  for (let done = false; !done;) {
    done = true;
    for (const k of configs) {
      const acc = honestRows.get(k.key)!;
      if (acc.windows >= perConfig) continue;
      done = false;
      // Both hops are honest and both are checked.
      const hops = spans.map((_, i) => ({ runtime: provers[k.pt][i]!, verifier: verifiers[k.vt][i]! }));
      const { steps, windows } = await drive(hops, nextHonest(), k.codec);
      honestSessions++;
      noteConsistency(`honest ${k.key}`, windows);
      acc.windows += windows.length;
      acc.flagged += windows.filter((w) => w.flagged).length;
      acc.windowMax.push(...windows.map((w) => w.maxError));
      acc.stepsFlagged += steps.filter((s) => s.caught).length;
      for (const s of steps) {
        const output = s.hop === spans.length - 1 ? "logits" : "hidden";
        acc[output].push(...s.errors);
        if (s.worst) honestWorst.push({ config: k.key, output, decode_step: s.to - s.from === 1, ...s.worst });
      }
    }
  }
  const honestAll = [...honestRows.values()].flatMap((a) => [...a.hidden, ...a.logits]);
  const honestWindows = sum([...honestRows.values()].map((a) => a.windows));
  const honestFlagged = sum([...honestRows.values()].map((a) => a.flagged));
  log(`  ${honestWindows} honest windows in ${honestSessions} sessions: ${honestFlagged} flagged; max error ${exp(maxOf(honestAll))}`);

  // ---------------------------------------------------------------- 2. detection at rate 1.0
  const nextCheat = workloads(heldOut, opts.seed + 1);
  const detection: Record<
    string,
    { steps: StepVerdict[]; windows: WindowVerdict[]; sessions: number; byCombo: Record<string, { trials: number; caught: number; minStepError: number }> }
  > = {};
  const adversaryFor = (mode: AdversaryMode, seed: number) => adversarialModel(honest[2], mode, { checkpoint, engine: { threads: 2 }, seed });
  for (const mode of MODES) {
    const adv = adversaryFor(mode, opts.seed);
    const t0 = Date.now();
    const advRuntimes = await Promise.all(spans.map(([a, b]) => adv.load(a, b)));
    log(`detection, ${mode}: adversary spans loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const acc: (typeof detection)[string] = { steps: [], windows: [], sessions: 0, byCombo: {} };
    const combos = [0, 1].flatMap((hop) => CODECS.map((codec) => ({ hop, codec })));
    const trials = () => acc.steps.filter((s) => s.cheated).length;
    // At least a few sessions per combination (many short sessions, not a few long ones).
    const minSessions = (opts.quick ? 1 : 8) * combos.length;
    for (let i = 0; (trials() < opts.trials || i < minSessions) && i < 40 * Math.max(opts.trials, 10); i++) {
      const { hop, codec } = combos[i % combos.length]!;
      const vt = THREADS[Math.floor(i / combos.length) % THREADS.length]!;
      const hops: DriveHop[] = spans.map((_, j) =>
        j === hop ? { runtime: advRuntimes[j]!, verifier: verifiers[vt][j]!, cheats: () => adv.stats.cheated } : { runtime: provers[2][j]! },
      );
      const { steps, windows } = await drive(hops, nextCheat(), codec);
      acc.sessions++;
      noteConsistency(`${mode} session ${i}`, windows);
      acc.steps.push(...steps);
      acc.windows.push(...windows);
      const combo = `${hop === 0 ? "hidden" : "logits"}/${codec}`;
      const b = (acc.byCombo[combo] ??= { trials: 0, caught: 0, minStepError: Infinity });
      for (const s of steps.filter((x) => x.cheated)) {
        b.trials++;
        if (s.caught) b.caught++;
        b.minStepError = Math.min(b.minStepError, Math.max(...s.errors));
      }
    }
    for (const r of advRuntimes) await r.release();
    detection[mode] = acc;
    const cheated = acc.steps.filter((s) => s.cheated);
    log(`  ${mode}: ${cheated.filter((s) => s.caught).length} of ${cheated.length} cheated steps caught in ${acc.sessions} sessions`);
  }

  // ---------------------------------------------------------------- 3. catch rate at 0.1 through RouteSession
  log(`catch rate at rate 0.1: ${opts.sessions} RouteSessions per mode`);
  const catchPeers: PeerSpec[] = [
    { peerId: "A1", start: spans[0]![0], end: spans[0]![1], rps: 300, model: honest[1] },
    { peerId: "A2", start: spans[0]![0], end: spans[0]![1], rps: 200, model: honest[2] },
    { peerId: "B1", start: spans[1]![0], end: spans[1]![1], rps: 300, model: honest[1] },
    { peerId: "B2", start: spans[1]![0], end: spans[1]![1], rps: 200, model: honest[2] },
  ];
  const cheaters = new Map<string, AdversarialModel>();
  for (const mode of MODES) {
    // Fresh adversaries (a selective one gets its own first, honest, session again), one per hop.
    for (const [h, [a, b]] of spans.entries()) {
      const m = adversaryFor(mode, opts.seed + 7);
      const peerId = `X-${mode}-${h}`;
      cheaters.set(peerId, m);
      catchPeers.push({ peerId, start: a, end: b, rps: 1e5, model: m });
    }
  }
  const catchSwarm = new InProcessSwarm(c, catchPeers);
  for (const p of cheaters.keys()) catchSwarm.hidden.add(p);
  const nextRoute = workloads(heldOut, opts.seed + 2);
  const catchRng = seededRandom(opts.seed + 3);
  const catching: Record<
    string,
    {
      sessions: number;
      caught: number;
      drawn: number;
      cheatedSessions: number;
      caughtGivenDrawnAndCheated: number;
      drawnAndCheated: number;
      honestCaught: number;
      checks: number;
      tokensMatch: number;
      onRoute: number;
    }
  > = {};
  const runRoute = async (w: Workload, verify?: VerifyPolicy) => {
    const session = await RouteSession.open(catchSwarm, { numBlocks: c.numLayers, maxLength: MAX_LENGTH, verify, random: catchRng });
    try {
      const route = session.route.map((h) => h.peerId);
      const result = await generate(session, tokenizer, w.prompt, { maxTokens: w.decode, sampling: GREEDY, seed: 1, stopAtEos: false });
      return { route, tokens: result.tokens, report: session.verification };
    } finally {
      session.close();
    }
  };
  for (const mode of MODES) {
    const acc = {
      sessions: 0,
      caught: 0,
      drawn: 0,
      cheatedSessions: 0,
      caughtGivenDrawnAndCheated: 0,
      drawnAndCheated: 0,
      honestCaught: 0,
      checks: 0,
      tokensMatch: 0,
      onRoute: 0,
    };
    for (let i = 0; i < opts.sessions; i++) {
      const peerId = `X-${mode}-${i % 2}`;
      const x = cheaters.get(peerId)!;
      catchSwarm.hidden.delete(peerId);
      const w = nextRoute();
      const before = x.stats.cheated;
      const { route, tokens, report } = await runRoute(w, { rate: 0.1 });
      const cheated = x.stats.cheated > before;
      const caught = report.caught.some((e) => e.peerId === peerId);
      const drawn = report.spans.some((s) => s.peerId === peerId && s.checked);
      acc.sessions++;
      if (route.includes(peerId)) acc.onRoute++;
      if (caught) acc.caught++;
      if (drawn) acc.drawn++;
      if (cheated) acc.cheatedSessions++;
      if (drawn && cheated) {
        acc.drawnAndCheated++;
        if (caught) acc.caughtGivenDrawnAndCheated++;
      }
      acc.honestCaught += report.caught.filter((e) => e.peerId !== peerId).length;
      acc.checks += report.checks;
      catchSwarm.hidden.add(peerId);
      if (caught) {
        // A caught session rolled back and re-routed: its text should be an honest run's.
        const reference = await runRoute(w);
        if (reference.tokens.join() === tokens.join()) acc.tokensMatch++;
      }
    }
    catching[mode] = acc;
    for (const h of [0, 1]) await catchSwarm.releasePeer(`X-${mode}-${h}`);
    log(`  ${mode}: caught in ${acc.caught} of ${acc.sessions} sessions (hop drawn in ${acc.drawn}, cheated in ${acc.cheatedSessions})`);
  }
  await catchSwarm.release();

  // ---------------------------------------------------------------- 4. overhead
  log(`overhead: ${opts.rounds} interleaved rounds × ${opts.roundSessions} sessions per configuration`);
  const overheadPeers: PeerSpec[] = [];
  for (const [h, [a, b]] of spans.entries()) {
    for (let n = 1; n <= 4; n++) overheadPeers.push({ peerId: `${h === 0 ? "A" : "B"}${n}`, start: a, end: b, rps: n === 1 ? 300 : 200, model: honest[1] });
  }
  const swarm = new InProcessSwarm(c, overheadPeers);
  const overheadRng = seededRandom(opts.seed + 4);
  const variants: { name: string; verify?: VerifyPolicy; replicas?: number }[] = [
    { name: "baseline" },
    { name: "replay_1_0", verify: { rate: 1 } },
    { name: "replay_0_1", verify: { rate: 0.1 } },
    // Larger windows amortize a check's per-call cost (text is held back longer).
    { name: "replay_1_0_window16", verify: { rate: 1, windowTokens: 16 } },
    { name: "replay_1_0_window32", verify: { rate: 1, windowTokens: 32 } },
    { name: "consensus_k3", verify: { rate: 1, mode: "consensus", k: 3 } },
    { name: "redundant_k3", replicas: 2 },
  ];
  type RoundSample = {
    wallMs: number;
    tokens: number;
    routeMs: number;
    extraMs: number;
    routeCalls: number;
    extraCalls: number;
    checks: number;
    recomputed: number;
    checkedHops: number;
    hops: number;
    caught: number;
    outvoted: number;
  };
  // Two passes per configuration and round: forward calls free to overlap (client latency as
  // this machine gives it), and forward calls one at a time over the swarm (node compute).
  const samples: Record<"concurrent" | "serialized", Record<string, RoundSample[]>> = {
    concurrent: Object.fromEntries(variants.map((v) => [v.name, []])),
    serialized: Object.fromEntries(variants.map((v) => [v.name, []])),
  };
  const nextOverhead = workloads(heldOut, opts.seed + 5);
  // Warm-up: every peer's runtime loaded and run once.
  for (const v of variants) {
    swarm.replicas = v.replicas ?? 0;
    const s = await RouteSession.open(swarm, { numBlocks: c.numLayers, maxLength: MAX_LENGTH, verify: v.verify, random: overheadRng });
    await generate(s, tokenizer, heldOut.slice(0, 16), { maxTokens: 8, sampling: GREEDY, seed: 1, stopAtEos: false });
    s.close();
  }
  for (let r = 0; r < opts.rounds; r++) {
    const round = Array.from({ length: opts.roundSessions }, () => nextOverhead());
    // Rotate the order so no configuration always runs first.
    const order = variants.map((_, i) => variants[(i + r) % variants.length]!);
    for (const [v, pass] of order.flatMap((v) => (["concurrent", "serialized"] as const).map((p) => [v, p] as const))) {
      swarm.replicas = v.replicas ?? 0;
      swarm.clock.serialize = pass === "serialized";
      swarm.clock.reset();
      const sample: RoundSample = {
        wallMs: 0,
        tokens: 0,
        routeMs: 0,
        extraMs: 0,
        routeCalls: 0,
        extraCalls: 0,
        checks: 0,
        recomputed: 0,
        checkedHops: 0,
        hops: 0,
        caught: 0,
        outvoted: 0,
      };
      for (const w of round) {
        const sessionOpts: RouteSessionOptions = { numBlocks: c.numLayers, maxLength: MAX_LENGTH, verify: v.verify, random: overheadRng };
        const t0 = performance.now();
        const s = await RouteSession.open(swarm, sessionOpts);
        const result = await generate(s, tokenizer, w.prompt, { maxTokens: w.decode, sampling: GREEDY, seed: 1, stopAtEos: false });
        sample.wallMs += performance.now() - t0;
        sample.tokens += result.tokens.length;
        const report = s.verification;
        sample.checks += report.checks;
        sample.recomputed += report.recomputedTokens;
        sample.checkedHops += report.spans.filter((x) => x.checked).length;
        sample.hops += report.spans.length;
        sample.caught += report.caught.length;
        sample.outvoted += report.outvoted.length;
        s.close();
      }
      // Verifier checks still in flight when a session settles are awaited by settle({ wait: true }).
      sample.routeMs = swarm.clock.ms.route;
      sample.extraMs = swarm.clock.ms.verifier + swarm.clock.ms.replica;
      sample.routeCalls = swarm.clock.calls.route;
      sample.extraCalls = swarm.clock.calls.verifier + swarm.clock.calls.replica;
      samples[pass][v.name]!.push(sample);
    }
  }
  await swarm.release();
  const overhead: Record<string, unknown> = {};
  for (const v of variants) {
    const perPass = (pass: "concurrent" | "serialized") => {
      const ss = samples[pass][v.name]!;
      const base = samples[pass].baseline!;
      const perToken = ss.map((s) => s.wallMs / s.tokens);
      const ratios = ss.map((s, i) => s.wallMs / s.tokens / (base[i]!.wallMs / base[i]!.tokens) - 1);
      return { ss, perToken, ratios };
    };
    const conc = perPass("concurrent");
    const ser = perPass("serialized");
    const all = [...conc.ss, ...ser.ss];
    overhead[v.name] = {
      extra_node_compute: sig(sum(ser.ss.map((s) => s.extraMs)) / sum(ser.ss.map((s) => s.routeMs))),
      extra_client_latency: v.name === "baseline" ? 0 : sig(median(conc.ratios)),
      ms_per_token: sig(median(conc.perToken)),
      extra_client_latency_by_round: v.name === "baseline" ? undefined : conc.ratios.map((x) => sig(x)),
      extra_client_latency_serialized: v.name === "baseline" ? 0 : sig(median(ser.ratios)),
      ms_per_token_serialized: sig(median(ser.perToken)),
      extra_node_compute_concurrent_pass: sig(sum(conc.ss.map((s) => s.extraMs)) / sum(conc.ss.map((s) => s.routeMs))),
      route_compute_ms: sig(sum(ser.ss.map((s) => s.routeMs))),
      extra_compute_ms: sig(sum(ser.ss.map((s) => s.extraMs))),
      route_forward_calls: sum(ser.ss.map((s) => s.routeCalls)),
      extra_forward_calls: sum(ser.ss.map((s) => s.extraCalls)),
      tokens: sum(all.map((s) => s.tokens)),
      checks: sum(all.map((s) => s.checks)),
      recomputed_tokens: sum(all.map((s) => s.recomputed)),
      checked_hops: sum(all.map((s) => s.checkedHops)),
      hops: sum(all.map((s) => s.hops)),
      caught: sum(all.map((s) => s.caught)),
      outvoted: sum(all.map((s) => s.outvoted)),
    };
  }
  overhead.redundant_k3 = {
    ...(overhead.redundant_k3 as object),
    redundant_steps: swarm.redundancy.steps,
    redundant_disagreements: swarm.redundancy.disagreements,
  };
  for (const r of loaded) await r.release();

  // ---------------------------------------------------------------- results
  const modes: Record<string, unknown> = {};
  let minAdversarial = { error: Infinity, mode: "" };
  for (const mode of MODES) {
    const d = detection[mode]!;
    const cheated = d.steps.filter((s) => s.cheated);
    const rows = cheated.flatMap((s) => s.errors);
    const errs = sortedCopy(rows);
    // A cheated step's error: its worst row (what decides whether that step is caught).
    const stepErrors = sortedCopy(cheated.map((s) => Math.max(...s.errors)));
    if ((stepErrors[0] ?? Infinity) < minAdversarial.error) minAdversarial = { error: stepErrors[0]!, mode };
    const stepMin = (hop: number) => sig(Math.min(...cheated.filter((s) => s.hop === hop).map((s) => Math.max(...s.errors))));
    const k = catching[mode]!;
    const windowsWithCheat = d.windows.filter((w) => w.cheatedSteps > 0);
    modes[mode] = {
      trials: cheated.length,
      detection_rate: sig(cheated.filter((s) => s.caught).length / cheated.length, 6),
      caught_steps: cheated.filter((s) => s.caught).length,
      window_detection_rate: sig(windowsWithCheat.filter((w) => w.flagged).length / windowsWithCheat.length, 6),
      windows_with_cheated_steps: windowsWithCheat.length,
      /** Steps the node did not cheat on whose rows were flagged (should be none). */
      honest_steps_flagged: d.steps.filter((s) => !s.cheated && s.caught).length,
      honest_steps: d.steps.filter((s) => !s.cheated).length,
      min_error: sig(errs[0] ?? NaN),
      median_error: sig(quantile(errs, 0.5)),
      min_step_error: sig(stepErrors[0] ?? NaN),
      p01_step_error: sig(quantile(stepErrors, 0.01)),
      min_step_error_hidden_hop: stepMin(0),
      min_step_error_logits_hop: stepMin(1),
      cheated_rows: errs.length,
      rows_within_tolerance: errs.filter((e) => e <= tolerance.maxRelativeError).length,
      detection_by_output_and_codec: Object.fromEntries(
        Object.entries(d.byCombo).map(([key, v]) => [
          key,
          { trials: v.trials, detection_rate: sig(v.caught / v.trials, 6), min_step_error: sig(v.minStepError) },
        ]),
      ),
      sessions: d.sessions,
      catch_rate_at_0_1: sig(k.caught / k.sessions, 4),
      catch_at_0_1: {
        sessions: k.sessions,
        caught: k.caught,
        cheater_on_route: k.onRoute,
        cheater_hop_drawn: k.drawn,
        cheated: k.cheatedSessions,
        drawn_and_cheated: k.drawnAndCheated,
        caught_given_drawn_and_cheated: k.drawnAndCheated ? sig(k.caughtGivenDrawnAndCheated / k.drawnAndCheated, 4) : null,
        honest_nodes_caught: k.honestCaught,
        checks: k.checks,
        caught_sessions_with_honest_tokens: k.tokensMatch,
      },
    };
  }
  const calibration: Record<string, unknown> = {};
  for (const k of configs) {
    const a = honestRows.get(k.key)!;
    const all = [...a.hidden, ...a.logits];
    calibration[k.key] = {
      windows: a.windows,
      flagged: a.flagged,
      ...distribution(all),
      hidden_max: sig(maxOf(a.hidden)),
      logits_max: sig(maxOf(a.logits)),
    };
  }
  const byCodec = Object.fromEntries(
    CODECS.map((codec) => [
      codec,
      distribution(configs.filter((k) => k.codec === codec).flatMap((k) => [...honestRows.get(k.key)!.hidden, ...honestRows.get(k.key)!.logits])),
    ]),
  );
  const honestMax = maxOf(honestAll);
  // What other tolerances would have given, from the same errors (a row is outside when its error exceeds the tolerance).
  const sweep = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3].map((t) => ({
    tolerance: t,
    honest_windows_flagged: Object.fromEntries(
      CODECS.map((codec) => [
        codec,
        sum(configs.filter((k) => k.codec === codec).map((k) => honestRows.get(k.key)!.windowMax.filter((e) => !(e <= t)).length)),
      ]),
    ),
    detection_rate: Object.fromEntries(
      MODES.map((m) => {
        const cheated = detection[m]!.steps.filter((s) => s.cheated);
        return [m, sig(cheated.filter((s) => s.errors.some((e) => !(e <= t))).length / cheated.length, 4)];
      }),
    ),
  }));
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const cpuFlags = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const o = overhead as Record<
    string,
    { extra_node_compute: number; extra_client_latency: number; ms_per_token: number; extra_client_latency_serialized: number }
  >;
  const detectionOk = MODES.every((m) => (modes[m] as { detection_rate: number }).detection_rate >= 0.99);
  const result = {
    benchmark: "verify",
    date: new Date().toISOString(),
    wall_time_s: Math.round((Date.now() - started) / 1000),
    cpu: {
      model: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
      flags: cpuFlags.filter((f) => /^(avx2|avx512f|avx512_vnni|avx_vnni|fma|f16c|amx_tile|amx_int8)$/.test(f)),
      cores: cpus().length,
      ram_bytes: totalmem(),
      node: process.version,
    },
    model: {
      path: "models/tessera-kjv",
      format: "f32",
      blocks: c.numLayers,
      hidden: c.hiddenSize,
      vocab: c.vocabSize,
      route: spans,
      engine: "servedCheckpoint (ORT CPU), in-process",
    },
    tolerance: tolerance.maxRelativeError,
    settings: {
      quick: opts.quick,
      window_tokens: WINDOW,
      workload: "prompts of 8–32 tokens cut from models/tessera-kjv/eval.txt at random places, then 16–32 greedy decode steps",
      detection:
        "adversary on one hop (hidden-state hop [0, 4) or logits hop [4, 8), alternating, over codecs none/f16/blockwise8, verifier at 1 or 2 threads); every window of 8 positions checked by a fresh SpanCheck (src/swarm/span-check.ts) with one persistent verifier session; a trial is a cheated step (forward call) whose window was checked; detection_rate: share of trials with a row outside the tolerance (firstMismatch of src/verify/compare.ts against the verifier's rows requantized in the prover's codec); window_detection_rate: share of windows holding a cheated step that the SpanCheck caught",
      catch_at_0_1:
        "RouteSession with verify { rate: 0.1 } and no trust hooks (a history-less TrustHooks would force a check of every unknown node), driven by generate() (greedy); the cheater announces 1e5 tokens/s so the router picks it, and two honest holders of each span can verify; it serves the hidden-state hop in even sessions, the logits hop in odd ones",
      overhead:
        "swarm of 4 honest holders per span (1 thread each), codec none; every configuration runs twice per round, interleaved with the no-verification baseline: a concurrent pass (forward calls of route hops, verifiers and replicas free to overlap) and a serialized pass (one forward call at a time over the swarm, so a call's wall time is its compute time). extra_node_compute (serialized pass) = time in SpanSession.forward of verifier (and replica) sessions / that of route hops; extra_client_latency (concurrent pass) = median over rounds of (wall time per generated token) / (the baseline's in the same round and pass) − 1, timing RouteSession.open + generate() (which waits for the last checks). In-process nodes share this machine's cores with each other and with the client, so concurrent verifier or replica work also slows the route here, which nodes on separate machines would not",
      trials_min: opts.trials,
      honest_windows_min: opts.windows,
      sessions_at_0_1: opts.sessions,
      rounds: opts.rounds,
      round_sessions: opts.roundSessions,
    },
    modes,
    false_positive_rate: sig(honestFlagged / honestWindows, 4),
    false_positives: honestFlagged,
    honest_checks: honestWindows,
    honest_sessions: honestSessions,
    honest_max_error: sig(honestMax),
    route_session_false_positives: {
      note: "honest nodes caught or verifiers outvoted in the RouteSessions of the overhead runs (replay and consensus checks of honest swarms) and honest nodes caught in the rate-0.1 runs",
      overhead_checks: sum(variants.map((v) => (overhead[v.name] as { checks: number }).checks)),
      overhead_caught: sum(variants.map((v) => (overhead[v.name] as { caught: number }).caught)),
      overhead_outvoted: sum(variants.map((v) => (overhead[v.name] as { outvoted: number }).outvoted)),
      catch_runs_honest_caught: sum(MODES.map((m) => catching[m]!.honestCaught)),
    },
    calibration: {
      tolerance: tolerance.maxRelativeError,
      honest: {
        all: distribution(honestAll),
        by_codec: byCodec,
        by_output_and_codec: Object.fromEntries(
          (["hidden", "logits"] as const).flatMap((out) =>
            CODECS.map((codec) => [`${out}/${codec}`, distribution(configs.filter((k) => k.codec === codec).flatMap((k) => honestRows.get(k.key)![out]))]),
          ),
        ),
        by_config: calibration,
        worst_rows: {
          note: `the honest rows off by more than ${DIAGNOSE_ABOVE} (worst first, at most 12): how many of the row's values differ from the requantized reference, and the largest difference against the row's largest |value| and its norm (one blockwise8 code step near the block maximum is 0.9/64 ≈ 0.014 of it)`,
          count: honestWorst.length,
          rows: honestWorst
            .sort((a, b) => b.error - a.error)
            .slice(0, 12)
            .map((r) => ({
              ...r,
              error: sig(r.error),
              maxDiffOverAbsMax: sig(r.maxDiffOverAbsMax),
              maxDiffOverNorm: sig(r.maxDiffOverNorm),
              absMaxOverNorm: sig(r.absMaxOverNorm),
            })),
        },
      },
      smallest_adversarial_error_by_output_and_codec: Object.fromEntries(
        ["hidden", "logits"].flatMap((out) =>
          CODECS.map((codec) => {
            const key = `${out}/${codec}`;
            let best = { error: Infinity, mode: "" };
            for (const m of MODES) {
              const e = detection[m]!.byCombo[key]?.minStepError ?? Infinity;
              if (e < best.error) best = { error: sig(e), mode: m };
            }
            return [key, best];
          }),
        ),
      ),
      smallest_adversarial_error: {
        error: sig(minAdversarial.error),
        mode: minAdversarial.mode,
        note: "the smallest worst-row error of a cheated step over all modes",
      },
      smallest_adversarial_row_error: sig(Math.min(...MODES.map((m) => (modes[m] as { min_error: number }).min_error))),
      margin_below: sig(tolerance.maxRelativeError / honestMax),
      margin_above: sig(minAdversarial.error / tolerance.maxRelativeError),
      sweep,
    },
    overhead,
    driver_inconsistencies: inconsistent.slice(0, 20),
    goals: {
      every_mode_caught_99pct_of_verified_steps: {
        met: detectionOk,
        below: Object.fromEntries(
          MODES.flatMap((m) =>
            (modes[m] as { detection_rate: number }).detection_rate < 0.99 ? [[m, (modes[m] as { detection_rate: number }).detection_rate]] : [],
          ),
        ),
      },
      zero_false_positives: { met: honestFlagged === 0, false_positives: honestFlagged, checks: honestWindows },
      replay_1_0_under_25pct_extra_node_compute: { met: o.replay_1_0!.extra_node_compute < 0.25, extra_node_compute: o.replay_1_0!.extra_node_compute },
      redundant_k3_extra_node_compute: o.redundant_k3!.extra_node_compute,
    },
  };

  // ---------------------------------------------------------------- output
  console.log("\ndetection (rate 1.0, per cheated step whose window was checked) and catch rate (rate 0.1, per RouteSession):");
  console.table(
    Object.fromEntries(
      MODES.map((m) => {
        const x = modes[m] as {
          trials: number;
          detection_rate: number;
          window_detection_rate: number;
          min_error: number;
          median_error: number;
          catch_rate_at_0_1: number;
          catch_at_0_1: { sessions: number; caught: number; cheater_hop_drawn: number };
        };
        return [
          m,
          {
            trials: x.trials,
            detection: pct(x.detection_rate),
            window_detection: pct(x.window_detection_rate),
            min_error: exp(x.min_error),
            median_error: exp(x.median_error),
            "catch@0.1": `${pct(x.catch_rate_at_0_1)} (${x.catch_at_0_1.caught}/${x.catch_at_0_1.sessions}, drawn ${x.catch_at_0_1.cheater_hop_drawn})`,
          },
        ];
      }),
    ),
  );
  console.log(
    `\nhonest: ${honestFlagged} false positives in ${honestWindows} windows (rate ${result.false_positive_rate}); max error ${exp(honestMax)}; tolerance ${exp(tolerance.maxRelativeError)}`,
  );
  console.table(
    Object.fromEntries(
      configs.map((k) => {
        const x = calibration[k.key] as { windows: number; flagged: number; p99: number; p999: number; max: number; hidden_max: number; logits_max: number };
        return [
          k.key,
          {
            windows: x.windows,
            flagged: x.flagged,
            p99: exp(x.p99),
            "p99.9": exp(x.p999),
            max: exp(x.max),
            hidden_max: exp(x.hidden_max),
            logits_max: exp(x.logits_max),
          },
        ];
      }),
    ),
  );
  console.log("\nseparation by output and codec (honest rows vs the smallest worst-row error of a cheated step):");
  const sepHonest = result.calibration.honest.by_output_and_codec as Record<string, { max: number; p999: number }>;
  const sepAdv = result.calibration.smallest_adversarial_error_by_output_and_codec as Record<string, { error: number; mode: string }>;
  console.table(
    Object.fromEntries(
      Object.keys(sepHonest).map((key) => [
        key,
        {
          "honest p99.9": exp(sepHonest[key]!.p999),
          "honest max": exp(sepHonest[key]!.max),
          "adversary min": exp(sepAdv[key]!.error),
          mode: sepAdv[key]!.mode,
        },
      ]),
    ),
  );
  console.log(`smallest adversarial step error ${exp(minAdversarial.error)} (${minAdversarial.mode}); other tolerances on the same errors:`);
  console.table(
    Object.fromEntries(
      sweep.map((x) => [
        exp(x.tolerance),
        {
          ...Object.fromEntries(CODECS.map((codec) => [`FP ${codec}`, x.honest_windows_flagged[codec]])),
          ...Object.fromEntries(MODES.map((m) => [m, pct(x.detection_rate[m]!)])),
        },
      ]),
    ),
  );
  console.log("\noverhead:");
  console.table(
    Object.fromEntries(
      variants.map((v) => {
        const x = o[v.name]!;
        return [
          v.name,
          {
            extra_node_compute: pct(x.extra_node_compute),
            extra_client_latency: pct(x.extra_client_latency),
            ms_per_token: x.ms_per_token.toFixed(2),
            "extra latency, serialized": pct(x.extra_client_latency_serialized),
          },
        ];
      }),
    ),
  );
  console.log("goals:", JSON.stringify(result.goals, null, 1));
  if (inconsistent.length) console.log(`driver inconsistencies (SpanCheck verdict ≠ per-row verdict): ${inconsistent.length}`);
  mkdirSync(opts.out, { recursive: true });
  writeFileSync(join(opts.out, "verify.json"), JSON.stringify(result, null, 2) + "\n");
  writeFileSync(
    join(opts.out, "verify.svg"),
    errorDistributionSvg({
      title: "Replay verification: row errors against the verifier's recomputation",
      tolerance: tolerance.maxRelativeError,
      rows: [
        ...(["hidden", "logits"] as const).flatMap((out) =>
          CODECS.map((codec) => ({
            label: `honest ${out}, ${codec}`,
            kind: "honest" as const,
            values: configs.filter((k) => k.codec === codec).flatMap((k) => honestRows.get(k.key)![out]),
          })),
        ),
        ...MODES.flatMap((m) =>
          [0, 1].map((hop) => ({
            label: `${m}, ${hop === 0 ? "hidden" : "logits"}`,
            kind: "adversary" as const,
            values: detection[m]!.steps.filter((s) => s.cheated && s.hop === hop).flatMap((s) => s.errors),
          })),
        ),
      ],
      footer: `shipped model, f32, windows of ${WINDOW}; ${result.cpu.model}, ${result.cpu.cores} cores; ${result.date.slice(0, 10)}`,
    }),
  );
  console.log(`wrote ${join(opts.out, "verify.json")} and verify.svg (${elapsed()})`);
}
