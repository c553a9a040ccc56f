// A node's limits as a peer meets them on the wire: sessions no longer than the model's context,
// a typed reply to every refused step, and addresses for other peers never taken from a client.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { peerIdFromString } from "@libp2p/peer-id";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { ByteBudget, framingDefaults, ShareOfBudget } from "../src/swarm/framing.js";
import { SpanNode } from "../src/swarm/node.js";
import { decodeMessage, encodeControl, encodeStep, framedStream, Kind, type Message, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { useTwoSpanSwarm } from "./support/two-spans.js";

const MODEL = "node-limits";
const swarm = useTwoSpanSwarm(MODEL);
const extra: SpanNode[] = [];
after(async () => {
  for (const n of extra) await n.stop();
});

/** A raw span stream from the test's client host to `node`: write messages, read replies. */
async function rawSession(node: SpanNode) {
  const stream = await swarm.client.dialProtocol(peerIdFromString(node.info().peerId), SPAN_PROTOCOL);
  const lp = framedStream(stream);
  return {
    send: (bytes: Uint8Array) => lp.write(bytes),
    next: async (): Promise<Message> => decodeMessage((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray()),
    close: () => stream.close(),
  };
}

const errorCode = (m: Message) => (m.kind === Kind.Error ? m.error.code : `kind ${m.kind}`);

test("a session longer than the model's context is refused at open with BAD_SPAN, whatever the node's --max-session", async () => {
  const context = swarm.checkpoint.config.maxPositionEmbeddings;
  const model = await servedCheckpoint(swarm.checkpoint, { maxSequence: 4 * context });
  const node = await SpanNode.start({ model, modelId: `${MODEL}-long`, start: 0, end: 4, maxSessionLength: 4 * context });
  extra.push(node);
  await swarm.client.dial(node.libp2p.getMultiaddrs()[0]!);
  const s = await rawSession(node);
  await s.send(encodeControl(Kind.Open, { start: 0, end: 4, maxLength: context + 1, codec: "none" }));
  const reply = await s.next();
  assert.equal(errorCode(reply), "BAD_SPAN");
  assert.match(reply.kind === Kind.Error ? reply.error.message : "", new RegExp(`outside 1\\.\\.${context}`));
  const ok = await rawSession(node);
  await ok.send(encodeControl(Kind.Open, { start: 0, end: 4, maxLength: context, codec: "none" }));
  assert.equal((await ok.next()).kind, Kind.Opened);
  await ok.close();
});

test("every refused step gets a typed reply, never silence: id 0, a repeat, an id below the last", async () => {
  const s = await rawSession(swarm.nodes[0]!);
  await s.send(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }));
  assert.equal((await s.next()).kind, Kind.Opened);
  const step = (stepId: number, startFromPosition: number) => s.send(encodeStep({ stepId, startFromPosition, allLogits: false, tokens: [1, 2] }));
  await step(0, 0);
  assert.equal(errorCode(await s.next()), "BAD_STEP");
  await step(3, 0);
  assert.equal((await s.next()).kind, Kind.Result);
  for (const id of [3, 2]) {
    await step(id, 2);
    assert.equal(errorCode(await s.next()), "BAD_STEP", `step id ${id}`);
  }
  await step(9, 2);
  const after = await s.next();
  assert.ok(after.kind === Kind.Result && after.result.stepId === 9, "the session still works");
  await s.close();
});

test("a node never stores or dials the addresses a client's LINK gives for another peer", async () => {
  const [first, second] = swarm.nodes as [SpanNode, SpanNode];
  const secondId = peerIdFromString(second.info().peerId);
  const junk = Array.from({ length: 16 }, (_, i) => `/ip4/10.255.${i}.1/tcp/${4000 + i}`);
  const s = await rawSession(first);
  await s.send(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none", sessionId: "ab".repeat(16) }));
  assert.equal((await s.next()).kind, Kind.Opened);
  await s.send(encodeControl(Kind.Link, { next: { peerId: second.info().peerId, sessionId: "cd".repeat(16), addrs: junk } }));
  // A pushed step makes the node open its push stream to the next peer (whose session does not exist: the push is ignored there).
  await s.send(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, push: true, tokens: [1, 2] }));
  assert.equal((await s.next()).kind, Kind.Result);
  const known = (await first.libp2p.peerStore.has(secondId)) ? await first.libp2p.peerStore.get(secondId) : undefined;
  const stored = (known?.addresses ?? []).map((a) => a.multiaddr.toString());
  assert.deepEqual(
    stored.filter((a) => a.startsWith("/ip4/10.255.")),
    [],
    `stored: ${stored.join(", ")}`,
  );
  await s.close();
});

test("a peer's share of the buffer budget: a reservation must fit both the peer's limit and the node's", () => {
  const node = new ByteBudget(100);
  const a = new ShareOfBudget(25, node);
  const b = new ShareOfBudget(25, node);
  assert.ok(a.tryReserve(20));
  assert.ok(!a.tryReserve(10), "over the peer's share");
  assert.ok(b.tryReserve(25), "another peer still gets its share");
  assert.equal(node.used, 45);
  const greedy = new ShareOfBudget(1000, node);
  assert.ok(!greedy.tryReserve(60), "over what the node has left");
  assert.equal(node.used, 45, "a refused reservation takes nothing");
  a.release(20);
  b.release(25);
  assert.equal(node.used, 0);
});

test("a message the node has no memory for gets a typed BUSY reply, and the session goes on", async () => {
  const limit = framingDefaults.budget.limit;
  framingDefaults.budget.limit = 4 << 20; // one peer's share: 1 MiB
  try {
    const s = await rawSession(swarm.nodes[1]!);
    await s.send(encodeControl(Kind.Open, { start: 2, end: 4, maxLength: 16, codec: "none" }));
    assert.equal((await s.next()).kind, Kind.Opened);
    const hidden = (rows: number) => ({ data: new Float32Array(rows * 128), shape: [1, rows, 128], codec: "none" as const });
    await s.send(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, hidden: hidden(4096) })); // 2 MiB
    const refused = await s.next();
    assert.equal(errorCode(refused), "BUSY");
    await s.send(encodeStep({ stepId: 2, startFromPosition: 0, allLogits: false, hidden: hidden(2) }));
    const ok = await s.next();
    assert.ok(ok.kind === Kind.Result && ok.result.stepId === 2, `then a step that fits runs: ${errorCode(ok)}`);
    await s.close();
  } finally {
    framingDefaults.budget.limit = limit;
  }
});
