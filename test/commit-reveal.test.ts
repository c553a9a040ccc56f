// Commit-reveal steps (consensus verification, arXiv 2407.19401): a node answers a committed step
// with its receipt only, holds the output, and sends it as the ordinary result on a reveal. The
// output must be the one an ordinary step gives, hash to the commitment, and leave the session's
// receipt chain intact; a reveal the node cannot answer, or a lying one, fails only itself.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { test } from "node:test";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import { announce } from "../src/swarm/dht.js";
import { joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import {
  decodeMessage,
  encodeCommit,
  encodeControl,
  encodePush,
  encodeResult,
  encodeReveal,
  encodeStep,
  Kind,
  type Message,
  SPAN_PROTOCOL,
} from "../src/swarm/protocol.js";
import { inputHash, ReceiptChain, type ReceiptFields, sha256, signedAt, signHead, verifyReceipts } from "../src/swarm/receipt.js";
import type { Hop } from "../src/swarm/records.js";
import type { Commitment, RemoteSpan } from "../src/swarm/route-session.js";
import { signRecord } from "../src/swarm/signed-record.js";
import { ProtocolError } from "../src/wire/errors.js";
import { encodeTensor } from "../src/wire/tensor-frame.js";
import { sampleTokens } from "./support/fixtures.js";
import { boastfulInfo, permissiveDhtHost, type RogueSession, serveRogueSpans } from "./support/rogue.js";
import { useTwoSpanSwarm } from "./support/two-spans.js";

const MODEL = "commit-reveal";
const swarm = useTwoSpanSwarm(MODEL);

function provider(modelId = MODEL) {
  const c = swarm.checkpoint.config;
  return new Libp2pSpanProvider(swarm.client, {
    modelId,
    codec: "none",
    hiddenSize: c.hiddenSize,
    vocabSize: c.vocabSize,
    numBlocks: c.numLayers,
    stepTimeoutMs: 10_000,
  });
}

/** The hops of `peerIds` once the provider has found their records (they may take a moment to reach the DHT). */
async function hops(p: Libp2pSpanProvider, peerIds: string[]): Promise<Hop[]> {
  for (let tries = 0; ; tries++) {
    const records = await p.records();
    const found = peerIds.map((id) => records.find((r) => r.peerId === id));
    if (found.every((r) => r)) return found.map((r) => ({ peerId: r!.peerId, start: r!.start, end: r!.end }));
    if (tries >= 50) assert.fail(`records of ${peerIds.join(", ")} not found in the DHT`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const bytes = (f: Float32Array | undefined) => Buffer.from(f!.buffer, f!.byteOffset, f!.byteLength);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("a committed step's reveal is bit-identical to an ordinary step on another session, and hashes to its commitment", async () => {
  const { hiddenSize, vocabSize } = swarm.checkpoint.config;
  const p = provider();
  const [first, second] = await hops(p, [swarm.nodes[0]!.info().peerId, swarm.nodes[1]!.info().peerId]);
  const spans = await Promise.all([p.open(first!, 32), p.open(first!, 32), p.open(second!, 32), p.open(second!, 32)]);
  const [committing, plain, committingHead, plainHead] = spans as [RemoteSpan, RemoteSpan, RemoteSpan, RemoteSpan];
  try {
    const tokens = sampleTokens(5, vocabSize, 3);
    const commitment = await committing.commit!({ tokens }, {});
    assert.equal(commitment.stepId, 1);
    assert.equal(hex(committing.receipts![0]!.outputHash), hex(commitment.outputHash), "the receipt admitted at the commitment names the committed output");
    const revealed = await commitment.reveal();
    const expected = await plain.forward({ tokens }, {});
    assert.ok(bytes(revealed.hidden).equals(bytes(expected.hidden)), "the same hidden states, bit for bit");
    assert.equal(
      hex(sha256(encodeTensor(revealed.hidden!, [1, 5, hiddenSize], "none"))),
      hex(commitment.outputHash),
      "the revealed frame hashes to the commitment",
    );
    assert.equal(await commitment.reveal(), revealed, "revealing again answers the same output without asking the node");

    // The last span: logits.
    const onHead = await committingHead.commit!({ hidden: expected.hidden }, { allLogits: true });
    const logits = (await onHead.reveal()).logits;
    const expectedLogits = (await plainHead.forward({ hidden: expected.hidden }, { allLogits: true })).logits;
    assert.equal(logits?.length, 5 * vocabSize);
    assert.ok(bytes(logits).equals(bytes(expectedLogits)), "the same logits, bit for bit");
    assert.equal(hex(sha256(encodeTensor(logits!, [1, 5, vocabSize], "none"))), hex(onHead.outputHash));
    for (const s of spans) await s.settle!();
  } finally {
    await Promise.all(spans.map((s) => s.close()));
  }
});

test("a session mixing plain, revealed and unrevealed committed steps keeps its receipt chain and its cache", async () => {
  const vocab = swarm.checkpoint.config.vocabSize;
  const p = provider();
  const [first] = await hops(p, [swarm.nodes[0]!.info().peerId]);
  const mixed = await p.open(first!, 64);
  const plain = await p.open(first!, 64);
  try {
    const inputs = [sampleTokens(4, vocab, 5), ...sampleTokens(19, vocab, 6).map((t) => [t])];
    let unrevealed: Commitment | undefined;
    for (const [i, tokens] of inputs.entries()) {
      const expected = await plain.forward({ tokens }, {});
      // Committed and revealed on results 1 and 17 (signed ones), left unrevealed on 3, 7, 11, 15, 19.
      const mode = i % 4 === 0 ? "revealed" : i % 4 === 2 ? "unrevealed" : "plain";
      if (mode === "plain") {
        assert.ok(bytes((await mixed.forward({ tokens }, {})).hidden).equals(bytes(expected.hidden)), `step ${i + 1}`);
        continue;
      }
      const commitment = await mixed.commit!({ tokens }, {});
      assert.equal(commitment.stepId, i + 1);
      if (mode === "revealed") assert.ok(bytes((await commitment.reveal()).hidden).equals(bytes(expected.hidden)), `step ${i + 1}, revealed`);
      else unrevealed = commitment;
    }
    assert.equal(unrevealed?.stepId, 19);
    await mixed.forward({ tokens: [7] }, {});
    await assert.rejects(unrevealed.reveal(), { name: "SpanFailure", code: "NO_COMMIT" }, "another step ran since: the node holds its output no more");
    await mixed.settle!();
    const receipts = mixed.receipts!;
    assert.deepEqual(
      receipts.map((r) => r.stepId),
      Array.from({ length: 21 }, (_, i) => i + 1),
      "one receipt per step, revealed or not",
    );
    assert.ok(receipts[0]!.signature && receipts[16]!.signature, "the committed steps 1 and 17 are signed");
    assert.equal(await verifyReceipts(receipts), undefined);
    assert.equal(hex(receipts[0]!.inputHash), hex(inputHash({ tokens: inputs[0] })));
    await plain.settle!();
  } finally {
    await mixed.close();
    await plain.close();
  }
});

test("a reveal the node cannot answer gets NO_COMMIT and commit with push BAD_STEP; the session and the node keep working", async () => {
  const node = swarm.nodes[0]!;
  const stream = await swarm.client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const lp = lpStream(stream);
  const ask = async (m: Uint8Array): Promise<Message> => {
    await lp.write(m);
    return decodeMessage((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray());
  };
  const code = (m: Message) => (m.kind === Kind.Error ? m.error.code : `kind ${m.kind}`);
  const step = (stepId: number, startFromPosition: number, tokens: number[], flags: { commit?: boolean; push?: boolean } = {}) =>
    encodeStep({ stepId, startFromPosition, allLogits: false, tokens, ...flags });
  assert.equal(code(await ask(encodeReveal(1))), "NOT_OPEN");
  await stream.close();

  const session = await swarm.client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const slp = lpStream(session);
  const say = async (m: Uint8Array): Promise<Message> => {
    await slp.write(m);
    return decodeMessage((await slp.read({ signal: AbortSignal.timeout(10_000) })).subarray());
  };
  try {
    assert.equal((await say(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }))).kind, Kind.Opened);
    assert.equal(code(await say(encodeReveal(1))), "NO_COMMIT", "nothing committed yet");
    assert.equal((await say(step(1, 0, [1, 2]))).kind, Kind.Result);
    const commit = await say(step(2, 2, [3], { commit: true }));
    assert.ok(commit.kind === Kind.Commit && commit.commit.stepId === 2, `a commitment, got kind ${commit.kind}`);
    assert.equal(code(await say(encodeReveal(3))), "NO_COMMIT", "the node holds step 2's output, not step 3's");
    const revealed = await say(encodeReveal(2));
    assert.ok(revealed.kind === Kind.Result && revealed.result.stepId === 2, "the held output comes as the step's result");
    assert.equal(hex(revealed.result.outputHash), hex(commit.commit.outputHash), "the frame hashes to the commitment");
    assert.equal(hex(revealed.result.inputHash), hex(commit.commit.inputHash), "with the same receipt");
    assert.equal(hex(revealed.result.inputHash), hex(inputHash({ tokens: [3] })));
    assert.equal(hex(revealed.result.signature), hex(commit.commit.signature));
    assert.equal(code(await say(encodeReveal(2))), "NO_COMMIT", "revealed once, then forgotten");
    assert.equal((await say(step(3, 3, [4], { commit: true }))).kind, Kind.Commit);
    assert.equal((await say(step(4, 4, [5]))).kind, Kind.Result);
    assert.equal(code(await say(encodeReveal(3))), "NO_COMMIT", "another step ran since the commitment");
    assert.equal(code(await say(step(5, 5, [6], { commit: true, push: true }))), "BAD_STEP", "a committed step is never pushed");
    assert.equal((await say(step(5, 5, [6]))).kind, Kind.Result, "the refused step id is still free");
    assert.equal(code(await say(encodeCommit(commit.commit))), "UNEXPECTED", "a commitment is not for nodes");
  } finally {
    await session.close().catch((e: Error) => assert.ok(e instanceof Error)); // the node closes it after UNEXPECTED
  }

  // A malformed reveal closes only its own stream.
  const bad = await swarm.client.dialProtocol(multiaddr(node.addresses[0]!), SPAN_PROTOCOL);
  const blp = lpStream(bad);
  await blp.write(encodeControl(Kind.Open, { start: 0, end: 2, maxLength: 16, codec: "none" }));
  assert.equal(decodeMessage((await blp.read()).subarray()).kind, Kind.Opened);
  await blp.write(Uint8Array.of(Kind.Reveal, 1, 0));
  const reply = decodeMessage((await blp.read({ signal: AbortSignal.timeout(10_000) })).subarray());
  assert.equal(code(reply), "BAD_LENGTH");
  await bad.close().catch((e: Error) => assert.ok(e instanceof Error));

  // The client refuses commit with push itself, and the node still serves sessions.
  const p = provider();
  const [first] = await hops(p, [node.info().peerId]);
  const span = await p.open(first!, 16);
  try {
    await assert.rejects(span.commit!({ tokens: [1] }, { push: true }), RangeError);
    const commitment = await span.commit!({ tokens: [1, 2] }, {});
    assert.equal((await commitment.reveal()).hidden?.length, 2 * swarm.checkpoint.config.hiddenSize);
    await span.settle!();
  } finally {
    await span.close();
  }
});

test("decodeMessage reads Commit and Reveal strictly: malformed ones are ProtocolErrors, never crashes", () => {
  const receipt = { stepId: 7, inputHash: sha256(Uint8Array.of(1)), signature: new Uint8Array(64).fill(3), outputHash: sha256(Uint8Array.of(2)) };
  const commit = encodeCommit(receipt);
  assert.deepEqual(decodeMessage(commit), { kind: Kind.Commit, commit: receipt });
  assert.deepEqual(decodeMessage(encodeReveal(2 ** 32 - 1)), { kind: Kind.Reveal, stepId: 2 ** 32 - 1 });
  const step = decodeMessage(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: true, commit: true, tokens: [5] }));
  assert.ok(step.kind === Kind.Step && step.step.commit && !step.step.push && step.step.allLogits);
  const plain = decodeMessage(encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [5] }));
  assert.ok(plain.kind === Kind.Step && !plain.step.commit);

  const rejects = (bytes: Uint8Array, code: string) =>
    assert.throws(
      () => decodeMessage(bytes),
      (e: unknown) => e instanceof ProtocolError && e.code === code,
      `${Buffer.from(bytes.subarray(0, 12)).toString("hex")}… (${bytes.byteLength} bytes) is ${code}`,
    );
  rejects(commit.subarray(0, commit.byteLength - 1), "BAD_LENGTH");
  rejects(Uint8Array.from([...commit, 0]), "BAD_LENGTH");
  rejects(Uint8Array.of(Kind.Commit), "BAD_LENGTH");
  rejects(Uint8Array.of(Kind.Reveal), "BAD_LENGTH");
  rejects(Uint8Array.of(Kind.Reveal, 1, 0, 0), "BAD_LENGTH");
  rejects(Uint8Array.of(Kind.Reveal, 1, 0, 0, 0, 0), "BAD_LENGTH");
  const unknownFlag = encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [5] });
  unknownFlag[9] = unknownFlag[9]! | 16;
  rejects(unknownFlag, "BAD_CODEC");
  rejects(encodePush("ab".repeat(16), encodeReveal(1)), "BAD_CODEC"); // a push carries steps only
  assert.throws(() => encodeCommit({ ...receipt, outputHash: new Uint8Array(31) }), RangeError);
  assert.throws(() => encodeCommit({ ...receipt, signature: new Uint8Array(63) }), RangeError);

  let s = 12345;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  for (let trial = 0; trial < 2000; trial++) {
    const garbage = Uint8Array.from({ length: Math.floor(rnd() * 200) + 1 }, () => Math.floor(rnd() * 256));
    garbage[0] = [Kind.Commit, Kind.Reveal, Kind.Step, Kind.Result][trial % 4]!;
    if (trial % 8 === 2) garbage[9] = Math.floor(rnd() * 16); // a step with known flags: its payload is what is wrong
    try {
      decodeMessage(garbage, 1 << 16);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `trial ${trial}: ${String(e)}`);
    }
  }
});

