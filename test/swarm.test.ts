// Nodes serving spans over real js-libp2p on loopback, and a client routing sessions through them.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { tcp } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { createLibp2p, type Libp2p } from "libp2p";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import { SpanNode } from "../src/swarm/node.js";
import { decodeMessage, encodeControl, encodeStep, Kind, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { RouteSession } from "../src/swarm/route-session.js";
import { RECORD_TTL_MS, signRecord, verifyRecord } from "../src/swarm/signed-record.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";

let checkpoint: Checkpoint;
let nodes: SpanNode[] = [];
let client: Libp2p;

before(async () => {
  checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const spans: [number, number][] = [[0, 2], [2, 4], [1, 4]];
  nodes = await Promise.all(spans.map(([start, end]) => SpanNode.start({ checkpoint, modelId: "tiny-llama", start, end, maxSessionLength: 128 })));
  client = await createLibp2p({ transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] });
});

after(async () => {
  await client?.stop();
  for (const n of nodes) await n.stop().catch(() => {});
});

function provider(codec: "none" | "blockwise8" = "none") {
  const c = checkpoint.config;
  return new Libp2pSpanProvider(client, nodes.map((n) => n.addresses[0]!), {
    codec,
    hiddenSize: c.hiddenSize,
    vocabSize: c.vocabSize,
    numBlocks: c.numLayers,
    stepTimeoutMs: 10_000,
  });
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
  // A silent impostor: it advertises blocks [0, 4) on the info protocol and swallows every step.
  const key = await generateKeyPair("Ed25519");
  const silent = await createLibp2p({ privateKey: key, addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] });
  await silent.handle("/tessera/info/1.0.0", async (stream) => {
    const info = { peerId: silent.peerId.toString(), modelId: "x", numBlocks: 4, start: 0, end: 4, inferenceRps: 1e6, forwardRps: 1e6, cacheTokensLeft: 1e9, version: "x" };
    await lpStream(stream).write(new TextEncoder().encode(JSON.stringify(await signRecord(key, info, Date.now()))));
    await stream.close();
  });
  await silent.handle(SPAN_PROTOCOL, async (stream) => {
    const lp = lpStream(stream);
    await lp.read();
    await lp.write(encodeControl(Kind.Opened, { start: 0, end: 4 }));
    await lp.read().catch(() => {}); // never answers the step
  });
  try {
    const c = checkpoint.config;
    const p = new Libp2pSpanProvider(client, [silent.getMultiaddrs()[0]!.toString(), ...nodes.map((n) => n.addresses[0]!)], {
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      numBlocks: c.numLayers,
      stepTimeoutMs: 1000,
    });
    const failed: string[] = [];
    const session = await RouteSession.open(p, { numBlocks: 4, maxLength: 32, onFailover: (e) => failed.push(e.peerId) });
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
  const { peerIdFromPrivateKey } = await import("@libp2p/peer-id");
  const info = { peerId: peerIdFromPrivateKey(key).toString(), modelId: "m", numBlocks: 8, start: 2, end: 6, inferenceRps: 50, forwardRps: 500, cacheTokensLeft: 1000, version: "v" };
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

  // Through the provider: a node whose record is forged is left out of routing.
  const liar = await createLibp2p({ addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] });
  await liar.handle("/tessera/info/1.0.0", async (stream) => {
    const claimed = { ...info, peerId: liar.peerId.toString() };
    await lpStream(stream).write(new TextEncoder().encode(JSON.stringify(await signRecord(other, claimed, Date.now()))));
    await stream.close();
  });
  try {
    const c = checkpoint.config;
    const rejected: string[] = [];
    const p = new Libp2pSpanProvider(client, [liar.getMultiaddrs()[0]!.toString(), nodes[0]!.addresses[0]!], {
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      numBlocks: c.numLayers,
      onRejectedRecord: (_, reason) => rejected.push(reason),
    });
    const records = await p.records();
    assert.deepEqual(records.map((r) => r.peerId), [nodes[0]!.info().peerId]);
    assert.equal(rejected.length, 1);
    assert.match(rejected[0]!, /signature does not match/);
  } finally {
    await liar.stop();
  }
});
