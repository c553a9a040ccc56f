// A client session over a route of nodes, with nodes run in-process behind the SpanProvider
// interface: equality with local generation, and failover with history replay.
import assert from "node:assert/strict";
import { test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { SpanRunner } from "../src/engine/runtime.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { BanList, FIRST_BAN_MS } from "../src/swarm/bans.js";
import type { ForwardInput, ForwardOutput, SpanSession } from "../src/engine/interface.js";
import type { LinkRequest, PushTarget } from "../src/swarm/protocol.js";
import type { Hop, SpanRecord } from "../src/swarm/records.js";
import {
  mergeRecords,
  PUSH_GRACE_FLOOR_MS,
  PUSH_GRACE_MS,
  pushGrace,
  type RemoteSpan,
  RouteSession,
  type SpanProvider,
  type StepOptions,
} from "../src/swarm/route-session.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";

interface StepTrace {
  peerId: string;
  stepId: number | undefined;
}

/**
 * Peers serving spans of one checkpoint in this process; `dead` makes a peer fail every call.
 * Sessions behave as a SpanNode's do: steps run one at a time and once per step id (pushed or
 * relayed, whichever comes first), each answered once on the client's queue of replies; linked
 * sessions push their outputs to the next one unless `dropPush` says the push is lost.
 */
class InProcessSwarm implements SpanProvider {
  readonly dead = new Set<string>();
  /** Peers that open sessions and then answer every step with an error. */
  readonly failing = new Set<string>();
  readonly opened: Hop[] = [];
  /** The block ranges each records() call asked for (undefined: all). */
  readonly asked: ({ start: number; end: number } | undefined)[] = [];
  /** Steps the client sent a hop itself (first hops, relays, replays). */
  readonly forwards: StepTrace[] = [];
  /** Every wait for a pushed result: its grace, and whether the result came, was late, or the hop failed. */
  readonly waits: (StepTrace & { graceMs: number; outcome: "pushed" | "late" | "failed" })[] = [];
  dropPush?: (fromPeer: string, stepId: number) => boolean;
  private runners = new Map<string, Promise<SpanRunner>>();
  private readonly sessions = new Map<string, InProcessSpan>();
  private sessionCounter = 0;

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly peers: { peerId: string; start: number; end: number; rps: number }[],
  ) {}

  async records(range?: { start: number; end: number }): Promise<SpanRecord[]> {
    this.asked.push(range && { ...range });
    // Like the DHT: only the holders of blocks in the range are found.
    const found = range ? this.peers.filter((p) => p.start < range.end && range.start < p.end) : this.peers;
    return found.map((p) => ({ ...p, state: "online", throughput: p.rps, inferenceRps: p.rps, cacheTokensLeft: 1e6, nextPings: {} }));
  }

  rtts(): ReadonlyMap<string, number> {
    return new Map(this.peers.map((p) => [p.peerId, 0.001]));
  }

  async open(hop: Hop, maxLength: number): Promise<RemoteSpan> {
    this.opened.push(hop);
    const L = this.checkpoint.config.numLayers;
    const key = `${hop.start}:${hop.end}`;
    let runner = this.runners.get(key);
    if (!runner) {
      runner = SpanRunner.load(this.checkpoint, { start: hop.start, end: hop.end, embed: hop.start === 0, head: hop.end === L }, { maxSequence: 256 });
      this.runners.set(key, runner);
    }
    const span = new InProcessSpan(this, hop, `s${++this.sessionCounter}`, (await runner).openSession(maxLength));
    this.sessions.set(span.sessionId, span);
    return span;
  }

  session(id: string): InProcessSpan | undefined {
    return this.sessions.get(id);
  }

  async release(): Promise<void> {
    for (const r of this.runners.values()) await (await r).release();
  }
}

interface InProcessStep {
  id: number | undefined;
  push: boolean;
  allLogits: boolean;
}

