// Announcing and finding spans in the swarm's kad-dht (hybrid sharding, arXiv 2407.19775). Every node provides
// one content key per (model, block) it serves, and stores its signed record under
// `/tessera/<peerId>` (a libp2p signed envelope, signed-record.ts). A client finds the holders of
// each block, then fetches and verifies their records. Servers refuse to store a record that is not
// an envelope of ours signed by the peer it names and stored under, expired, or malformed; clients
// only check that a value is an envelope (so they can say why they drop it), verify every record
// again under their own clock and report why one is dropped.
import { kadDHT, passthroughMapper, type KadDHT } from "@libp2p/kad-dht";
import { RecordEnvelope } from "@libp2p/peer-record";
import type { Multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { errorMessage, logger } from "../log.js";
import { MAX_RECORD_BYTES, openRecord, verifyRecord, type SignedRecord } from "./signed-record.js";

const log = logger("swarm:dht");

export const DHT_PROTOCOL = "/tessera/kad/1.0.0";
const NAMESPACE = "tessera";
const RAW_CODEC = 0x55;

export function swarmDht(server: boolean) {
  return kadDHT({
    protocol: DHT_PROTOCOL,
    clientMode: !server,
    // Loopback and LAN addresses are what a local swarm uses.
    peerInfoMapper: passthroughMapper,
    allowQueryWithZeroPeers: true,
    validators: { [NAMESPACE]: server ? validateStrict : validateShape },
    selectors: { [NAMESPACE]: selectLatest },
  });
}

export function recordKey(peerId: string): Uint8Array {
  return new TextEncoder().encode(`/${NAMESPACE}/${peerId}`);
}

export async function blockKey(modelId: string, block: number): Promise<CID> {
  return CID.createV1(RAW_CODEC, await sha256.digest(new TextEncoder().encode(`tessera-block/${modelId}/${block}`)));
}

/** Stores the signed record (the envelope bytes) and provides every block; resolves when the DHT queries end. */
export async function announce(
  dht: KadDHT,
  signed: SignedRecord,
  peerId: string,
  modelId: string,
  blocks: readonly number[],
  signal?: AbortSignal,
): Promise<void> {
  await drain(dht.put(recordKey(peerId), signed, { signal }));
  await Promise.all(blocks.map(async (b) => drain(dht.provide(await blockKey(modelId, b), { signal }))));
}

/** Peers that provide `block` of `modelId`, with the addresses the DHT gave for them. */
export async function blockHolders(dht: KadDHT, modelId: string, block: number, signal?: AbortSignal): Promise<Map<string, Multiaddr[]>> {
  const holders = new Map<string, Multiaddr[]>();
  for await (const event of dht.findProviders(await blockKey(modelId, block), { signal })) {
    if (event.name !== "PROVIDER" && event.name !== "PEER_RESPONSE") continue;
    for (const p of event.providers ?? []) {
      const known = holders.get(p.id.toString()) ?? [];
      holders.set(p.id.toString(), [...known, ...p.multiaddrs]);
    }
  }
  return holders;
}

/**
 * The newest record stored for `peerId` (envelope bytes), unverified (the caller verifies it), or
 * undefined when no peer holds one.
 */
export async function fetchRecord(dht: KadDHT, peerId: string, signal?: AbortSignal): Promise<unknown> {
  const key = recordKey(peerId);
  // The values peers answered with (each passed this host's validator): kad-dht yields the best one
  // only after sending corrections to peers holding older ones, and a failed correction ends the
  // query without it.
  const answered: Uint8Array[] = [];
  try {
    let found: Uint8Array | undefined;
    for await (const event of dht.get(key, { signal })) {
      if (event.name === "VALUE") found = event.value;
      else if (event.name === "PEER_RESPONSE" && event.record) answered.push(event.record.value);
    }
    if (found) return found;
  } catch (e) {
    if (e instanceof Error && e.name === "NotFoundError") log.trace("no record of %s in the DHT", peerId);
    else if (signal?.aborted) log("looking up the record of %s: cut short (%s)", peerId, errorMessage(e));
    else log.error("looking up the record of %s: %s", peerId, errorMessage(e));
  }
  if (!answered.length) return undefined;
  return answered[await selectLatest(key, answered)];
}

async function drain(events: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of events);
}

function keyPeer(key: Uint8Array): string {
  return new TextDecoder().decode(key).slice(NAMESPACE.length + 2);
}

/** Runs a validator body so that whatever it throws is an Error. */
async function asError(run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (e) {
    throw e instanceof Error ? e : new Error(errorMessage(e));
  }
}

function checkSize(value: Uint8Array): void {
  if (!(value instanceof Uint8Array)) throw new Error("record is not bytes");
  if (value.byteLength > MAX_RECORD_BYTES) throw new Error(`record of ${value.byteLength} bytes is over the ${MAX_RECORD_BYTES}-byte limit`);
}

/** What a server accepts to store (or serve): a valid envelope, signed by the peer it names and is stored under. */
export async function validateStrict(key: Uint8Array, value: Uint8Array): Promise<void> {
  await asError(async () => {
    const peer = keyPeer(key);
    try {
      checkSize(value);
      const body = await verifyRecord(value, Date.now());
      if (typeof body === "string") throw new Error(body);
      if (body.peerId !== peer) throw new Error(`record of ${body.peerId} stored under ${peer}`);
    } catch (e) {
      log("refused the record under /%s/%s: %s", NAMESPACE, peer, errorMessage(e));
      throw e;
    }
  });
}

/** Clients check only that a value is an envelope here, and verify with reasons (and their own clock) afterwards. */
export async function validateShape(key: Uint8Array, value: Uint8Array): Promise<void> {
  await asError(async () => {
    checkSize(value);
    try {
      RecordEnvelope.createFromProtobuf(value);
    } catch (e) {
      log.trace("dropped a value under /%s/%s that is not an envelope: %s", NAMESPACE, keyPeer(key), errorMessage(e));
      throw new Error(`record is not a signed envelope: ${errorMessage(e)}`);
    }
  });
}

/**
 * The value with the newest expiresAt among those whose envelope verifies and is signed by the
 * peer the key names; a forged or unreadable value never wins over one that verifies. When none
 * verifies the first is returned, and the caller's verification says why it is dropped.
 */
export async function selectLatest(key: Uint8Array, values: Uint8Array[]): Promise<number> {
  const peer = keyPeer(key);
  const bodies = await Promise.all(values.map((v) => openRecord(v).catch((e: unknown) => `unreadable: ${errorMessage(e)}`)));
  let best = 0;
  let bestExpiry = -Infinity;
  bodies.forEach((body, i) => {
    if (typeof body === "string") return log.trace("a value under /%s/%s is not a candidate: %s", NAMESPACE, peer, body);
    if (body.peerId !== peer) return log.trace("a value under /%s/%s is the record of %s", NAMESPACE, peer, body.peerId);
    if (typeof body.expiresAt === "number" && body.expiresAt > bestExpiry) [best, bestExpiry] = [i, body.expiresAt];
  });
  return best;
}
