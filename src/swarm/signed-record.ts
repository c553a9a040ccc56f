// Node records signed with the node's libp2p identity key, with an expiry (sharding design §2):
// a client drops any record that is forged, expired, too far in the future or out of range.
// Time is passed in, so the same checks run under a simulator's clock.
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import type { NodeInfo } from "./protocol.js";

/** Records live 150 s; nodes refresh them every 60 s. */
export const RECORD_TTL_MS = 150_000;

export interface SignedRecord {
  /** The canonical JSON of the record, exactly as signed. */
  record: string;
  /** Ed25519 signature, hex. */
  signature: string;
}

export type RecordBody = NodeInfo & { expiresAt: number };

export async function signRecord(key: PrivateKey, info: NodeInfo, now: number): Promise<SignedRecord> {
  const record = JSON.stringify({ ...info, expiresAt: now + RECORD_TTL_MS });
  const signature = await key.sign(new TextEncoder().encode(record));
  return { record, signature: Buffer.from(signature).toString("hex") };
}

/** The verified record, or the reason it is rejected. */
export async function verifyRecord(signed: unknown, now: number): Promise<RecordBody | string> {
  const s = signed as Partial<SignedRecord>;
  if (typeof s?.record !== "string" || typeof s.signature !== "string" || !/^[0-9a-f]+$/i.test(s.signature)) return "malformed record";
  let body: RecordBody;
  try {
    body = JSON.parse(s.record);
  } catch {
    return "record is not JSON";
  }
  let key;
  try {
    key = peerIdFromString(String(body.peerId)).publicKey;
  } catch {
    return `bad peer id ${String(body.peerId)}`;
  }
  if (!key) return "peer id carries no public key";
  const valid = await key.verify(new TextEncoder().encode(s.record), Buffer.from(s.signature, "hex"));
  if (!valid) return `signature does not match peer ${body.peerId}`;
  if (!(typeof body.expiresAt === "number" && body.expiresAt > now)) return "record expired";
  if (body.expiresAt > now + 2 * RECORD_TTL_MS) return "record expires too far in the future";
  const ints = [body.start, body.end, body.numBlocks, body.cacheTokensLeft];
  if (!ints.every((v) => Number.isInteger(v) && v >= 0) || !(body.start < body.end && body.end <= body.numBlocks)) {
    return `span [${body.start}, ${body.end}) of ${body.numBlocks} blocks is invalid`;
  }
  if (![body.inferenceRps, body.forwardRps, body.linkMbps].every((v) => typeof v === "number" && Number.isFinite(v) && v >= 0)) return "non-finite throughput";
  if (body.state !== "online" && body.state !== "offline") return `unknown state ${String(body.state)}`;
  if (typeof body.modelId !== "string" || typeof body.checkpointHash !== "string") return "missing model id or checkpoint hash";
  const pings = body.nextPings as unknown;
  if (typeof pings !== "object" || pings === null || Array.isArray(pings) || Object.values(pings).some((v) => !(typeof v === "number" && v >= 0 && v < 3600))) {
    return "malformed nextPings";
  }
  return body;
}
