// Node records as libp2p signed envelopes (RFC 0002): sealing, the checks a reader makes, the DHT
// validators and selector, and a server and a client over real libp2p hosts on loopback.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { test } from "node:test";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey, peerIdFromPublicKey } from "@libp2p/peer-id";
import { RecordEnvelope } from "@libp2p/peer-record";
import { fetchRecord, recordKey, selectLatest, validateShape, validateStrict } from "../src/swarm/dht.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import type { NodeInfo } from "../src/swarm/protocol.js";
import { permissiveDhtHost } from "./support/rogue.js";
import { canonicalJson, MAX_RECORD_BYTES, RECORD_TTL_MS, type RecordBody, signRecord, TesseraNodeRecord, verifyRecord } from "../src/swarm/signed-record.js";

const NOW = 1_000_000;

const infoOf = (key: PrivateKey, extra: Partial<NodeInfo> = {}): NodeInfo => ({
  peerId: peerIdFromPrivateKey(key).toString(),
  state: "online",
  modelId: "tiny-llama",
  checkpointHash: "x",
  numBlocks: 8,
  start: 2,
  end: 6,
  inferenceRps: 50,
  forwardRps: 500,
  cacheTokensLeft: 1000,
  nextPings: { b: 0.01, a: 0.02 },
  linkMbps: 0,
  version: "x",
  ...extra,
});

const bodyOf = (key: PrivateKey, now: number, extra: Partial<NodeInfo> = {}): RecordBody => ({ ...infoOf(key, extra), expiresAt: now + RECORD_TTL_MS });

/** Seals any payload in an envelope, under any domain and payload type (what a forger can do). */
async function seal(key: PrivateKey, payload: string, opts: { domain?: string; codec?: Uint8Array } = {}): Promise<Uint8Array> {
  const bytes = new TextEncoder().encode(payload);
  const record = { domain: opts.domain ?? TesseraNodeRecord.DOMAIN, codec: opts.codec ?? TesseraNodeRecord.CODEC, marshal: () => bytes, equals: () => false };
  return (await RecordEnvelope.seal(record, key)).marshal();
}

test("a record is a signed envelope of our domain and payload type holding the canonical JSON of the node info and its expiry", async () => {
  const key = await generateKeyPair("Ed25519");
  const info = infoOf(key);
  const signed = await signRecord(key, info, NOW);
  assert.ok(signed instanceof Uint8Array);

  const envelope = await RecordEnvelope.openAndCertify(signed, "tessera-node-record");
  assert.deepEqual([...envelope.payloadType], [0xd5, 0x9c, 0xc0, 0x01], "the varint of multicodec 0x300e55 (private use)");
  assert.ok(peerIdFromPublicKey(envelope.publicKey).equals(peerIdFromPrivateKey(key)));
  const text = new TextDecoder().decode(envelope.payload);
  assert.equal(text, canonicalJson({ ...info, expiresAt: NOW + RECORD_TTL_MS }));
  assert.ok(text.startsWith('{"cacheTokensLeft":1000,"checkpointHash":"x",'));
  assert.ok(text.includes('"nextPings":{"a":0.02,"b":0.01}'), "nested keys are sorted too");
  await assert.rejects(RecordEnvelope.openAndCertify(signed, "libp2p-peer-record"), /not valid for the given domain/);

  const accepted = await verifyRecord(signed, NOW + 1000);
  assert.equal(typeof accepted, "object");
  assert.deepEqual(accepted, { ...info, expiresAt: NOW + RECORD_TTL_MS });
});

test("canonical JSON sorts keys at every depth, has no whitespace and drops undefined members", () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: "é" }], c: null }, u: undefined }), '{"a":{"c":null,"d":[1,{"y":"é","z":1}]},"b":1}');
  assert.equal(canonicalJson({ "9": 1, "10": 2 }), '{"10":2,"9":1}', "integer-like keys sort as strings");
  assert.equal(canonicalJson([undefined, NaN]), "[null,null]");
});

test("an altered payload or an envelope sealed for another domain fails the signature check", async () => {
  const key = await generateKeyPair("Ed25519");
  const good = RecordEnvelope.createFromProtobuf(await signRecord(key, infoOf(key), NOW));
  const altered = new TextEncoder().encode(canonicalJson({ ...bodyOf(key, NOW), start: 0 }));
  const tampered = new RecordEnvelope({ publicKey: good.publicKey, payloadType: good.payloadType, payload: altered, signature: good.signature }).marshal();
  assert.match(String(await verifyRecord(tampered, NOW)), /envelope signature does not match its payload for domain tessera-node-record/);

  const otherDomain = await seal(key, canonicalJson(bodyOf(key, NOW)), { domain: "libp2p-peer-record" });
  assert.match(String(await verifyRecord(otherDomain, NOW)), /signature does not match .*sealed for another domain/);
});

