// Nodes serving spans over real js-libp2p on loopback, and a client routing sessions through them.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { PrivateKey } from "@libp2p/interface";
import { kadDHT, passthroughMapper } from "@libp2p/kad-dht";
import { ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { createLibp2p, type Libp2p } from "libp2p";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { announce, DHT_PROTOCOL } from "../src/swarm/dht.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import { SpanNode } from "../src/swarm/node.js";
import { decodeMessage, encodeControl, encodePush, encodeStep, Kind, PUSH_PROTOCOL, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { PROBE_PROTOCOL } from "../src/swarm/link-probe.js";
import { RouteSession } from "../src/swarm/route-session.js";
import type { NodeInfo } from "../src/swarm/protocol.js";
import { RECORD_TTL_MS, type SignedRecord, signRecord, verifyRecord } from "../src/swarm/signed-record.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";

let checkpoint: Checkpoint;
let nodes: SpanNode[] = [];
let client: SwarmHost;

before(async () => {
  checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const first = await SpanNode.start({ checkpoint, modelId: "tiny-llama", start: 0, end: 2, maxSessionLength: 128 });
  const spans: [number, number][] = [[2, 4], [1, 4]];
  const bootstrap = [first.addresses[0]!];
  nodes = [first, ...(await Promise.all(spans.map(([start, end]) => SpanNode.start({ checkpoint, modelId: "tiny-llama", start, end, maxSessionLength: 128, bootstrap }))))];
  client = await createSwarmHost({ role: "client" });
  await joinSwarm(client, bootstrap);
});

after(async () => {
  await client?.stop();
  for (const n of nodes) await n.stop().catch(() => {});
});

function provider(codec: "none" | "blockwise8" = "none", extra: { stepTimeoutMs?: number; onRejectedRecord?: (peer: string, reason: string) => void } = {}) {
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

const infoOf = (peerId: string, span: Partial<NodeInfo> = {}): NodeInfo => ({
  peerId, state: "online", modelId: "tiny-llama", checkpointHash: "x", numBlocks: 4, start: 0, end: 4,
  inferenceRps: 1e6, forwardRps: 1e6, cacheTokensLeft: 1e9, nextPings: {}, linkMbps: 0, version: "x", ...span,
});

/**
 * A peer that joins the swarm's DHT with a validator that accepts anything, so it can hold and
 * serve a record the honest nodes would refuse to store.
 */
async function roguePeer(key: PrivateKey, record: (peerId: string) => Promise<SignedRecord>): Promise<Libp2p> {
  const rogue = await createLibp2p({
    privateKey: key,
    addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({ protocol: DHT_PROTOCOL, clientMode: false, peerInfoMapper: passthroughMapper, allowQueryWithZeroPeers: true, validators: { tessera: async () => {} }, selectors: { tessera: () => 0 } }),
    },
  });
  await joinSwarm(rogue as unknown as SwarmHost, [nodes[0]!.addresses[0]!]);
  const peerId = rogue.peerId.toString();
  await announce(rogue.services.dht, await record(peerId), peerId, "tiny-llama", [0, 1, 2, 3]).catch(() => {});
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

test("a route over libp2p nodes generates exactly what the local engine generates", async () => {
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const prompt = sampleTokens(9, 512, 23);
  const expected = await greedy(local.openSession(64), prompt, 16);
  await local.release();

  const session = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 64 });
  assert.equal(session.route.map((h) => `${h.start}-${h.end}`).join(","), "0-2,2-4");
  assert.deepEqual(await greedy(session, prompt, 16), expected);
  session.close();

  const compressed = await RouteSession.open(provider("blockwise8"), { numBlocks: 4, maxLength: 64 });
  const agreeing = (await greedy(compressed, prompt, 16)).filter((t, i) => t === expected[i]).length;
  assert.ok(agreeing >= 12, `blockwise 8-bit hops agree on ${agreeing}/16 greedy tokens`);
  compressed.close();
});

test("chained: nodes push hidden states to the next node themselves; same tokens, even when a node stops mid-generation", async () => {
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const prompt = sampleTokens(7, 512, 57);
  const expected = await greedy(local.openSession(64), prompt, 12);
  await local.release();

  const bootstrap = [nodes[0]!.addresses[0]!];
  const extra = await Promise.all(([[0, 1], [1, 3], [3, 4], [1, 4]] as const).map(([start, end]) => SpanNode.start({ checkpoint, modelId: "chain", start, end, maxSessionLength: 128, bootstrap })));
  try {
    const c = checkpoint.config;
    const failovers: string[] = [];
    const p = new Libp2pSpanProvider(client, { modelId: "chain", hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: c.numLayers, stepTimeoutMs: 10_000 });
    const session = await RouteSession.open(p, { numBlocks: 4, maxLength: 64, chained: true, onFailover: (e) => failovers.push(e.peerId) });
    assert.ok(session.route.length >= 2);
    const pushedBefore = extra.reduce((n, x) => n + x.stats.pushedIn, 0);
    const middle = extra.find((x) => x.info().peerId === session.route[1]!.peerId)!;
    const tokens = await greedy(session, prompt, 12, async (i) => {
      if (i === 5) await middle.stop();
    });
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, [middle.info().peerId]);
    const pushed = extra.reduce((n, x) => n + x.stats.pushedIn, 0) - pushedBefore;
    assert.ok(pushed >= 10, `hops after the first received their steps from the previous node (${pushed} of 13 pushed)`);
    session.close();
  } finally {
    for (const x of extra) await x.stop().catch(() => {});
  }
});

