// The adversarial node of test/support/adversary.ts: each mode misbehaves as intended (relative
// L2 errors against the honest engine reported as diagnostics), honest is the engine itself, and
// the node script starts, listens, and reports the steps it cheated on.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import type { ForwardInput, ServedModel, SpanRuntime } from "../src/engine/interface.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { SwarmClient } from "../src/swarm/client.js";
import { defaultModelId } from "../src/swarm/model-id.js";
import { stopNode } from "../src/swarm/node-process.js";
import { buildManifest, writeManifest } from "../src/verify/manifest.js";
import { type AdversaryMode, type AdversaryOptions, adversarialModel, type Cheat, seededRandom, spawnAdversary } from "./support/adversary.js";
import { hfModel, sampleTokens, workDir } from "./support/fixtures.js";

const ENGINE = { maxSequence: 128, threads: 1 };
const PROMPT = 8;
const DECODE = 6;

let loaded: Promise<{ checkpoint: Checkpoint; honest: ServedModel }> | undefined;
const runtimes: SpanRuntime[] = [];
after(async () => {
  for (const r of runtimes) await r.release();
});

function model() {
  loaded ??= (async () => {
    const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
    return { checkpoint, honest: await servedCheckpoint(checkpoint, ENGINE) };
  })();
  return loaded;
}

async function load(m: ServedModel, start: number, end: number): Promise<SpanRuntime> {
  const r = await m.load(start, end);
  runtimes.push(r);
  return r;
}

/** A prefill of PROMPT positions, then DECODE one-position steps (tokens for a first span, hidden states otherwise). */
function inputs(embed: boolean, hiddenSize: number, seed = 1): ForwardInput[] {
  if (embed) {
    const tokens = sampleTokens(PROMPT + DECODE, 512, seed);
    return [{ tokens: tokens.slice(0, PROMPT) }, ...tokens.slice(PROMPT).map((t) => ({ tokens: [t] }))];
  }
  const rng = seededRandom(seed);
  const hidden = (n: number) => Float32Array.from({ length: n * hiddenSize }, () => 2 * rng() - 1);
  return [{ hidden: hidden(PROMPT) }, ...Array.from({ length: DECODE }, () => ({ hidden: hidden(1) }))];
}

/** Runs the steps on a fresh session: each step's output (logits or hidden) and the session length after it. */
async function run(runtime: SpanRuntime, steps: ForwardInput[]): Promise<{ outs: Float32Array[]; lengths: number[] }> {
  const s = runtime.openSession(64);
  const outs: Float32Array[] = [];
  const lengths: number[] = [];
  for (const input of steps) {
    const out = await s.forward(input);
    outs.push((out.logits ?? out.hidden)!);
    lengths.push(s.length);
  }
  s.close();
  return { outs, lengths };
}

/** ‖a − b‖ / ‖b‖ over all the steps' outputs. */
function relativeL2(a: Float32Array[], b: Float32Array[]): number {
  let diff = 0;
  let norm = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    assert.equal(x.length, y.length);
    for (let j = 0; j < x.length; j++) {
      diff += (x[j]! - y[j]!) ** 2;
      norm += y[j]! ** 2;
    }
  });
  return Math.sqrt(diff / norm);
}

async function compare(mode: AdversaryMode, start: number, end: number, opts: AdversaryOptions = {}) {
  const { checkpoint, honest } = await model();
  const cheats: Cheat[] = [];
  const adversary = adversarialModel(honest, mode, { checkpoint, engine: ENGINE, onCheat: (c) => cheats.push(c), ...opts });
  const steps = inputs(start === 0, honest.config.hiddenSize);
  const expected = await run(await load(honest, start, end), steps);
  const got = await run(await load(adversary, start, end), steps);
  assert.deepEqual(got.lengths, expected.lengths, "the session length grows as the honest one's");
  return { expected, got, cheats, error: relativeL2(got.outs, expected.outs), adversary };
}

test("honest is the engine itself, bit for bit", async (t) => {
  for (const [start, end] of [
    [0, 4],
    [1, 3],
  ] as const) {
    const { expected, got, cheats, error } = await compare("honest", start, end);
    assert.deepEqual(got.outs, expected.outs);
    assert.equal(cheats.length, 0);
    t.diagnostic(`honest [${start}, ${end}): relative L2 ${error}`);
  }
});

