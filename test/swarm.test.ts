// Nodes serving spans over real js-libp2p on loopback, and a client routing sessions through them.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { PrivateKey } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { Libp2p } from "libp2p";
import type { ServedModel } from "../src/engine/interface.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { announce } from "../src/swarm/dht.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import { SpanNode } from "../src/swarm/node.js";
import { decodeMessage, encodeControl, encodePush, encodeStep, Kind, PUSH_PROTOCOL, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { PROBE_PROTOCOL } from "../src/swarm/link-probe.js";
import { RouteSession } from "../src/swarm/route-session.js";
import type { NodeInfo } from "../src/swarm/protocol.js";
import { type SignedRecord, signRecord } from "../src/swarm/signed-record.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";
import { boastfulInfo, permissiveDhtHost } from "./support/rogue.js";

let checkpoint: Checkpoint;
let model: ServedModel;
/** The shared swarm (model id "tiny-llama"): tests that stop nodes start their own with `ownSwarm`. */
let nodes: SpanNode[] = [];
let client: SwarmHost;

before(async () => {
  checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  model = await servedCheckpoint(checkpoint, { maxSequence: 128 });
  const first = await SpanNode.start({ model, modelId: "tiny-llama", start: 0, end: 2, maxSessionLength: 128 });
  const spans: [number, number][] = [
    [2, 4],
    [1, 4],
  ];
  const bootstrap = [first.addresses[0]!];
  nodes = [
    first,
    ...(await Promise.all(spans.map(([start, end]) => SpanNode.start({ model, modelId: "tiny-llama", start, end, maxSessionLength: 128, bootstrap })))),
  ];
  client = await createSwarmHost({ role: "client" });
  await joinSwarm(client, bootstrap);
});

after(async () => {
  await client?.stop();
  for (const n of nodes) await n.stop();
});

/** Nodes of the given spans under their own model id, joined through the shared swarm's first node; stopped by the caller. */
function ownSwarm(modelId: string, spans: readonly (readonly [number, number])[], extra: { throughput?: number } = {}): Promise<SpanNode[]> {
  const bootstrap = [nodes[0]!.addresses[0]!];
  return Promise.all(spans.map(([start, end]) => SpanNode.start({ model, modelId, start, end, maxSessionLength: 128, bootstrap, ...extra })));
}

async function stopAll(swarm: SpanNode[]): Promise<void> {
  await Promise.all(swarm.map((n) => (n.libp2p.status === "started" ? n.stop() : undefined)));
}

function provider(
  codec: "none" | "blockwise8" = "none",
  extra: { stepTimeoutMs?: number; onRejectedRecord?: (peer: string, reason: string) => void; modelId?: string } = {},
) {
  const c = checkpoint.config;
  return new Libp2pSpanProvider(client, {
    modelId: "tiny-llama",
    codec,
    hiddenSize: c.hiddenSize,
    vocabSize: c.vocabSize,
    numBlocks: c.numLayers,
    stepTimeoutMs: 10_000,
    ...extra,
  });
}

const infoOf = (peerId: string, span: Partial<NodeInfo> = {}): NodeInfo => boastfulInfo(peerId, "tiny-llama", span);

/**
 * A peer that joins the swarm's DHT with a validator that accepts anything, so it can hold and
 * serve a record the honest nodes would refuse to store.
 */
async function roguePeer(key: PrivateKey, record: (peerId: string) => Promise<SignedRecord>): Promise<Libp2p> {
  const rogue = await permissiveDhtHost(key);
  await joinSwarm(rogue as unknown as SwarmHost, [nodes[0]!.addresses[0]!]);
  const peerId = rogue.peerId.toString();
  // The honest servers refuse to store an invalid record, so the put may fail: the rogue holds it itself either way.
  await announce(rogue.services.dht, await record(peerId), peerId, "tiny-llama", [0, 1, 2, 3]).catch((e: Error) => assert.ok(e instanceof Error));
  return rogue;
}

async function greedy(session: { append(t: number[]): Promise<Float32Array> }, prompt: number[], count: number, onToken?: (i: number) => Promise<void>) {
  let logits = await session.append(prompt);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    out.push(argmax(logits));
    await onToken?.(i);
    logits = await session.append([out.at(-1)!]);
  }
  return out;
}