class InProcessSpan implements RemoteSpan {
  private lastStepId = 0;
  private queue: Promise<void> = Promise.resolve();
  private replies: ({ stepId: number | undefined; output: ForwardOutput } | Error)[] = [];
  private waiting?: () => void;
  private next?: InProcessSpan;
  private prev?: string;

  constructor(
    private readonly swarm: InProcessSwarm,
    readonly hop: Hop,
    readonly sessionId: string,
    private readonly session: SpanSession,
  ) {}

  private alive(): void {
    if (this.swarm.dead.has(this.hop.peerId)) throw new Error(`peer ${this.hop.peerId} is unreachable`);
  }

  /** Runs a step once (a dead peer runs nothing), replies to the client, and pushes when asked and linked. */
  private run(input: ForwardInput, step: InProcessStep): void {
    const go = async () => {
      if (this.swarm.dead.has(this.hop.peerId)) return;
      if (step.id !== undefined) {
        if (step.id <= this.lastStepId) return;
        this.lastStepId = step.id;
      }
      if (this.swarm.failing.has(this.hop.peerId)) return this.reply(new Error(`peer ${this.hop.peerId}: INTERNAL: every step fails`));
      let output: ForwardOutput;
      try {
        output = await this.session.forward(input, { allLogits: step.allLogits });
      } catch (e) {
        return this.reply(e instanceof Error ? e : new Error(String(e)));
      }
      const next = this.next;
      if (step.push && output.hidden && next && step.id !== undefined && !this.swarm.dropPush?.(this.hop.peerId, step.id)) {
        if (next.prev === this.hop.peerId) next.run({ hidden: output.hidden }, step);
      }
      this.reply({ stepId: step.id, output });
    };
    this.queue = this.queue.then(go, go);
  }

  private reply(r: { stepId: number | undefined; output: ForwardOutput } | Error): void {
    this.replies.push(r);
    this.waiting?.();
  }

  /** The next reply, or undefined after `timeoutMs`. */
  private async receive(stepId: number | undefined, timeoutMs?: number): Promise<ForwardOutput | undefined> {
    if (!this.replies.length) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.waiting = resolve;
        if (timeoutMs !== undefined) timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      this.waiting = undefined;
    }
    const r = this.replies.shift();
    if (r === undefined) return undefined;
    if (r instanceof Error) throw r;
    if (r.stepId !== stepId) throw new Error(`${this.hop.peerId}: expected the result of step ${stepId}, got ${r.stepId}`);
    return r.output;
  }

  async forward(input: ForwardInput, opts: StepOptions): Promise<ForwardOutput> {
    this.alive();
    this.swarm.forwards.push({ peerId: this.hop.peerId, stepId: opts.stepId });
    this.run(input, { id: opts.stepId, push: Boolean(opts.push), allLogits: Boolean(opts.allLogits) });
    const output = await this.receive(opts.stepId);
    if (!output) throw new Error("no reply");
    return output;
  }

  async truncate(position: number): Promise<void> {
    this.alive();
    await this.queue;
    this.session.truncate(position);
  }

  async close(): Promise<void> {
    this.session.close();
  }

  readonly chain = {
    target: (): PushTarget => ({ peerId: this.hop.peerId, sessionId: this.sessionId, addrs: [] }),
    link: async (link: LinkRequest): Promise<void> => {
      this.alive();
      this.next = link.next && this.swarm.session(link.next.sessionId);
      this.prev = link.prev;
    },
    pushed: async (stepId: number, _tokens: number, _allLogits: boolean, graceMs: number): Promise<ForwardOutput | undefined> => {
      const wait = { peerId: this.hop.peerId, stepId, graceMs, outcome: "failed" as "pushed" | "late" | "failed" };
      this.swarm.waits.push(wait);
      this.alive();
      const output = await this.receive(stepId, graceMs);
      wait.outcome = output ? "pushed" : "late";
      return output;
    },
  };
}

