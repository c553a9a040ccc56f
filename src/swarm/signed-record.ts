// Node records sealed in libp2p signed envelopes (libp2p RFC 0002) with the node's identity key,
// with an expiry (hybrid sharding, arXiv 2407.19775): a client drops any record that does not open under our
// domain, is not our payload type, is signed by a key other than the peer it names, is expired,
// too far in the future or out of range. Time is passed in, so the same checks run under a
// simulator's clock.
//
// Wire format: the marshalled envelope (its protobuf: public key, payload type, payload, signature).
//   domain       "tessera-node-record" (signed over, never sent: a record sealed for another
//                domain, e.g. a libp2p peer record, does not verify as ours)
//   payload type the unsigned varint of multicodec 0x300e55, in the multicodec table's private-use
//                range 0x300000–0x3fffff, where the table registers nothing
//   payload      the canonical JSON (below) of the NodeInfo plus expiresAt, UTF-8
import type { PrivateKey, PublicKey, Record as EnvelopeRecord } from "@libp2p/interface";
import { peerIdFromPublicKey } from "@libp2p/peer-id";
import { RecordEnvelope } from "@libp2p/peer-record";
import { errorMessage } from "../log.js";
import type { NodeInfo } from "./protocol.js";
import { canonicalJson } from "../canonical-json.js";

export { canonicalJson };

/** Records live 150 s; nodes refresh them every 60 s. */
export const RECORD_TTL_MS = 150_000;

/** The largest envelope a node signs, a server stores or a client reads. */
export const MAX_RECORD_BYTES = 16 << 10;

/** The marshalled signed envelope, as stored in the DHT. */
export type SignedRecord = Uint8Array;

export type RecordBody = NodeInfo & { expiresAt: number };

/** Multicodec code of the payload type (private-use range, see the header). */
export const NODE_RECORD_CODE = 0x300e55;

/** A Tessera node record as the payload of a libp2p signed envelope. */
export class TesseraNodeRecord implements EnvelopeRecord {
  static readonly DOMAIN = "tessera-node-record";
  static readonly CODEC: Uint8Array = varint(NODE_RECORD_CODE);
  readonly domain = TesseraNodeRecord.DOMAIN;
  readonly codec = TesseraNodeRecord.CODEC;

  constructor(readonly body: RecordBody) {}

  marshal(): Uint8Array {
    return new TextEncoder().encode(canonicalJson(this.body));
  }

  equals(other: EnvelopeRecord): boolean {
    return other.domain === this.domain && bytesEqual(other.codec, this.codec) && bytesEqual(other.marshal(), this.marshal());
  }
}

/** Seals `info`, expiring at now + RECORD_TTL_MS, in an envelope signed by `key`; returns its bytes. */
export async function signRecord(key: PrivateKey, info: NodeInfo, now: number): Promise<SignedRecord> {
  const envelope = await RecordEnvelope.seal(new TesseraNodeRecord({ ...info, expiresAt: now + RECORD_TTL_MS }), key);
  const bytes = envelope.marshal();
  if (bytes.byteLength > MAX_RECORD_BYTES) throw new Error(`record of ${bytes.byteLength} bytes is over the ${MAX_RECORD_BYTES}-byte limit`);
  return bytes;
}

/** Opens the envelope bytes and checks its signature and payload type; the envelope, or the reason it is rejected. */
export async function openEnvelope(raw: unknown): Promise<RecordEnvelope | string> {
  if (!(raw instanceof Uint8Array)) return "malformed record: not envelope bytes";
  if (raw.byteLength > MAX_RECORD_BYTES) return `record of ${raw.byteLength} bytes is over the ${MAX_RECORD_BYTES}-byte limit`;
  let envelope: RecordEnvelope;
  try {
    envelope = await RecordEnvelope.openAndCertify(raw, TesseraNodeRecord.DOMAIN);
  } catch (e) {
    // Handled: the reason is the answer.
    if (e instanceof Error && e.name === "InvalidSignatureError") {
      return `envelope signature does not match its payload for domain ${TesseraNodeRecord.DOMAIN} (altered, or sealed for another domain)`;
    }
    return `malformed record: not a signed envelope (${errorMessage(e)})`;
  }
  if (!bytesEqual(envelope.payloadType, TesseraNodeRecord.CODEC)) {
    return `payload type ${hex(envelope.payloadType)} is not a Tessera node record (${hex(TesseraNodeRecord.CODEC)})`;
  }
  return envelope;
}

