// Step receipts (secure inference, arXiv 2407.19401): every result a node returns commits to
// (session id, step id, span, hash of the input it ran on, hash of the output frame it sent), and
// the node's Ed25519 signature covers those commitments. A wrong answer is then evidence that
// names its author: anyone holding the receipts, the inputs and the node's peer id can check who
// computed what.
//
// Signing every step costs ~0.06 ms on the node and ~0.14 ms of verification on the client per
// hop, a third of a hop's whole overhead on loopback; so, as TOPLOC commits once per 32 tokens,
// the node folds each step's receipt into a hash chain (head = sha256(head | sha256(receipt)))
// and signs the head on the 1st, 17th, 33rd… result of a session. The client folds the same
// chain from what it sent and received, and checks each signature against its own head: a
// signature over the head commits to every step before it.
//
//   receipt bytes: "tessera-receipt/1\0" | session id (16 bytes, zeros when unnamed) | u32 step |
//                  u32 start | u32 end | sha256(input) | sha256(output frame)      (little-endian)
//   signed bytes:  "tessera-receipt-chain/1\0" | head
//   input: token ids as int32, or hidden states as the f32 values the node decoded
import { createHash, createPublicKey, type KeyObject, verify } from "node:crypto";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";

const DOMAIN = new TextEncoder().encode("tessera-receipt/1\0");
export const RECEIPT_BYTES = 32 + 64;

export interface ReceiptFields {
  /** 32 lowercase hex digits, or undefined for a session opened without an id. */
  sessionId?: string;
  stepId: number;
  start: number;
  end: number;
  /** sha256 of the input the node ran on. */
  inputHash: Uint8Array;
  /** sha256 of the output frame it sent. */
  outputHash: Uint8Array;
}

export interface Receipt extends ReceiptFields {
  /** The node that sent it. */
  peerId: string;
  /** The session's receipt chain after this step. */
  chainHead: Uint8Array;
  /** The node's signature over `chainHead`, on the steps it signs (SIGN_EVERY). */
  signature?: Uint8Array;
}

/** The node signs the chain head on results 1, 1 + SIGN_EVERY, 1 + 2·SIGN_EVERY, … of a session. */
export const SIGN_EVERY = 16;
const CHAIN_DOMAIN = new TextEncoder().encode("tessera-receipt-chain/1\0");

/** Whether the `count`-th result of a session (from 1) carries a signature. */
export function signedAt(count: number): boolean {
  return count % SIGN_EVERY === 1 % SIGN_EVERY;
}

/** A session's receipt chain, folded the same way by the node and the client. */
export class ReceiptChain {
  head: Uint8Array = new Uint8Array(32);
  count = 0;

  fold(fields: ReceiptFields): Uint8Array {
    const h = createHash("sha256");
    h.update(this.head);
    h.update(sha256(receiptBytes(fields)));
    this.head = new Uint8Array(h.digest());
    this.count++;
    return this.head;
  }
}

export function sha256(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(bytes).digest());
}

/** The hash a receipt gives an input: token ids as int32 little-endian, hidden states as their f32 bytes. */
export function inputHash(input: { tokens?: ArrayLike<number>; hidden?: Float32Array }): Uint8Array {
  if (input.tokens) return sha256(new Uint8Array(Int32Array.from(input.tokens).buffer));
  const h = input.hidden ?? new Float32Array();
  return sha256(new Uint8Array(h.buffer, h.byteOffset, h.byteLength));
}

export function receiptBytes(f: ReceiptFields): Uint8Array {
  const out = new Uint8Array(DOMAIN.length + 16 + 12 + 64);
  out.set(DOMAIN, 0);
  let at = DOMAIN.length;
  if (f.sessionId) out.set(Buffer.from(f.sessionId, "hex"), at);
  at += 16;
  const view = new DataView(out.buffer);
  view.setUint32(at, f.stepId, true);
  view.setUint32(at + 4, f.start, true);
  view.setUint32(at + 8, f.end, true);
  at += 12;
  out.set(f.inputHash, at);
  out.set(f.outputHash, at + 32);
  return out;
}

/** The node's signature over a chain head. */
export async function signHead(key: PrivateKey, head: Uint8Array): Promise<Uint8Array> {
  return key.sign(chainBytes(head));
}

function chainBytes(head: Uint8Array): Uint8Array {
  const out = new Uint8Array(CHAIN_DOMAIN.length + 32);
  out.set(CHAIN_DOMAIN, 0);
  out.set(head, CHAIN_DOMAIN.length);
  return out;
}

const keys = new Map<string, KeyObject | undefined>();

/** The peer's Ed25519 key as a Node KeyObject (cached), or undefined for a peer id without one. */
function keyOf(peerId: string): KeyObject | undefined {
  if (!keys.has(peerId)) {
    const key = peerIdFromString(peerId).publicKey;
    keys.set(
      peerId,
      key?.type === "Ed25519"
        ? createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(key.raw).toString("base64url") }, format: "jwk" })
        : undefined,
    );
    if (keys.size > 4096) keys.delete(keys.keys().next().value as string);
  }
  return keys.get(peerId);
}

/**
 * Whether `head` is signed by `peerId`. Checked on libuv's thread pool, so a client verifies one
 * hop's signature while the next hop computes.
 */
export function verifyHead(peerId: string, head: Uint8Array, signature: Uint8Array): Promise<boolean> {
  const key = keyOf(peerId);
  if (!key || signature.byteLength !== 64) return Promise.resolve(false);
  return new Promise((resolve) => verify(null, chainBytes(head), key, signature, (error, ok) => resolve(!error && ok)));
}

/**
 * Checks a node's receipts of one session as evidence: they must fold into their recorded chain
 * heads from the start, and every signature must be the named node's over its head. Returns the
 * reason they fail, or undefined. Receipts after the last signature are not covered yet.
 */
export async function verifyReceipts(receipts: readonly Receipt[]): Promise<string | undefined> {
  const chain = new ReceiptChain();
  for (const r of receipts) {
    const head = chain.fold(r);
    if (!Buffer.from(head).equals(Buffer.from(r.chainHead))) return `step ${r.stepId}: the chain does not fold to its recorded head`;
    if (r.signature && !(await verifyHead(r.peerId, head, r.signature))) return `step ${r.stepId}: the signature is not ${r.peerId}'s`;
    if (signedAt(chain.count) && !r.signature) return `step ${r.stepId}: the node did not sign where it must`;
  }
  return undefined;
}
