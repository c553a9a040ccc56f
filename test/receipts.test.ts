// Step receipts: every result carries the node's signature over (session, step, span, input hash,
// output hash). Honest nodes' receipts verify and chain hop to hop; a node whose receipt is not
// its own, or names an input the client did not send, is failed over like a dead one.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { test } from "node:test";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import type { Libp2p } from "libp2p";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { announce } from "../src/swarm/dht.js";
import { joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import { encodeResult, Kind } from "../src/swarm/protocol.js";
import { inputHash, type Receipt, ReceiptChain, type ReceiptFields, SIGN_EVERY, sha256, signedAt, signHead, verifyReceipts } from "../src/swarm/receipt.js";
import { RouteSession } from "../src/swarm/route-session.js";
import { signRecord } from "../src/swarm/signed-record.js";
import { encodeTensor } from "../src/wire/tensor-frame.js";
import { sampleTokens } from "./support/fixtures.js";
import { boastfulInfo, permissiveDhtHost, type RogueSession, serveRogueSpans } from "./support/rogue.js";
import { useTwoSpanSwarm } from "./support/two-spans.js";

const MODEL = "receipts";
const swarm = useTwoSpanSwarm(MODEL);

function provider(stepTimeoutMs = 10_000) {
  const c = swarm.checkpoint.config;
  return new Libp2pSpanProvider(swarm.client, { modelId: MODEL, hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: c.numLayers, stepTimeoutMs });
}

async function greedy(session: { append(t: number[]): Promise<Float32Array> }, prompt: number[], count: number): Promise<number[]> {
  let logits = await session.append(prompt);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    out.push(argmax(logits));
    logits = await session.append([out.at(-1)!]);
  }
  return out;
}

/** A node's receipts for `count` steps, folded and signed as a node does. */
async function nodeReceipts(key: Awaited<ReturnType<typeof generateKeyPair>>, count: number): Promise<Receipt[]> {
  const peerId = peerIdFromPrivateKey(key).toString();
  const chain = new ReceiptChain();
  const out: Receipt[] = [];
  for (let i = 1; i <= count; i++) {
    const fields: ReceiptFields = {
      sessionId: "ab".repeat(16),
      stepId: i,
      start: 2,
      end: 4,
      inputHash: sha256(Uint8Array.of(i)),
      outputHash: sha256(Uint8Array.of(i, 1)),
    };
    const chainHead = chain.fold(fields);
    out.push({ ...fields, peerId, chainHead, ...(signedAt(chain.count) ? { signature: await signHead(key, chainHead) } : {}) });
  }
  return out;
}

test("receipts fold into a chain the node signs every SIGN_EVERY steps; altering any step, or another signer, breaks it", async () => {
  const key = await generateKeyPair("Ed25519");
  const receipts = await nodeReceipts(key, 2 * SIGN_EVERY + 1);
  assert.deepEqual(
    receipts.flatMap((r, i) => (r.signature ? [i + 1] : [])),
    [1, 1 + SIGN_EVERY, 1 + 2 * SIGN_EVERY],
  );
  assert.equal(await verifyReceipts(receipts), undefined);
  const altered = receipts.map((r, i) => (i === 5 ? { ...r, outputHash: sha256(Uint8Array.of(99)) } : r));
  assert.match((await verifyReceipts(altered)) ?? "", /step 6: the chain does not fold/);
  const other = await nodeReceipts(await generateKeyPair("Ed25519"), 2 * SIGN_EVERY + 1);
  const forged = receipts.map((r, i) => (i === SIGN_EVERY ? { ...r, signature: other[i]!.signature } : r));
  assert.match((await verifyReceipts(forged)) ?? "", /the signature is not/);
  const unsigned = receipts.map((r, i) => (i === 0 ? { ...r, signature: undefined } : r));
  assert.match((await verifyReceipts(unsigned)) ?? "", /did not sign where it must/);
});

test("every step through honest nodes comes with a verified receipt per hop, and hop i+1 ran on hop i's output", async () => {
  const session = await RouteSession.open(provider(), { numBlocks: 4, maxLength: 32 });
  await greedy(session, sampleTokens(5, 512, 3), 4);
  const receipts = session.receipts;
  assert.equal(receipts.length, 2 * 5, "5 steps × 2 hops");
  for (const n of swarm.nodes)
    assert.equal(await verifyReceipts(receipts.filter((r) => r.peerId === n.info().peerId)), undefined, `the receipts of ${n.info().peerId} verify`);
  const byHop = (start: number) => receipts.filter((r) => r.start === start);
  assert.deepEqual(
    byHop(0).map((r) => r.peerId),
    Array(5).fill(swarm.nodes[0]!.info().peerId),
  );
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  assert.equal(hex(byHop(0)[0]!.inputHash), hex(inputHash({ tokens: sampleTokens(5, 512, 3) })), "the first hop names the prompt's token ids");
  session.close();
});