test("noise modes add noise of 1% and 50% of each row's RMS, to logits and to hidden states", async (t) => {
  for (const [mode, lo, hi] of [
    ["noise-small", 0.007, 0.013],
    ["noise-large", 0.4, 0.6],
  ] as const) {
    for (const [start, end] of [
      [0, 4],
      [1, 3],
    ] as const) {
      const { cheats, error } = await compare(mode, start, end);
      t.diagnostic(`${mode} [${start}, ${end}): relative L2 ${error.toFixed(4)}`);
      assert.ok(error > lo && error < hi, `${mode}: ${error}`);
      assert.deepEqual(
        cheats.map((c) => c.step),
        Array.from({ length: 1 + DECODE }, (_, i) => i),
      );
    }
  }
});

test("perturbed, skip-block and q4 run other weights of the same shapes", async (t) => {
  const errors: Record<string, number> = {};
  for (const mode of ["perturbed", "skip-block", "q4"] as const) {
    const { cheats, error } = await compare(mode, 0, 4);
    errors[mode] = error;
    t.diagnostic(`${mode} [0, 4): relative L2 ${error.toFixed(4)}`);
    assert.ok(error > 1e-4, `${mode} differs from the honest model: ${error}`);
    assert.equal(cheats.length, 1 + DECODE);
  }
  assert.ok(errors["perturbed"]! < 0.5 && errors["q4"]! < 0.5);
  // A skipped block is exactly the identity: [1, 3) skipping block 1 computes what [2, 3) computes.
  const { checkpoint, honest } = await model();
  const steps = inputs(false, honest.config.hiddenSize, 5);
  const skipped = await run(await load(adversarialModel(honest, "skip-block", { checkpoint, engine: ENGINE }), 1, 3), steps);
  const rest = await run(await load(honest, 2, 3), steps);
  const error = relativeL2(skipped.outs, rest.outs);
  t.diagnostic(`skip-block [1, 3) vs honest [2, 3): relative L2 ${error}`);
  assert.ok(error < 1e-5, `${error}`);
  // Single-block spans keep their embedding or head.
  for (const [start, end] of [
    [0, 1],
    [3, 4],
  ] as const) {
    const { error } = await compare("skip-block", start, end);
    t.diagnostic(`skip-block [${start}, ${end}): relative L2 ${error.toFixed(4)}`);
    assert.ok(error > 1e-4);
  }
});

test("stale replays the last decode output without computing, keeping lengths and the cache consistent", async (t) => {
  for (const [start, end] of [
    [0, 4],
    [1, 3],
  ] as const) {
    const { expected, got, cheats, error } = await compare("stale", start, end);
    t.diagnostic(`stale [${start}, ${end}): relative L2 ${error.toFixed(4)}`);
    assert.deepEqual(got.outs.slice(0, 2), expected.outs.slice(0, 2), "the prefill and the first decode step are computed");
    for (const out of got.outs.slice(2)) assert.deepEqual(out, got.outs[1], "later decode steps replay it");
    assert.ok(relativeL2(got.outs.slice(2), expected.outs.slice(2)) > 0.05);
    assert.deepEqual(
      cheats.map((c) => c.step),
      Array.from({ length: DECODE - 1 }, (_, i) => i + 2),
    );
  }
  // The skipped inputs still reach the cache: after a rollback and a prefill the session computes honestly.
  const { honest } = await model();
  const steps = inputs(true, honest.config.hiddenSize, 9);
  const tail = { tokens: sampleTokens(3, 512, 77) };
  const runWithTail = async (runtime: SpanRuntime) => {
    const s = runtime.openSession(64);
    for (const input of steps) await s.forward(input);
    s.truncate(s.length - 1);
    const out = await s.forward(tail);
    const length = s.length;
    s.close();
    return { logits: out.logits!, length };
  };
  const want = await runWithTail(await load(honest, 0, 4));
  const gotTail = await runWithTail(await load(adversarialModel(honest, "stale"), 0, 4));
  assert.equal(gotTail.length, want.length);
  assert.deepEqual(gotTail.logits, want.logits);
});