async function greedy(session: { append(t: number[]): Promise<Float32Array> }, prompt: number[], count: number, onToken?: (i: number) => void) {
  let logits = await session.append(prompt);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    out.push(argmax(logits));
    onToken?.(i);
    logits = await session.append([out.at(-1)!]);
  }
  return out;
}

test("replacements that open and then fail their replay are banned and routed around within the failover budget", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(checkpoint, [
    { peerId: "A", start: 0, end: 2, rps: 200 },
    { peerId: "B", start: 2, end: 4, rps: 300 },
    { peerId: "S1", start: 2, end: 4, rps: 250 },
    { peerId: "S2", start: 2, end: 4, rps: 220 },
    { peerId: "C", start: 2, end: 4, rps: 10 },
  ]);
  swarm.failing.add("S1").add("S2");
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 256 });
  try {
    const prompt = sampleTokens(7, 512, 23);
    const expected = await greedy(local.openSession(64), prompt, 10);
    const failovers: string[] = [];
    const session = await RouteSession.open(swarm, {
      numBlocks: 4,
      maxLength: 64,
      chained: false,
      onFailover: (e) => failovers.push(`${e.peerId}→${e.replacement.map((h) => h.peerId)}`),
    });
    assert.deepEqual(
      session.route.map((h) => h.peerId),
      ["A", "B"],
    );
    const tokens = await greedy(session, prompt, 10, (i) => {
      if (i === 4) swarm.dead.add("B");
    });
    assert.deepEqual(tokens, expected);
    // S1 and S2 each opened, failed the replay of B's history and were banned; C took it.
    assert.deepEqual(failovers, ["B→C"]);
    assert.deepEqual(
      swarm.opened.filter((h) => h.start === 2).map((h) => h.peerId),
      ["B", "S1", "S2", "C"],
    );
    session.close();
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("a session routed over three nodes generates what the local engine generates, and survives a node dying mid-generation", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(checkpoint, [
    { peerId: "A", start: 0, end: 2, rps: 200 },
    { peerId: "B", start: 2, end: 4, rps: 200 },
    { peerId: "C", start: 1, end: 4, rps: 50 },
  ]);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 256 });
  try {
    const prompt = sampleTokens(7, 512, 17);
    const expected = await greedy(local.openSession(64), prompt, 20);

    const healthy = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 64 });
    assert.deepEqual(healthy.route, [
      { peerId: "A", start: 0, end: 2 },
      { peerId: "B", start: 2, end: 4 },
    ]);
    assert.deepEqual(await greedy(healthy, prompt, 20), expected);
    // In-process "nodes" answer in about their compute time: the measured overhead is far below Petals' 18 ms.
    const overhead = healthy.measuredHopOverhead;
    assert.ok(overhead !== undefined && overhead >= 0 && overhead < 0.018, `measured hop overhead ${overhead} s`);
    healthy.close();

    const failovers: { peerId: string; replacement: Hop[] }[] = [];
    swarm.asked.length = 0;
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 64, onFailover: (e) => failovers.push(e) });
    const tokens = await greedy(session, prompt, 20, (i) => {
      if (i === 8) swarm.dead.add("B");
    });
    assert.deepEqual(tokens, expected, "same tokens as without the failure");
    assert.deepEqual(
      failovers.map((f) => [f.peerId, f.replacement]),
      [["B", [{ peerId: "C", start: 2, end: 4 }]]],
    );
    assert.deepEqual(session.route, [
      { peerId: "A", start: 0, end: 2 },
      { peerId: "C", start: 2, end: 4 },
    ]);
    // Opening looked up every block's holders; the re-route only those of the failed hop's blocks.
    assert.deepEqual(swarm.asked, [
      { start: 0, end: 4 },
      { start: 2, end: 4 },
    ]);
    session.close();
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("with no other server for its blocks, a failing route gives up with the error after its retries", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(checkpoint, [{ peerId: "solo", start: 0, end: 4, rps: 100 }]);
  try {
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 32, maxRetries: 2 });
    await session.append([1, 2, 3]);
    swarm.dead.add("solo");
    await assert.rejects(session.append([4]), /peer solo is unreachable/);
    assert.equal(session.length, 3, "a failed step does not advance the session");
  } finally {
    await swarm.release();
  }
});