/** A rogue that announces [0, 4) as fastest and answers steps with plausible logits and a receipt that is not its own (or names another input). */
async function lyingNode(lie: "signature" | "input"): Promise<Libp2p> {
  const key = await generateKeyPair("Ed25519");
  const rogue = await permissiveDhtHost(key);
  await joinSwarm(rogue as unknown as SwarmHost, [swarm.nodes[0]!.addresses[0]!]);
  const peerId = rogue.peerId.toString();
  const info = boastfulInfo(peerId, MODEL);

  await announce(rogue.services.dht, await signRecord(key, info, Date.now()), peerId, MODEL, [0, 1, 2, 3]).catch((e: Error) => assert.ok(e instanceof Error));
  const vocab = swarm.checkpoint.config.vocabSize;
  const chains = new Map<RogueSession, ReceiptChain>();
  await serveRogueSpans(rogue, async (message, session) => {
    if (message.kind !== Kind.Step) return;
    const chain = chains.get(session) ?? chains.set(session, new ReceiptChain()).get(session)!;
    const frame = encodeTensor(new Float32Array(vocab).fill(0.5), [1, 1, vocab], "none");
    const fields: ReceiptFields = {
      sessionId: session.sessionId,
      stepId: message.step.stepId,
      start: 0,
      end: 4,
      inputHash: lie === "input" ? sha256(Uint8Array.of(9)) : inputHash({ tokens: message.step.tokens }),
      outputHash: sha256(frame),
    };
    const signer = lie === "signature" ? await generateKeyPair("Ed25519") : key;
    const head = chain.fold(fields);
    const signature = signedAt(chain.count) ? await signHead(signer, head) : new Uint8Array(64);
    await session.write(encodeResult(message.step.stepId, { inputHash: fields.inputHash, signature }, frame));
  });
  return rogue;
}

/** A route session whose first route is sure to include `rogue` (its provider records may take a moment to reach the DHT). */
async function sessionWith(rogue: Libp2p, failovers: { peerId: string; error: string }[]): Promise<RouteSession> {
  const inner = provider();
  const rogueId = rogue.peerId.toString();
  let first = true;
  const withRogue = Object.assign(Object.create(inner) as Libp2pSpanProvider, {
    records: async (range?: { start: number; end: number }) => {
      for (let tries = 0; ; tries++) {
        const found = await inner.records(range);
        if (!first || found.some((r) => r.peerId === rogueId) || tries >= 50) {
          first = false;
          return found;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  });
  const session = await RouteSession.open(withRogue, {
    numBlocks: 4,
    maxLength: 32,
    onFailover: (e) => failovers.push({ peerId: e.peerId, error: e.error.message }),
  });
  assert.equal(session.route[0]!.peerId, rogueId, "the liar looks fastest");
  return session;
}

test("a node whose receipt names an input the client did not send is caught on that step and failed over: the tokens are the honest ones", async () => {
  const prompt = sampleTokens(6, 512, 11);
  const local = await LocalPipeline.load(swarm.checkpoint, { maxSequence: 64 });
  const expected = await greedy(local.openSession(32), prompt, 5);
  await local.release();
  const rogue = await lyingNode("input");
  try {
    const failovers: { peerId: string; error: string }[] = [];
    const session = await sessionWith(rogue, failovers);
    assert.deepEqual(await greedy(session, prompt, 5), expected);
    assert.equal(failovers[0]?.peerId, rogue.peerId.toString());
    assert.match(failovers[0]?.error ?? "", /BAD_RECEIPT: the receipt of step 1 names an input this client did not send/);
    assert.ok(!session.route.some((h) => h.peerId === rogue.peerId.toString()));
    session.close();
  } finally {
    await rogue.stop();
  }
});

test("a node whose receipts are not signed by it is failed over at its next step and routed around", async () => {
  const rogue = await lyingNode("signature");
  try {
    const failovers: { peerId: string; error: string }[] = [];
    const session = await sessionWith(rogue, failovers);
    await session.append(sampleTokens(6, 512, 11)); // answered by the liar: its signature is checked off the critical path
    await assert.rejects(session.settleReceipts(), /BAD_RECEIPT: the receipt of step 1 is not signed by/);
    await greedy(session, [7, 8], 3);
    assert.equal(failovers[0]?.peerId, rogue.peerId.toString());
    assert.match(failovers[0]?.error ?? "", /BAD_RECEIPT/);
    assert.ok(!session.route.some((h) => h.peerId === rogue.peerId.toString()));
    await session.settleReceipts();
    const honest = session.receipts.filter((r) => r.peerId !== rogue.peerId.toString());
    for (const n of swarm.nodes)
      assert.equal(await verifyReceipts(honest.filter((r) => r.peerId === n.info().peerId)), undefined, "the honest hops' receipts verify");
    session.close();
  } finally {
    await rogue.stop();
  }
});