/** Greedy tokens of the local engine for a prompt. */
async function localGreedy(prompt: number[], count: number): Promise<number[]> {
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  try {
    return await greedy(local.openSession(64), prompt, count);
  } finally {
    await local.release();
  }
}

/** Polls `condition` until it holds or `ms` pass (for effects another process or stream causes). */
async function eventually(condition: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
}

test("a route over libp2p nodes generates exactly what the local engine generates", async () => {
  const prompt = sampleTokens(9, 512, 23);
  const expected = await localGreedy(prompt, 16);
  const session = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 64 });
  assert.equal(session.route.map((h) => `${h.start}-${h.end}`).join(","), "0-2,2-4");
  assert.deepEqual(await greedy(session, prompt, 16), expected);
  session.close();
});

test("blockwise 8-bit hops agree with the local engine on almost every greedy token", async () => {
  const prompt = sampleTokens(9, 512, 23);
  const expected = await localGreedy(prompt, 16);
  const compressed = await RouteSession.open(provider("blockwise8"), { numBlocks: 4, maxLength: 64 });
  const agreeing = (await greedy(compressed, prompt, 16)).filter((t, i) => t === expected[i]).length;
  assert.ok(agreeing >= 12, `blockwise 8-bit hops agree on ${agreeing}/16 greedy tokens`);
  compressed.close();
});

test("a route may enter a node's span mid-way: the node serves the sub-range and releases it with the session", async () => {
  const prompt = sampleTokens(5, 512, 41);
  const expected = await localGreedy(prompt, 6);
  const whole = nodes.find((n) => n.start === 1 && n.end === 4)!;
  // Only the [1, 4) node can serve block 3 once [2, 4) is excluded: enter it at block 2.
  const c = checkpoint.config;
  const hops = [
    { peerId: nodes[0]!.info().peerId, start: 0, end: 2 },
    { peerId: whole.info().peerId, start: 2, end: 4 },
  ];
  const p = provider();
  await p.records();
  const spans = await Promise.all(hops.map((h) => p.open(h, 64)));
  const out: number[] = [];
  let input: { tokens?: number[]; hidden?: Float32Array } = { tokens: prompt };
  for (let i = 0; i < 6; i++) {
    const h = await spans[0]!.forward(input, {});
    const logits = (await spans[1]!.forward({ hidden: h.hidden! }, {})).logits!;
    out.push(argmax(logits.subarray(0, c.vocabSize)));
    input = { tokens: [out.at(-1)!] };
  }
  assert.deepEqual(out, expected);
  assert.ok(
    whole.server.loadedRanges.some(([a, b]) => a === 2 && b === 4),
    "a runtime for [2, 4) is loaded while the session runs",
  );
  for (const s of spans) await s.close();
  await eventually(() => whole.server.loadedRanges.length === 1);
  assert.deepEqual(whole.server.loadedRanges, [[1, 4]], "released with its last session");
});

test("chained: nodes push hidden states to the next node themselves, with the same tokens", async () => {
  const prompt = sampleTokens(7, 512, 57);
  const expected = await localGreedy(prompt, 12);
  const swarm = await ownSwarm("chain", [
    [0, 1],
    [1, 3],
    [3, 4],
  ]);
  try {
    const session = await RouteSession.open(provider("none", { modelId: "chain" }), { numBlocks: 4, maxLength: 64, chained: true });
    assert.equal(session.route.length, 3);
    assert.ok(session.chaining);
    assert.deepEqual(await greedy(session, prompt, 12), expected);
    const pushed = swarm.reduce((n, x) => n + x.stats.pushedIn, 0);
    // 13 steps reach each of the two later hops; a push can lose the race to the client's relay only after its grace.
    assert.ok(pushed >= 20, `hops after the first received their steps from the previous node (${pushed} of 26 pushed)`);
    session.close();
  } finally {
    await stopAll(swarm);
  }
});