/** The peer id (string) of an envelope's signing key, or undefined for a key libp2p has no peer id for. */
export function signerOf(publicKey: PublicKey): string | undefined {
  try {
    return peerIdFromPublicKey(publicKey).toString();
  } catch {
    // Handled: no peer id means no peer the record could be of; callers reject it.
    return undefined;
  }
}

/**
 * The record an envelope holds once its signature, payload type, payload encoding and signer are
 * checked (the signer is the peer the record names), or the reason it is rejected. Nothing about
 * time or ranges: verifyRecord adds those.
 */
export async function openRecord(signed: unknown): Promise<RecordBody | string> {
  const envelope = await openEnvelope(signed);
  if (typeof envelope === "string") return envelope;
  const body = parsePayload(envelope.payload);
  if (typeof body === "string") return body;
  if (typeof body.peerId !== "string" || !body.peerId) return `bad peer id ${String(body.peerId)}`;
  const signer = signerOf(envelope.publicKey);
  if (signer !== body.peerId) return `signature does not match peer ${body.peerId}: the envelope is signed by ${signer ?? "an unknown key type"}`;
  return body;
}

/** The verified record, or the reason it is rejected. */
export async function verifyRecord(signed: unknown, now: number): Promise<RecordBody | string> {
  const body = await openRecord(signed);
  if (typeof body === "string") return body;
  if (!(typeof body.expiresAt === "number" && body.expiresAt > now)) return "record expired";
  if (body.expiresAt > now + 2 * RECORD_TTL_MS) return "record expires too far in the future";
  const ints = [body.start, body.end, body.numBlocks, body.cacheTokensLeft];
  if (!ints.every((v) => Number.isInteger(v) && v >= 0) || !(body.start < body.end && body.end <= body.numBlocks)) {
    return `span [${body.start}, ${body.end}) of ${body.numBlocks} blocks is invalid`;
  }
  if (![body.inferenceRps, body.forwardRps, body.linkMbps].every((v) => typeof v === "number" && Number.isFinite(v) && v >= 0)) return "non-finite throughput";
  if (body.state !== "online" && body.state !== "offline") return `unknown state ${String(body.state)}`;
  if (typeof body.modelId !== "string" || typeof body.checkpointHash !== "string") return "missing model id or checkpoint hash";
  if (body.manifestId !== undefined && !(typeof body.manifestId === "string" && /^[0-9a-f]{64}$/.test(body.manifestId))) return "malformed manifestId";
  const pings = body.nextPings as unknown;
  if (typeof pings !== "object" || pings === null || Array.isArray(pings) || Object.values(pings).some((v) => !(typeof v === "number" && v >= 0 && v < 3600))) {
    return "malformed nextPings";
  }
  return body;
}

function parsePayload(payload: Uint8Array): RecordBody | string {
  let text: string;
  let body: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
    body = JSON.parse(text);
  } catch {
    // Handled: the reason is the answer.
    return "record payload is not JSON";
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return "malformed record: payload is not an object";
  // One encoding per record: no duplicate keys a reader could resolve differently, no padding.
  if (canonicalJson(body) !== text) return "record payload is not canonical JSON";
  return body as RecordBody;
}

function varint(n: number): Uint8Array {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 0x80)) out.push((n & 0x7f) | 0x80);
  out.push(n);
  return Uint8Array.from(out);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((v, i) => v === b[i]);
}

function hex(bytes: Uint8Array): string {
  return `0x${Buffer.from(bytes).toString("hex")}`;
}