test("an envelope of another payload type is not a Tessera node record", async () => {
  const key = await generateKeyPair("Ed25519");
  const peerRecordType = Uint8Array.from([0x03, 0x01]); // libp2p-peer-record
  const foreign = await seal(key, canonicalJson(bodyOf(key, NOW)), { codec: peerRecordType });
  assert.match(String(await verifyRecord(foreign, NOW)), /payload type 0x0301 is not a Tessera node record \(0xd59cc001\)/);
});

test("a record signed by one peer naming another is rejected", async () => {
  const key = await generateKeyPair("Ed25519");
  const other = await generateKeyPair("Ed25519");
  const impostor = await signRecord(other, infoOf(key), NOW);
  const reason = String(await verifyRecord(impostor, NOW));
  assert.match(reason, /signature does not match peer/);
  assert.ok(reason.includes(peerIdFromPrivateKey(key).toString()) && reason.includes(peerIdFromPrivateKey(other).toString()), reason);
});

test("expired, far-future, out-of-range and non-finite records are rejected, saying which", async () => {
  const key = await generateKeyPair("Ed25519");
  const good = await signRecord(key, infoOf(key), NOW);
  assert.match(String(await verifyRecord(good, NOW + RECORD_TTL_MS)), /record expired/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key), NOW + 10 * RECORD_TTL_MS), NOW)), /too far in the future/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { end: 9 }), NOW), NOW)), /span \[2, 9\) of 8 blocks is invalid/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { start: -1 }), NOW), NOW)), /span \[-1, 6\) of 8 blocks is invalid/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { cacheTokensLeft: 0.5 }), NOW), NOW)), /invalid/);
  for (const bad of [{ inferenceRps: NaN }, { forwardRps: Infinity }, { linkMbps: -1 }]) {
    assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, bad), NOW), NOW)), /non-finite throughput/, JSON.stringify(Object.keys(bad)));
  }
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { state: "gone" as "online" }), NOW), NOW)), /unknown state gone/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { nextPings: { p: 1e9 } }), NOW), NOW)), /malformed nextPings/);
  assert.match(String(await verifyRecord(await signRecord(key, infoOf(key, { modelId: 7 as unknown as string }), NOW), NOW)), /missing model id/);
});

test("values that are not envelopes, oversized or with a non-canonical payload are rejected; signing refuses an oversized record", async () => {
  const key = await generateKeyPair("Ed25519");
  assert.match(String(await verifyRecord(42, NOW)), /malformed record: not envelope bytes/);
  assert.match(String(await verifyRecord({ record: "{}", signature: "00" }, NOW)), /malformed record/);
  assert.match(String(await verifyRecord(Uint8Array.from([1, 2, 3]), NOW)), /not a signed envelope/);
  assert.match(String(await verifyRecord(new Uint8Array(MAX_RECORD_BYTES + 1), NOW)), /16385 bytes is over the 16384-byte limit/);
  const text = canonicalJson(bodyOf(key, NOW));
  assert.match(String(await verifyRecord(await seal(key, JSON.stringify(bodyOf(key, NOW), null, 1)), NOW)), /not canonical JSON/);
  assert.match(String(await verifyRecord(await seal(key, `${text.slice(0, -1)},"start":0}`), NOW)), /not canonical JSON/, "a duplicate key");
  assert.match(String(await verifyRecord(await seal(key, "{"), NOW)), /payload is not JSON/);
  assert.match(String(await verifyRecord(await seal(key, "[1]"), NOW)), /payload is not an object/);
  await assert.rejects(signRecord(key, infoOf(key, { modelId: "m".repeat(MAX_RECORD_BYTES) }), NOW), /over the 16384-byte limit/);
});