test("chained: when the middle node stops mid-generation the route fails over and the tokens stay the same", async () => {
  const prompt = sampleTokens(7, 512, 57);
  const expected = await localGreedy(prompt, 12);
  const swarm = await ownSwarm("chain-failover", [
    [0, 1],
    [1, 3],
    [3, 4],
    [1, 4],
  ]);
  try {
    const failovers: string[] = [];
    const session = await RouteSession.open(provider("none", { modelId: "chain-failover" }), {
      numBlocks: 4,
      maxLength: 64,
      chained: true,
      onFailover: (e) => failovers.push(e.peerId),
    });
    assert.ok(session.route.length >= 2);
    const middle = swarm.find((x) => x.info().peerId === session.route[1]!.peerId)!;
    const tokens = await greedy(session, prompt, 12, async (i) => {
      if (i === 5) await middle.stop();
    });
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, [middle.info().peerId]);
    session.close();
  } finally {
    await stopAll(swarm);
  }
});

test("records carry measured throughput, RTTs to the next block's holders and the link speed", async () => {
  const p = provider();
  const first = nodes[0]!.info().peerId;
  const holdersOf2 = nodes.filter((n) => n.start <= 2 && 2 < n.end).map((n) => n.info().peerId);
  let record;
  // The first node re-announces (with fresh measurements) when later nodes join the DHT.
  for (let i = 0; i < 100; i++) {
    record = (await p.records()).find((r) => r.peerId === first);
    if (record && Object.keys(record.nextPings).length === holdersOf2.length) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(record, "the first node's record is in the DHT");
  assert.deepEqual(Object.keys(record.nextPings).sort(), holdersOf2.sort());
  // A loopback ping is well under a millisecond when idle; a loaded 2-core machine can stall it for a second or more.
  for (const rtt of Object.values(record.nextPings)) assert.ok(rtt >= 0 && rtt < 5, `loopback RTT ${rtt} s`);
  assert.ok(nodes[0]!.info().linkMbps > 0, `loopback link measured: ${nodes[0]!.info().linkMbps} Mbit/s`);
  assert.ok(record.inferenceRps! > 0 && nodes[0]!.info().forwardRps > 0, "measured at start, before any request");
});

/** Opens a span-protocol stream to `node`, writes `messages` one by one and returns each reply. */
async function talk(node: SpanNode, messages: Uint8Array[]) {
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream);
  const replies = [];
  for (const m of messages) {
    await lp.write(m);
    replies.push(decodeMessage((await lp.read()).subarray()));
  }
  await stream.close();
  return replies;
}
const errorCode = (m: ReturnType<typeof decodeMessage> | undefined) => (m?.kind === Kind.Error ? m.error.code : `kind ${m?.kind}`);

test("garbage, truncated and out-of-range messages get typed errors", async () => {
  const node = nodes[0]!;
  assert.equal(errorCode((await talk(node, [Uint8Array.of(42, 1, 2, 3)]))[0]), "BAD_CODEC");
  assert.equal(errorCode((await talk(node, [Uint8Array.of(1, 0x7b)]))[0]), "BAD_LENGTH"); // truncated JSON
  assert.equal(errorCode((await talk(node, [encodeControl(Kind.Open, { start: 0, end: 3, maxLength: 8, codec: "none" })]))[0]), "BAD_SPAN");
  assert.equal(errorCode((await talk(node, [encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1] })]))[0]), "NOT_OPEN");
  assert.equal(errorCode((await talk(node, [encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 8, codec: "none", split: "yes" })]))[0]), "BAD_SHAPE");
});

