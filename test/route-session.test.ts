// A client session over a route of nodes, with nodes run in-process behind the SpanProvider
// interface: equality with local generation, and failover with history replay.
import assert from "node:assert/strict";
import { test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { SpanRunner } from "../src/engine/runtime.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { BanList, FIRST_BAN_MS } from "../src/swarm/bans.js";
import type { Hop, SpanRecord } from "../src/swarm/records.js";
import { type RemoteSpan, RouteSession, type SpanProvider } from "../src/swarm/route-session.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";

/** Peers serving spans of one checkpoint in this process; `kill` makes a peer fail every call. */
class InProcessSwarm implements SpanProvider {
  readonly dead = new Set<string>();
  readonly opened: Hop[] = [];
  private runners = new Map<string, Promise<SpanRunner>>();

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly peers: { peerId: string; start: number; end: number; rps: number }[],
  ) {}

  async records(): Promise<SpanRecord[]> {
    return this.peers.map((p) => ({ ...p, state: "online", throughput: p.rps, inferenceRps: p.rps, cacheTokensLeft: 1e6, nextPings: {} }));
  }

  rtts(): ReadonlyMap<string, number> {
    return new Map(this.peers.map((p) => [p.peerId, 0.001]));
  }

  async open(hop: Hop, maxLength: number): Promise<RemoteSpan> {
    this.opened.push(hop);
    const L = this.checkpoint.config.numLayers;
    const key = `${hop.start}:${hop.end}`;
    if (!this.runners.has(key)) {
      this.runners.set(key, SpanRunner.load(this.checkpoint, { start: hop.start, end: hop.end, embed: hop.start === 0, head: hop.end === L }, { maxSequence: 256 }));
    }
    const session = (await this.runners.get(key)!).openSession(maxLength);
    const alive = () => {
      if (this.dead.has(hop.peerId)) throw new Error(`peer ${hop.peerId} is unreachable`);
    };
    return {
      forward: async (input, opts) => (alive(), session.forward(input, opts)),
      truncate: async (position) => (alive(), session.truncate(position)),
      close: async () => session.close(),
    };
  }

  async release(): Promise<void> {
    for (const r of this.runners.values()) await (await r).release();
  }
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
    assert.deepEqual(healthy.route, [{ peerId: "A", start: 0, end: 2 }, { peerId: "B", start: 2, end: 4 }]);
    assert.deepEqual(await greedy(healthy, prompt, 20), expected);
    // In-process "nodes" answer in about their compute time: the measured overhead is far below Petals' 18 ms.
    const overhead = healthy.measuredHopOverhead;
    assert.ok(overhead !== undefined && overhead >= 0 && overhead < 0.018, `measured hop overhead ${overhead} s`);
    healthy.close();

    const failovers: { peerId: string; replacement: Hop[] }[] = [];
    const session = await RouteSession.open(swarm, { numBlocks: 4, maxLength: 64, onFailover: (e) => failovers.push(e) });
    const tokens = await greedy(session, prompt, 20, (i) => {
      if (i === 8) swarm.dead.add("B");
    });
    assert.deepEqual(tokens, expected, "same tokens as without the failure");
    assert.deepEqual(failovers.map((f) => [f.peerId, f.replacement]), [["B", [{ peerId: "C", start: 2, end: 4 }]]]);
    assert.deepEqual(session.route, [{ peerId: "A", start: 0, end: 2 }, { peerId: "C", start: 2, end: 4 }]);
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

test("bans back off exponentially and expire", () => {
  const bans = new BanList();
  assert.equal(bans.ban("p", 0), FIRST_BAN_MS);
  assert.ok(bans.isBanned("p", FIRST_BAN_MS - 1));
  assert.ok(!bans.isBanned("p", FIRST_BAN_MS));
  assert.equal(bans.ban("p", FIRST_BAN_MS), 2 * FIRST_BAN_MS);
  assert.equal(bans.ban("p", 10 * FIRST_BAN_MS), 4 * FIRST_BAN_MS);
  assert.deepEqual([...bans.banned(10 * FIRST_BAN_MS)], ["p"]);
});
