// Step receipts (secure inference, arXiv 2407.19401): every result a node returns carries its
// Ed25519 signature over (session id, step id, span, hash of the input it ran on, hash of the
// output frame it sent). A wrong answer is then evidence that names its author: anyone holding
// the receipt, the input and the node's peer id can check who computed what.
//
//   signed bytes: "tessera-receipt/1\0" | session id (16 bytes, zeros when unnamed) | u32 step |
//                 u32 start | u32 end | sha256(input) | sha256(output frame)      (little-endian)
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
  /** The node that signed it. */
  peerId: string;
  signature: Uint8Array;
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

/** The node's signature over a step. */
export async function signReceipt(key: PrivateKey, f: ReceiptFields): Promise<Uint8Array> {
  return key.sign(receiptBytes(f));
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
 * Whether `receipt` is signed by the peer it names, over exactly its fields. Checked on libuv's
 * thread pool, so a client verifies one hop's receipt while the next hop computes.
 */
export function verifyReceipt(receipt: Receipt): Promise<boolean> {
  const key = keyOf(receipt.peerId);
  if (!key || receipt.signature.byteLength !== 64) return Promise.resolve(false);
  return new Promise((resolve) => verify(null, receiptBytes(receipt), key, receipt.signature, (error, ok) => resolve(!error && ok)));
}