test("bad steps fail only themselves: the session still works and closing the stream frees its cache", async () => {
  const node = nodes[0]!;
  const free = node.info().cacheTokensLeft;
  const [opened, badToken, rollbackPast, ok] = await talk(node, [
    encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 8, codec: "none" }),
    encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1, 99999] }),
    encodeStep({ stepId: 2, startFromPosition: 5, allLogits: false, tokens: [1] }),
    encodeStep({ stepId: 3, startFromPosition: 0, allLogits: false, tokens: [1, 2] }),
  ]);
  assert.equal(opened!.kind, Kind.Opened);
  assert.equal(errorCode(badToken), "BAD_STEP");
  assert.equal(errorCode(rollbackPast), "BAD_STEP");
  assert.equal(ok!.kind, Kind.Result, "the session still works after bad steps");
  await eventually(() => node.sessionCount === 0);
  assert.equal(node.sessionCount, 0, "closed streams release their sessions");
  assert.equal(node.info().cacheTokensLeft, free);
});

test("when a node stops mid-generation the session re-routes, replays history and finishes with the same tokens", async () => {
  const prompt = sampleTokens(6, 512, 31);
  const expected = await localGreedy(prompt, 14);
  const swarm = await ownSwarm("reroute", [
    [0, 2],
    [2, 4],
    [1, 4],
  ]);
  try {
    const failovers: string[] = [];
    const p = provider("none", { modelId: "reroute" });
    const session = await RouteSession.open(p, {
      numBlocks: 4,
      maxLength: 64,
      onFailover: (e) => failovers.push(`${e.blocks.join("-")}→${e.replacement.map((h) => `${h.start}-${h.end}`)}`),
    });
    assert.equal(session.route.map((h) => `${h.start}-${h.end}`).join(","), "0-2,2-4");
    const second = session.route[1]!.peerId;
    const tokens = await greedy(session, prompt, 14, async (i) => {
      if (i === 6) await swarm.find((n) => n.info().peerId === second)!.stop();
    });
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, ["2-4→2-4"], "the [1, 4) node serves the failed blocks from block 2");
    session.close();
    const records = await provider("none", { modelId: "reroute" }).records();
    assert.ok(!records.some((r) => r.peerId === second), "a node that stops cleanly withdraws its record");
  } finally {
    await stopAll(swarm);
  }
});

test("holders looked up recently are reused; a route with no usable known holder looks them up again", async () => {
  const prompt = sampleTokens(6, 512, 37);
  const expected = await localGreedy(prompt, 12);
  // Nodes in this process answer each other's steps in turn, so a hop's step time includes the
  // others' compute: they announce a modest throughput, or the client would call them liars.
  const modest = { throughput: 10 };
  const swarm = await ownSwarm(
    "recent",
    [
      [0, 2],
      [2, 4],
    ],
    modest,
  );
  let late: SpanNode | undefined;
  try {
    const p = provider("none", { modelId: "recent" });
    assert.equal((await p.records()).length, 2);
    // A node that joins after the lookup is not seen by a lookup allowed to be a minute old...
    late = (await ownSwarm("recent", [[2, 4]], modest))[0]!;
    const lateId = late.info().peerId;
    assert.ok(!(await p.records(undefined, { maxAgeMs: 60_000 })).some((r) => r.peerId === lateId));
    // ...so a session routes with what was known; when the only known holder of blocks [2, 4)
    // stops, the re-route finds no usable holder there, looks up again and finds the new node.
    const failovers: string[] = [];
    const session = await RouteSession.open(p, {
      numBlocks: 4,
      maxLength: 64,
      onFailover: (e) => failovers.push(e.replacement.map((h) => h.peerId).join(",")),
    });
    const old = session.route[1]!.peerId;
    assert.notEqual(old, lateId);
    const tokens = await greedy(session, prompt, 12, async (i) => {
      if (i === 4) await swarm.find((n) => n.info().peerId === old)!.stop();
    });
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, [lateId]);
    session.close();
  } finally {
    await stopAll([...swarm, ...(late ? [late] : [])]);
  }
});