test("a swarm of many failing nodes does not exhaust the client: it bans each and moves on while an honest node covers the blocks", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const sybils = Array.from({ length: 12 }, (_, i) => ({ peerId: `sybil${i}`, start: 0, end: 4, rps: 1e6 }));
  const swarm = new InProcessSwarm(checkpoint, [...sybils, { peerId: "honest", start: 0, end: 4, rps: 10 }]);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 64 });
  try {
    for (const s of sybils) swarm.dead.add(s.peerId);
    const expected = await greedy(local.openSession(32), [1, 2, 3], 4);
    const failovers: string[] = [];
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 32, onFailover: (e) => failovers.push(e.peerId) });
    assert.deepEqual(await greedy(session, [1, 2, 3], 4), expected);
    assert.equal(new Set(failovers).size, 12, "every failing node was tried once and banned");
    assert.deepEqual(session.route, [{ peerId: "honest", start: 0, end: 4 }]);
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("a step that fails part-way rolls back the hops that ran it: once the node is back, the session goes on as if it never happened", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(checkpoint, [
    { peerId: "A", start: 0, end: 2, rps: 100 },
    { peerId: "B", start: 2, end: 4, rps: 100 },
  ]);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 64 });
  try {
    const reference = local.openSession(32);
    await reference.append([1, 2, 3]);
    const expected = await reference.append([4]);
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 32, maxRetries: 1 });
    await session.append([1, 2, 3]);
    swarm.dead.add("B");
    await assert.rejects(session.append([4]), /peer B is unreachable/);
    swarm.dead.delete("B");
    const logits = await session.append([4]);
    assert.equal(session.length, 4);
    assert.equal(argmax(logits), argmax(expected));
    let diff = 0;
    for (let i = 0; i < logits.length; i++) diff = Math.max(diff, Math.abs(logits[i]! - expected[i]!));
    assert.ok(diff < 1e-4, `logits equal the local run's (max diff ${diff})`);
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("bans back off exponentially and expire", () => {
  const bans = new BanList();
  assert.equal(bans.ban("p", 0), FIRST_BAN_MS);
  assert.ok(bans.isBanned("p", FIRST_BAN_MS - 1));
  assert.ok(!bans.isBanned("p", FIRST_BAN_MS));
  assert.equal(bans.ban("p", FIRST_BAN_MS), 2 * FIRST_BAN_MS);
  assert.equal(bans.ban("p", 10 * FIRST_BAN_MS), 4 * FIRST_BAN_MS);
  assert.deepEqual([...bans.banned(10 * FIRST_BAN_MS)], ["p"]);
});

/** The client's waits for pushed results of step `id`, and the hops it sent that step itself. */
function stepTrace(swarm: InProcessSwarm, id: number) {
  return {
    waits: swarm.waits.filter((w) => w.stepId === id).map((w) => `${w.peerId}:${w.outcome}`),
    sent: swarm.forwards.filter((f) => f.stepId === id).map((f) => f.peerId),
  };
}