test("records carry measured throughput, RTTs to the next block's holders and the link speed", async () => {
  const c = checkpoint.config;
  const p = new Libp2pSpanProvider(client, { modelId: "tiny-llama", hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: c.numLayers });
  const first = nodes[0]!.info().peerId;
  const holdersOf2 = nodes.filter((n) => n.info().start <= 2 && 2 < n.info().end).map((n) => n.info().peerId);
  let record;
  // The first node re-announces (with fresh measurements) when later nodes join the DHT.
  for (let i = 0; i < 100; i++) {
    record = (await p.records()).find((r) => r.peerId === first);
    if (record && Object.keys(record.nextPings).length === holdersOf2.length) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(Object.keys(record!.nextPings).sort(), holdersOf2.sort());
  for (const rtt of Object.values(record!.nextPings)) assert.ok(rtt >= 0 && rtt < 1, `loopback RTT ${rtt} s`);
  assert.ok(nodes[0]!.info().linkMbps > 10, `loopback link ${nodes[0]!.info().linkMbps} Mbit/s`);
  assert.ok(record!.inferenceRps! > 0 && nodes[0]!.info().forwardRps > 0, "measured at start, before any request");
});

test("garbage, truncated and out-of-range messages get errors; the node keeps serving", async () => {
  const node = nodes[0]!;
  const talk = async (messages: Uint8Array[]) => {
    const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
    const lp = lpStream(stream);
    const replies = [];
    for (const m of messages) {
      await lp.write(m);
      replies.push(decodeMessage((await lp.read()).subarray()));
    }
    await stream.close().catch(() => {});
    return replies;
  };
  const errorCode = (m: ReturnType<typeof decodeMessage>) => (m.kind === Kind.Error ? m.error.code : `kind ${m.kind}`);

  assert.equal(errorCode((await talk([Uint8Array.of(42, 1, 2, 3)]))[0]!), "BAD_CODEC");
  assert.equal(errorCode((await talk([Uint8Array.of(1, 0x7b)]))[0]!), "BAD_LENGTH"); // truncated JSON
  assert.equal(errorCode((await talk([encodeControl(Kind.Open, { start: 0, end: 3, maxLength: 8, codec: "none" })]))[0]!), "BAD_SPAN");
  assert.equal(errorCode((await talk([encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1] })]))[0]!), "NOT_OPEN");
  const [opened, badToken, rollbackPast, ok] = await talk([
    encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 8, codec: "none" }),
    encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1, 99999] }),
    encodeStep({ stepId: 2, startFromPosition: 5, allLogits: false, tokens: [1] }),
    encodeStep({ stepId: 3, startFromPosition: 0, allLogits: false, tokens: [1, 2] }),
  ]);
  assert.equal(opened!.kind, Kind.Opened);
  assert.equal(errorCode(badToken!), "BAD_STEP");
  assert.equal(errorCode(rollbackPast!), "BAD_STEP");
  assert.equal(ok!.kind, Kind.Result, "the session still works after bad steps");
  for (let i = 0; i < 100 && node.sessionCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(node.sessionCount, 0, "closed streams release their sessions");
  assert.ok(node.info().cacheTokensLeft > 0);
});