/** A rogue serving [0, 4) of its own model that commits to one output and reveals another (or the same output with another receipt). */
async function lyingRevealer(modelId: string): Promise<Libp2p> {
  const key = await generateKeyPair("Ed25519");
  const rogue = await permissiveDhtHost(key);
  await joinSwarm(rogue as unknown as SwarmHost, [swarm.nodes[0]!.addresses[0]!]);
  const peerId = rogue.peerId.toString();
  await announce(rogue.services.dht, await signRecord(key, boastfulInfo(peerId, modelId), Date.now()), peerId, modelId, [0, 1, 2, 3]).catch((e: Error) =>
    assert.ok(e instanceof Error),
  );
  const vocab = swarm.checkpoint.config.vocabSize;
  let streams = 0;
  type Held = { stepId: number; inputHash: Uint8Array; signature: Uint8Array; outputHash: Uint8Array };
  const sessions = new Map<RogueSession, { lie: "output" | "receipt"; chain: ReceiptChain; held?: Held }>();
  const frame = (value: number) => encodeTensor(new Float32Array(vocab).fill(value), [1, 1, vocab], "none");
  await serveRogueSpans(rogue, async (message, session) => {
    let state = sessions.get(session);
    if (!state) sessions.set(session, (state = { lie: streams++ % 2 === 0 ? "output" : "receipt", chain: new ReceiptChain() }));
    if (message.kind === Kind.Step) {
      const fields: ReceiptFields = {
        sessionId: session.sessionId,
        stepId: message.step.stepId,
        start: 0,
        end: 4,
        inputHash: inputHash({ tokens: message.step.tokens }),
        outputHash: sha256(frame(0.5)),
      };
      const head = state.chain.fold(fields);
      const signature = signedAt(state.chain.count) ? await signHead(key, head) : new Uint8Array(64);
      state.held = { stepId: fields.stepId, inputHash: fields.inputHash, signature, outputHash: fields.outputHash };
      await session.write(encodeCommit(state.held));
    } else if (message.kind === Kind.Reveal && state.held) {
      const held = state.held;
      if (state.lie === "output") await session.write(encodeResult(held.stepId, held, frame(0.25)));
      else await session.write(encodeResult(held.stepId, { inputHash: held.inputHash, signature: new Uint8Array(64) }, frame(0.5)));
    }
  });
  return rogue;
}

test("a node whose reveal does not match its commitment fails the reveal with BAD_REVEAL", async () => {
  const modelId = "commit-reveal-rogue";
  const rogue = await lyingRevealer(modelId);
  try {
    const p = provider(modelId);
    const [hop] = await hops(p, [rogue.peerId.toString()]);
    const outputLiar = await p.open(hop!, 16);
    const receiptLiar = await p.open(hop!, 16);
    try {
      const tokens = [1, 2];
      const first = await outputLiar.commit!({ tokens }, { allLogits: false });
      await assert.rejects(first.reveal(), { name: "SpanFailure", code: "BAD_REVEAL", message: /does not hash to the committed value/ });
      const second = await receiptLiar.commit!({ tokens }, { allLogits: false });
      await assert.rejects(second.reveal(), { name: "SpanFailure", code: "BAD_REVEAL", message: /another receipt than its commitment/ });
      await outputLiar.settle!(); // the commitments themselves were signed by the rogue
    } finally {
      await outputLiar.close();
      await receiptLiar.close();
    }
  } finally {
    await rogue.stop();
  }
});