/** A stream to `node` on `protocol` with `messages` written (a write the node cuts off may fail). */
async function sendTo(node: SpanNode, protocol: string, messages: Uint8Array[]) {
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), protocol);
  const lp = lpStream(stream, { maxDataLength: 4 << 20 });
  const failed: Error[] = [];
  for (const m of messages) await lp.write(m).catch((e: Error) => failed.push(e));
  return { stream, lp, failed };
}

test("garbage on the push and probe paths is dropped; the node keeps serving", async () => {
  const node = nodes.find((n) => n.start === 2 && n.end === 4)!;
  const ignored = node.stats.pushesIgnored;
  // Pushes: garbage, a push for an unknown session, a push that is not a step.
  const garbage = await sendTo(node, PUSH_PROTOCOL, [
    encodePush("ab".repeat(16), encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1] })),
    Uint8Array.of(7, 1, 2),
    new Uint8Array(40).fill(7),
  ]);
  await eventually(() => node.stats.pushesIgnored > ignored);
  assert.equal(node.stats.pushesIgnored, ignored + 1, "the push for an unknown session is ignored");
  await garbage.stream.close().catch((e: Error) => assert.ok(e instanceof Error)); // the node may have closed it first
  // Probe: an oversized probe is cut off.
  const probe = await sendTo(node, PROBE_PROTOCOL, [new Uint8Array((1 << 20) + 1)]);
  await probe.stream.close().catch((e: Error) => assert.ok(e instanceof Error));
  assert.equal(node.libp2p.status, "started");
  const [opened] = await talk(node, [encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 8, codec: "none" })]);
  assert.equal(opened!.kind, Kind.Opened, "and still opens sessions");
});

test("a link naming something that is not a peer is refused with BAD_SHAPE", async () => {
  const node = nodes.find((n) => n.start === 2 && n.end === 4)!;
  const [opened, badLink] = await talk(node, [
    encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 16, codec: "none", sessionId: "cd".repeat(16) }),
    encodeControl(Kind.Link, { next: { peerId: "not a peer id", sessionId: "x", addrs: [] } }),
  ]);
  assert.equal(opened!.kind, Kind.Opened);
  assert.equal(errorCode(badLink), "BAD_SHAPE");
});

test("a push from a peer that is not the session's linked predecessor is ignored; the client's own step runs", async () => {
  const node = nodes.find((n) => n.start === 2 && n.end === 4)!;
  const { stream, lp } = await sendTo(node, SPAN_PROTOCOL, [
    encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 16, codec: "none", sessionId: "ef".repeat(16) }),
  ]);
  assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Opened);
  await lp.write(encodeControl(Kind.Link, { prev: nodes[0]!.info().peerId }));
  const [stepsBefore, ignoredBefore] = [node.stats.steps, node.stats.pushesIgnored];
  const hidden = { data: new Float32Array(2 * checkpoint.config.hiddenSize), shape: [1, 2, checkpoint.config.hiddenSize], codec: "none" as const };
  const push = await sendTo(node, PUSH_PROTOCOL, [encodePush("ef".repeat(16), encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, hidden }))]);
  await eventually(() => node.stats.pushesIgnored > ignoredBefore);
  assert.equal(node.stats.pushesIgnored, ignoredBefore + 1);
  assert.equal(node.stats.steps, stepsBefore, "the push was not run");
  await push.stream.close();
  await lp.write(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, hidden }));
  assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Result);
  await stream.close();
});

test("a session idle past the timeout is closed with IDLE_TIMEOUT and its cache released", async () => {
  const node = nodes[0]!;
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream);
  const free = node.info().cacheTokensLeft;
  await lp.write(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }));
  assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Opened);
  assert.equal(node.info().cacheTokensLeft, free - 32);
  assert.equal(node.closeIdleSessions(Date.now() + 1000), 0, "not idle yet");
  assert.equal(node.closeIdleSessions(Date.now() + 3_600_000), 1);
  const reply = decodeMessage((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray());
  assert.equal(reply.kind === Kind.Error && reply.error.code, "IDLE_TIMEOUT");
  assert.equal(node.info().cacheTokensLeft, free);
});