test("when a node stops mid-generation the session re-routes, replays history and finishes with the same tokens", async () => {
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const prompt = sampleTokens(6, 512, 31);
  const expected = await greedy(local.openSession(64), prompt, 14);
  await local.release();

  const failovers: string[] = [];
  const session = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 64, onFailover: (e) => failovers.push(`${e.blocks.join("-")}→${e.replacement.map((h) => `${h.start}-${h.end}`)}`) });
  const second = session.route[1]!.peerId;
  const tokens = await greedy(session, prompt, 14, async (i) => {
    if (i === 6) await nodes.find((n) => n.info().peerId === second)!.stop();
  });
  assert.deepEqual(tokens, expected);
  assert.deepEqual(failovers, ["2-4→2-4"]);
  session.close();
  const records = await provider().records();
  assert.ok(!records.some((r) => r.peerId === second), "a node that stops cleanly withdraws its record");
});

test("garbage on the push, probe and link paths is dropped; pushes from unlinked peers are ignored; the node keeps serving", async () => {
  const node = nodes.find((n) => n.libp2p.status === "started" && n.info().start <= 2 && n.info().end === 4)!;
  const addr = multiaddr(node.addresses[0]!);
  const send = async (protocol: string, messages: Uint8Array[]) => {
    const stream = await client.dialProtocol(addr, protocol);
    const lp = lpStream(stream, { maxDataLength: 4 << 20 });
    for (const m of messages) await lp.write(m).catch(() => {});
    return { stream, lp };
  };
  // Pushes: garbage, a push for an unknown session, a push that is not a step.
  const garbage = await send(PUSH_PROTOCOL, [Uint8Array.of(7, 1, 2), new Uint8Array(40).fill(7), encodePush("ab".repeat(16), encodeControl(Kind.Opened, { start: 0, end: 1 }))]);
  await garbage.stream.close().catch(() => {});
  // Probe: an oversized probe is cut off; the node stays up.
  const probe = await send(PROBE_PROTOCOL, [new Uint8Array((1 << 20) + 1)]);
  await probe.stream.close().catch(() => {});
  // A session with a sessionId, linked to accept pushes from another peer only: our push is ignored.
  const { stream, lp } = await send(SPAN_PROTOCOL, [encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 16, codec: "none", sessionId: "cd".repeat(16) })]);
  assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Opened);
  await lp.write(encodeControl(Kind.Link, { next: { peerId: "not a peer id", sessionId: "x", addrs: [] } }));
  const badLink = decodeMessage((await lp.read()).subarray());
  assert.equal(badLink.kind === Kind.Error && badLink.error.code, "BAD_SHAPE");
  await stream.close().catch(() => {});
  const { stream: s2, lp: lp2 } = await send(SPAN_PROTOCOL, [encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 16, codec: "none", sessionId: "ef".repeat(16) })]);
  assert.equal(decodeMessage((await lp2.read()).subarray()).kind, Kind.Opened);
  await lp2.write(encodeControl(Kind.Link, { prev: nodes[0]!.info().peerId }));
  const stepsBefore = node.stats.steps;
  const hidden = { data: new Float32Array(2 * checkpoint.config.hiddenSize), shape: [1, 2, checkpoint.config.hiddenSize], codec: "none" as const };
  const push = await send(PUSH_PROTOCOL, [encodePush("ef".repeat(16), encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, hidden }))]);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(node.stats.steps, stepsBefore, "a push from a peer that is not the linked predecessor is not run");
  await push.stream.close().catch(() => {});
  // The same step from the client runs.
  await lp2.write(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, hidden }));
  assert.equal(decodeMessage((await lp2.read()).subarray()).kind, Kind.Result);
  await s2.close().catch(() => {});
  assert.equal(node.libp2p.status, "started");
});

test("a session idle past the timeout is closed with IDLE_TIMEOUT and its cache released", async () => {
  const node = nodes[0]!;
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream);
  await lp.write(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }));
  assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Opened);
  const free = node.info().cacheTokensLeft;
  assert.equal(node.closeIdleSessions(Date.now() + 1000), 0, "not idle yet");
  assert.equal(node.closeIdleSessions(Date.now() + 3_600_000), 1);
  const reply = decodeMessage((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray());
  assert.equal(reply.kind === Kind.Error && reply.error.code, "IDLE_TIMEOUT");
  assert.equal(node.info().cacheTokensLeft, free + 32);
});