test("throughput-lie computes honestly, slowly", async (t) => {
  const t0 = performance.now();
  const { expected, got, cheats, error } = await compare("throughput-lie", 0, 4, { delayMs: 25 });
  const ms = performance.now() - t0;
  t.diagnostic(`throughput-lie [0, 4): relative L2 ${error}, ${ms.toFixed(0)} ms for ${1 + DECODE} steps`);
  assert.deepEqual(got.outs, expected.outs);
  assert.equal(cheats.length, 1 + DECODE);
  assert.ok(ms >= 25 * (1 + DECODE));
});

test("selective is honest in its first session and every session's first steps, then cheats on some steps", async (t) => {
  const { honest } = await model();
  const cheats: Cheat[] = [];
  const adversary = adversarialModel(honest, "selective", { seed: 3, onCheat: (c) => cheats.push(c) });
  const honestRuntime = await load(honest, 0, 4);
  const runtime = await load(adversary, 0, 4);
  const long = sampleTokens(40, 512, 11).map((t) => ({ tokens: [t] }));
  const steps = [{ tokens: sampleTokens(PROMPT, 512, 12) }, ...long];
  const expected = await run(honestRuntime, steps);
  const trial = await run(runtime, steps);
  assert.deepEqual(trial.outs, expected.outs, "the first session (the trial) is honest");
  assert.equal(cheats.length, 0);
  const errors: number[] = [];
  for (let session = 1; session <= 3; session++) {
    const got = await run(runtime, steps);
    assert.deepEqual(got.lengths, expected.lengths);
    const cheated = new Set(cheats.filter((c) => c.session === session).map((c) => c.step));
    got.outs.forEach((out, step) => {
      if (cheated.has(step)) errors.push(relativeL2([out], [expected.outs[step]!]));
      else assert.deepEqual(out, expected.outs[step], `session ${session} step ${step} is honest`);
    });
    assert.ok(
      [...cheated].every((s) => s >= 4),
      "the first 4 steps of every session are honest",
    );
  }
  const rate = cheats.length / (3 * (steps.length - 4));
  t.diagnostic(
    `selective [0, 4): ${cheats.length} of ${3 * steps.length} steps cheated (${(100 * rate).toFixed(0)}% of the eligible), relative L2 of those ${errors.map((e) => e.toFixed(3)).join(" ")}`,
  );
  assert.ok(cheats.length > 0 && rate < 0.3, `${cheats.length} cheats`);
  assert.ok(errors.every((e) => e > 0.3));
  // The same seed picks the same steps.
  const again: Cheat[] = [];
  const replay = await load(adversarialModel(honest, "selective", { seed: 3, onCheat: (c) => again.push(c) }), 0, 4);
  for (let session = 0; session <= 3; session++) await run(replay, steps);
  assert.deepEqual(again, cheats);
});

test("the adversary node process listens, announces the honest manifest, serves a client, and reports the steps it cheated on", async () => {
  const dir = await hfModel("tiny-llama");
  const checkpoint = await openCheckpoint(dir);
  const manifest = await buildManifest(checkpoint, "f32");
  const manifestFile = join(workDir, "adversary-manifest.json");
  await writeManifest(manifestFile, manifest);
  const node = await spawnAdversary(dir, 0, 4, "noise-large", ["--max-session", "256", "--manifest", manifestFile]);
  try {
    assert.match(node.addr, /\/p2p\//);
    const client = await SwarmClient.connect([node.addr], checkpoint.config, {
      modelId: defaultModelId(dir),
      manifestId: manifest.id,
      stepTimeoutMs: 20_000,
    });
    try {
      const session = await client.openSession(32);
      await session.append(sampleTokens(5, 512, 4));
      await session.append([7]);
      await session.append([8]);
      session.close();
    } finally {
      await client.close();
    }
    const deadline = Date.now() + 5000;
    while (node.cheats().length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(
      node.cheats().map((c) => `${c.session} ${c.step} ${c.mode} ${c.start}:${c.end}`),
      ["0 0 noise-large 0:4", "0 1 noise-large 0:4", "0 2 noise-large 0:4"],
    );
  } finally {
    await stopNode(node.proc);
  }
  assert.match(node.stderr(), /^summary \{"mode":"noise-large","sessions":1,"steps":3,"cheated":3\}$/m);
});