test("DHT validators: servers refuse what does not verify under its own key, clients take any envelope, both throw Errors; the newest verified value is selected", async () => {
  const key = await generateKeyPair("Ed25519");
  const other = await generateKeyPair("Ed25519");
  const now = Date.now();
  const mine = recordKey(peerIdFromPrivateKey(key).toString());
  const valid = await signRecord(key, infoOf(key), now);
  const forged = await signRecord(other, infoOf(key), now + 60_000);
  const garbage = Uint8Array.from([1, 2, 3]);

  await validateStrict(mine, valid);
  const refusals = [
    [mine, forged, /signature does not match peer/],
    [recordKey(peerIdFromPrivateKey(other).toString()), valid, /record of .* stored under/],
    [mine, await signRecord(key, infoOf(key), now - 2 * RECORD_TTL_MS), /expired/],
    [mine, garbage, /not a signed envelope/],
    [mine, new Uint8Array(MAX_RECORD_BYTES + 1), /over the 16384-byte limit/],
  ] as const;
  for (const [k, v, reason] of refusals) await assert.rejects(validateStrict(k, v), (e) => e instanceof Error && reason.test(e.message));

  await validateShape(mine, forged); // the client verifies it later, with a reason
  await assert.rejects(validateShape(mine, garbage), (e) => e instanceof Error && /not a signed envelope/.test(e.message));
  await assert.rejects(validateShape(mine, new Uint8Array(MAX_RECORD_BYTES + 1)), (e) => e instanceof Error && /over the/.test(e.message));
  await assert.rejects(validateShape(mine, "x" as unknown as Uint8Array), (e) => e instanceof Error);

  const newer = await signRecord(key, infoOf(key), now + 1000);
  const othersOwn = await signRecord(other, infoOf(other), now + 90_000); // valid, but not the record of this key's peer
  assert.equal(await selectLatest(mine, [forged, valid, garbage, newer, othersOwn]), 3);
  assert.equal(await selectLatest(mine, [garbage, forged]), 0, "none verifies: the first, for the caller to reject");
});

/** A DHT server that stores anything (what a rogue peer runs). */
const roguePeer = permissiveDhtHost;

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sameBytes = (a: unknown, b: Uint8Array) => a instanceof Uint8Array && Buffer.from(a).equals(b);

test("over loopback: a DHT server refuses forged and expired envelopes; a client reading them from a rogue peer is told why", async () => {
  const rogueKey = await generateKeyPair("Ed25519");
  const other = await generateKeyPair("Ed25519");
  const [server, client, rogue] = await Promise.all([createSwarmHost({ role: "server" }), createSwarmHost({ role: "client" }), roguePeer(rogueKey)]);
  try {
    const bootstrap = [server.getMultiaddrs()[0]!.toString()];
    await Promise.all([joinSwarm(rogue as unknown as SwarmHost, bootstrap), joinSwarm(client, bootstrap)]);
    const rogueId = rogue.peerId.toString();

    /** The rogue stores `value` under its own key: in its own store, and on the server if the server accepts it. */
    const put = async (value: Uint8Array) => {
      let stored = false;
      let failed = false;
      for await (const e of rogue.services.dht.put(recordKey(rogueId), value, { signal: AbortSignal.timeout(10_000) })) {
        if (e.name === "PEER_RESPONSE" && e.from.equals(server.peerId) && e.messageName === "PUT_VALUE") stored = true;
        if (e.name === "QUERY_ERROR" && e.from.equals(server.peerId)) failed = true;
      }
      return stored ? "stored" : failed ? "refused" : "not asked";
    };
    /** What the client reads for the rogue once the value is `expected` (the rogue serves it itself). */
    const read = (expected: Uint8Array) =>
      until("the client to read the rogue's value", async () => {
        const raw = await fetchRecord(client.services.dht, rogueId, AbortSignal.timeout(5000));
        return sameBytes(raw, expected) ? raw : undefined;
      });

    // Signed by another key, naming the rogue.
    const forged = await signRecord(other, { ...infoOf(rogueKey), numBlocks: 4, start: 0, end: 4 }, Date.now());
    assert.equal(await put(forged), "refused");
    assert.match(String(await verifyRecord(await read(forged), Date.now())), new RegExp(`signature does not match peer ${rogueId}`));

    const expired = await signRecord(rogueKey, infoOf(rogueKey), Date.now() - 2 * RECORD_TTL_MS);
    assert.equal(await put(expired), "refused");
    assert.match(String(await verifyRecord(await read(expired), Date.now())), /record expired/);

    // The same peer's valid record is stored; a later forged one the rogue serves never wins over it.
    const valid = await signRecord(rogueKey, infoOf(rogueKey), Date.now());
    assert.equal(await put(valid), "stored");
    const laterForgery = await signRecord(other, infoOf(rogueKey), Date.now() + 60_000);
    assert.equal(await put(laterForgery), "refused");
    const body = await verifyRecord(await read(valid), Date.now());
    assert.equal(typeof body, "object", String(body));
    assert.equal((body as RecordBody).peerId, rogueId);
  } finally {
    await rogue.stop();
    await client.stop();
    await server.stop();
  }
});