test("a lost push costs one grace wait: the client relays the rest of that step itself, and the grace follows measured pushes", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(
    checkpoint,
    ["A", "B", "C", "D"].map((peerId, i) => ({ peerId, start: i, end: i + 1, rps: 200 })),
  );
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 256 });
  try {
    const prompt = sampleTokens(7, 512, 23);
    const expected = await greedy(local.openSession(64), prompt, 12);
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 64, chained: true });
    assert.equal(session.chaining, true);
    assert.deepEqual(
      session.route.map((h) => h.peerId),
      ["A", "B", "C", "D"],
    );

    // Step 1 is the prompt, token i's step is i + 2: A's push of step 10 is lost on its way to B.
    const lost = 10;
    swarm.dropPush = (from, stepId) => from === "A" && stepId === lost;
    assert.deepEqual(await greedy(session, prompt, 12), expected);

    // One grace wait (at B), then B, C and D relayed without waiting for pushes: not hops × grace.
    assert.deepEqual(stepTrace(swarm, lost), { waits: ["B:late"], sent: ["A", "B", "C", "D"] });
    // The next step is pushed down the whole route again.
    assert.deepEqual(stepTrace(swarm, lost + 1), { waits: ["B:pushed", "C:pushed", "D:pushed"], sent: ["A"] });
    // The prompt and the first decode step waited up to the full cap (nothing measured yet);
    // once B's pushed decode steps were timed, the lost push cost a few times that, not a second.
    const graceAtB = (stepId: number) => swarm.waits.find((w) => w.stepId === stepId && w.peerId === "B")?.graceMs;
    assert.equal(graceAtB(1), PUSH_GRACE_MS);
    assert.equal(graceAtB(2), PUSH_GRACE_MS);
    const adapted = graceAtB(lost);
    assert.ok(adapted !== undefined && adapted >= PUSH_GRACE_FLOOR_MS && adapted < PUSH_GRACE_MS, `grace ${adapted} ms`);
    session.close();
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("after a chained hop is replaced, the client relays the rest of that step instead of waiting for pushes", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const swarm = new InProcessSwarm(checkpoint, [
    ...["A", "B", "C", "D"].map((peerId, i) => ({ peerId, start: i, end: i + 1, rps: 200 })),
    { peerId: "E", start: 2, end: 3, rps: 50 },
  ]);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 256 });
  try {
    const prompt = sampleTokens(7, 512, 29);
    const expected = await greedy(local.openSession(64), prompt, 10);
    const failovers: string[] = [];
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 64, chained: true, onFailover: (e) => failovers.push(e.peerId) });
    assert.deepEqual(
      session.route.map((h) => h.peerId),
      ["A", "B", "C", "D"],
    );
    swarm.asked.length = 0;
    const tokens = await greedy(session, prompt, 10, (i) => {
      if (i === 5) swarm.dead.add("C"); // before step 7 (token i is appended in step i + 2)
    });
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, ["C"]);
    assert.deepEqual(
      session.route.map((h) => h.peerId),
      ["A", "B", "E", "D"],
    );
    assert.deepEqual(swarm.asked, [{ start: 2, end: 3 }], "the re-route looked up block 2's holders only");
    // C failed while the client waited for its push; E got the replay (no step id) and the step, and D the step from the client.
    assert.deepEqual(stepTrace(swarm, 7), { waits: ["B:pushed", "C:failed"], sent: ["A", "E", "D"] });
    assert.deepEqual(stepTrace(swarm, 8), { waits: ["B:pushed", "E:pushed", "D:pushed"], sent: ["A"] });
    session.close();
  } finally {
    await local.release();
    await swarm.release();
  }
});

test("the push grace is a few times the measured push latency, within the floor and the cap; merged records drop nodes not found again", () => {
  assert.equal(pushGrace(undefined, 1000), 1000, "the cap until something was measured");
  assert.equal(pushGrace(2, 1000), PUSH_GRACE_FLOOR_MS);
  assert.equal(pushGrace(100, 1000, 4), 400);
  assert.equal(pushGrace(600, 1000, 4), 1000);
  assert.equal(pushGrace(Number.NaN, 1000), 1000);

  const rec = (peerId: string, start: number, end: number): SpanRecord => ({
    peerId,
    start,
    end,
    state: "online",
    throughput: 1,
    cacheTokensLeft: 1,
    nextPings: {},
  });
  const merged = mergeRecords([rec("A", 0, 2), rec("B", 2, 4), rec("C", 1, 4)], [rec("C", 2, 4), rec("D", 2, 3)], { start: 2, end: 4 });
  assert.deepEqual(
    merged.map((r) => [r.peerId, r.start, r.end]),
    [
      ["A", 0, 2],
      ["C", 2, 4],
      ["D", 2, 3],
    ],
  );
});