test("an oversized message closes only its own stream; other sessions go on", async () => {
  const node = nodes[0]!;
  const healthy = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 32 });
  await healthy.append([1, 2, 3]);
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream, { maxDataLength: 512 << 20 });
  await lp.write(new Uint8Array(130 << 20)).catch((e: Error) => assert.ok(e instanceof Error)); // over the node's 128 MiB limit
  await assert.rejects(lp.read({ signal: AbortSignal.timeout(5000) }));
  assert.ok((await healthy.append([4])).length === 512, "the other session still answers");
  healthy.close();
});

test("a node that accepts a session and never answers is timed out and routed around", async () => {
  // A silent impostor: it announces blocks [0, 4) with a valid record and swallows every step.
  const key = await generateKeyPair("Ed25519");
  const silent = await roguePeer(key, (peerId) => signRecord(key, infoOf(peerId), Date.now()));
  await silent.handle(SPAN_PROTOCOL, async (stream) => {
    const lp = lpStream(stream);
    await lp.read();
    await lp.write(encodeControl(Kind.Opened, { start: 0, end: 4 }));
    await lp.read().catch((e: Error) => assert.ok(e instanceof Error)); // never answers the step
  });
  try {
    const failed: string[] = [];
    const session = await RouteSession.open(provider("none", { stepTimeoutMs: 1000 }), {
      numBlocks: 4,
      maxLength: 32,
      onFailover: (e) => failed.push(e.peerId),
    });
    assert.equal(session.route[0]!.peerId, silent.peerId.toString(), "the impostor looks fastest");
    const logits = await session.append([1, 2, 3]);
    assert.equal(logits.length, 512);
    assert.deepEqual(failed, [silent.peerId.toString()]);
    assert.ok(!session.route.some((h) => h.peerId === silent.peerId.toString()));
    session.close();
  } finally {
    await silent.stop();
  }
});

test("rebalancing: a node moves to the swarm's weakest blocks and hands over its open sessions", async () => {
  // A serves all 4 blocks; B and C both serve [0, 2), so blocks 2-3 have one server and 0-1 three.
  // Equal announced throughputs, so the decision does not depend on this machine's load.
  const options = { model, modelId: "rebalance", maxSessionLength: 64, bootstrap: [nodes[0]!.addresses[0]!], throughput: 100 };
  const a = await SpanNode.start({ ...options, start: 0, end: 4 });
  const b = await SpanNode.start({ ...options, start: 0, end: 2 });
  const mover = await SpanNode.start({ ...options, start: 0, end: 2 });
  try {
    // An open session on the mover's old span, mid-way through a sequence.
    const stream = await client.dialProtocol(multiaddr(mover.addresses[0]!), SPAN_PROTOCOL);
    const lp = lpStream(stream);
    await lp.write(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }));
    assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Opened);
    await lp.write(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1, 2, 3] }));
    assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Result);

    assert.equal(await mover.rebalanceOnce(() => 0.5), 2);
    assert.deepEqual([mover.start, mover.end], [2, 4]);
    assert.equal(await b.rebalanceOnce(() => 0.5), undefined, "the swarm is balanced now: b stays");
    await lp.write(encodeStep({ stepId: 2, startFromPosition: 3, allLogits: false, tokens: [4] }));
    assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Result, "the session opened before the move still runs");
    const c = checkpoint.config;
    const records = await new Libp2pSpanProvider(client, { modelId: "rebalance", hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: 4 }).records();
    assert.deepEqual(records.map((r) => `${r.start}-${r.end}`).sort(), ["0-2", "0-4", "2-4"], "the move is announced");
    await stream.close();
    await eventually(() => mover.server.loadedRanges.length === 1);
    assert.deepEqual(mover.server.loadedRanges, [[2, 4]], "the old span is released with its last session");
  } finally {
    for (const n of [a, b, mover]) await n.stop();
  }
});