test("an oversized message closes only its own stream; other sessions go on", async () => {
  const node = nodes[0]!;
  const healthy = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 32 });
  await healthy.append([1, 2, 3]);
  const stream = await client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream, { maxDataLength: 512 << 20 });
  await lp.write(new Uint8Array(130 << 20)).catch(() => {}); // over the node's 128 MiB limit
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
    await lp.read().catch(() => {}); // never answers the step
  });
  try {
    const failed: string[] = [];
    const session = await RouteSession.open(provider("none", { stepTimeoutMs: 1000 }), { numBlocks: 4, maxLength: 32, onFailover: (e) => failed.push(e.peerId) });
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

test("records are signed by the node's key; forged, expired, future and out-of-range ones are rejected", async () => {
  const key = await generateKeyPair("Ed25519");
  const other = await generateKeyPair("Ed25519");
  const info = { ...infoOf(peerIdFromPrivateKey(key).toString()), numBlocks: 8, start: 2, end: 6, inferenceRps: 50, forwardRps: 500, cacheTokensLeft: 1000 };
  const now = 1_000_000;
  const good = await signRecord(key, info, now);
  const accepted = await verifyRecord(good, now + 1000);
  assert.equal(typeof accepted, "object");
  assert.equal((accepted as { start: number }).start, 2);

  const forged = { record: good.record.replace('"start":2', '"start":0'), signature: good.signature };
  assert.match(String(await verifyRecord(forged, now)), /signature does not match/);
  const impostor = await signRecord(other, info, now); // signed by a key that is not the peer's
  assert.match(String(await verifyRecord(impostor, now)), /signature does not match/);
  assert.match(String(await verifyRecord(good, now + RECORD_TTL_MS + 1)), /expired/);
  assert.match(String(await verifyRecord(await signRecord(key, info, now + 10 * RECORD_TTL_MS), now)), /too far in the future/);
  assert.match(String(await verifyRecord(await signRecord(key, { ...info, end: 9 }, now), now)), /invalid/);
  assert.match(String(await verifyRecord({ record: "{", signature: "00" }, now)), /not JSON/);
  assert.match(String(await verifyRecord(42, now)), /malformed/);

  // Through the DHT: a forged and an expired record are each served by a rogue peer (honest
  // nodes refuse to store them); the client drops both, saying why, and routes only over honest nodes.
  const forger = await roguePeer(await generateKeyPair("Ed25519"), (peerId) => signRecord(other, infoOf(peerId), Date.now()));
  const staleKey = await generateKeyPair("Ed25519");
  const stale = await roguePeer(staleKey, (peerId) => signRecord(staleKey, infoOf(peerId), Date.now() - 2 * RECORD_TTL_MS));
  try {
    const rejected = new Map<string, string>();
    const records = await provider("none", { onRejectedRecord: (peer, reason) => rejected.set(peer, reason) }).records();
    const listed = new Set(records.map((r) => r.peerId));
    for (const n of nodes.filter((n) => n.libp2p.status === "started")) assert.ok(listed.has(n.info().peerId), "every running node is listed");
    assert.ok(!listed.has(forger.peerId.toString()) && !listed.has(stale.peerId.toString()));
    assert.match(rejected.get(forger.peerId.toString()) ?? "", /signature does not match/);
    assert.match(rejected.get(stale.peerId.toString()) ?? "", /expired/);
  } finally {
    await forger.stop();
    await stale.stop();
  }
});

test("rebalancing: a node moves to the swarm's weakest blocks and hands over its open sessions", async () => {
  // A serves all 4 blocks; B and C both serve [0, 2), so blocks 2-3 have one server and 0-1 three.
  // Equal announced throughputs, so the decision does not depend on this machine's load.
  const options = { checkpoint, modelId: "rebalance", maxSessionLength: 64, bootstrap: [nodes[0]!.addresses[0]!], throughput: 100 };
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
    assert.deepEqual([mover.info().start, mover.info().end], [2, 4]);
    assert.equal(await b.rebalanceOnce(() => 0.5), undefined, "the swarm is balanced now: b stays");
    await lp.write(encodeStep({ stepId: 2, startFromPosition: 3, allLogits: false, tokens: [4] }));
    assert.equal(decodeMessage((await lp.read()).subarray()).kind, Kind.Result, "the session opened before the move still runs");
    const c = checkpoint.config;
    const records = await new Libp2pSpanProvider(client, { modelId: "rebalance", hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: 4 }).records();
    assert.deepEqual(records.map((r) => `${r.start}-${r.end}`).sort(), ["0-2", "0-4", "2-4"], "the move is announced");
    await stream.close();
  } finally {
    for (const n of [a, b, mover]) await n.stop();
  }
});
