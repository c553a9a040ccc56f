// Announcing and finding spans in the swarm's kad-dht (sharding design §2). Every node provides
// one content key per (model, block) it serves, and stores its signed record under
// `/tessera/<peerId>`. A client finds the holders of each block, then fetches and verifies their
// records. Servers refuse to store a record that is not signed by the peer it names, expired, or
// malformed; clients verify every record again under their own clock and report why one is dropped.
import { kadDHT, passthroughMapper, type KadDHT } from "@libp2p/kad-dht";
import type { Multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { verifyRecord, type SignedRecord } from "./signed-record.js";

export const DHT_PROTOCOL = "/tessera/kad/1.0.0";
const NAMESPACE = "tessera";
const RAW_CODEC = 0x55;
const MAX_RECORD_BYTES = 16 << 10;

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

/** Stores the signed record and provides every block; resolves when the DHT queries end. */
export async function announce(dht: KadDHT, signed: SignedRecord, peerId: string, modelId: string, blocks: readonly number[], signal?: AbortSignal): Promise<void> {
  const value = new TextEncoder().encode(JSON.stringify(signed));
  await drain(dht.put(recordKey(peerId), value, { signal }));
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

/** The newest record stored for `peerId`, unverified (the caller verifies it), or undefined. */
export async function fetchRecord(dht: KadDHT, peerId: string, signal?: AbortSignal): Promise<unknown> {
  let found: unknown;
  try {
    for await (const event of dht.get(recordKey(peerId), { signal })) {
      if (event.name === "VALUE") found = parseValue(event.value);
    }
  } catch {
    // no peer holds a record for this key
  }
  return found;
}

async function drain(events: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of events);
}

function parseValue(value: Uint8Array): unknown {
  if (value.byteLength > MAX_RECORD_BYTES) throw new Error(`record of ${value.byteLength} bytes`);
  return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(value));
}

function keyPeer(key: Uint8Array): string {
  return new TextDecoder().decode(key).slice(NAMESPACE.length + 2);
}

/** What a server accepts to store: a valid record, signed by the peer named in the key. */
async function validateStrict(key: Uint8Array, value: Uint8Array): Promise<void> {
  const body = await verifyRecord(parseValue(value), Date.now());
  if (typeof body === "string") throw new Error(body);
  if (body.peerId !== keyPeer(key)) throw new Error(`record of ${body.peerId} stored under ${keyPeer(key)}`);
}

/** Clients check only the shape here, and verify with reasons (and their own clock) afterwards. */
async function validateShape(_key: Uint8Array, value: Uint8Array): Promise<void> {
  const v = parseValue(value) as Partial<SignedRecord>;
  if (typeof v?.record !== "string" || typeof v.signature !== "string") throw new Error("malformed record");
}

function selectLatest(_key: Uint8Array, values: Uint8Array[]): number {
  let best = 0;
  let bestExpiry = -Infinity;
  values.forEach((value, i) => {
    try {
      const expiresAt = JSON.parse(String((parseValue(value) as SignedRecord).record)).expiresAt;
      if (typeof expiresAt === "number" && expiresAt > bestExpiry) [best, bestExpiry] = [i, expiresAt];
    } catch {
      // an unreadable value never wins
    }
  });
  return best;
}
