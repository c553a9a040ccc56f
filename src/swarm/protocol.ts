// The span protocol's messages. One libp2p stream carries one inference session; every message
// is length-prefixed and starts with its kind. Control messages are small JSON objects, tensors
// travel as binary tensor frames (src/wire). Everything a peer sends is validated here, so the
// node and the client only ever see well-formed values.
//
// Commit-reveal (consensus verification, arXiv 2407.19401): a step flagged `commit` is answered
// with a Commit message, the result's receipt without its tensor, and the node holds the encoded
// output frame until the client sends Reveal for that step id, answered by the ordinary Result
// (the same receipt; the receipt chain folds once, at the commit). Verifiers of one step so all
// commit before any of them sees another's answer.
import type { Stream } from "@libp2p/interface";
import { decodeTensor, encodeTensor, type Codec, CODECS, type DecodedTensor } from "../wire/tensor-frame.js";
import { ProtocolError } from "../wire/errors.js";
import { type Framed, framed, type FramingOptions } from "./framing.js";
import { RECEIPT_BYTES, sha256 } from "./receipt.js";

export const SPAN_PROTOCOL = "/tessera/span/1.0.0";
/** Node-to-node: a node pushes its output for a session straight to the next node of the route. */
export const PUSH_PROTOCOL = "/tessera/push/1.0.0";
/** Largest message either side accepts (a 2048-token f32 prefill of hidden size 8192 is 64 MiB). */
export const MAX_MESSAGE_BYTES = 128 << 20;
const MAX_CONTROL_BYTES = 64 << 10;

export const enum Kind {
  Open = 1,
  Opened = 2,
  Step = 3,
  Result = 4,
  Error = 5,
  /** Client → node: where to push outputs of this session, and which peer may push into it. */
  Link = 6,
  /** Node → node on the push protocol: a step for the receiver's session `sessionId`. */
  Push = 7,
  /** Node → client: the receipt of a committed step (its output hash), the output held back. */
  Commit = 8,
  /** Client → node: send the output held for a committed step (answered by its Result). */
  Reveal = 9,
}

/** The step message's flag bits. */
const FLAG_ALL_LOGITS = 1;
const FLAG_TOKENS = 2;
const FLAG_PUSH = 4;
const FLAG_COMMIT = 8;
const FLAGS = FLAG_ALL_LOGITS | FLAG_TOKENS | FLAG_PUSH | FLAG_COMMIT;

/** Session ids are 16 random bytes, hex: chosen by the client, known to it and the route only. */
const SESSION_ID = /^[0-9a-f]{32}$/;

export interface PushTarget {
  peerId: string;
  sessionId: string;
  addrs: string[];
}

export interface LinkRequest {
  /** The next hop; absent stops pushing. */
  next?: PushTarget;
  /** The peer allowed to push into this session; absent allows none. */
  prev?: string;
}

export interface OpenRequest {
  start: number;
  end: number;
  maxLength: number;
  /** Codec the node should use for the tensors it returns. */
  codec: Codec;
  /** Names the session for pushes from the previous node (server-to-server chaining). */
  sessionId?: string;
  /**
   * Split inference: the client keeps the embedding, final norm and head, so this session takes
   * hidden states at block 0 and returns hidden states at block L; the node sees no token id and
   * no logit.
   */
  split?: boolean;
}

export interface StepRequest {
  stepId: number;
  /** Position of the first new token; less than the session's length rolls its cache back. */
  startFromPosition: number;
  allLogits: boolean;
  /** Push the output to the session's next hop (and so on down the route). */
  push: boolean;
  /** Answer with a Commit (the receipt only) and hold the output until a Reveal; nodes refuse it with `push`. */
  commit: boolean;
  tokens?: Int32Array;
  hidden?: DecodedTensor;
}

/** What a node answers a step with, besides its output: its receipt (src/swarm/receipt.ts). */
export interface StepReceipt {
  stepId: number;
  /** sha256 of the input the node ran on. */
  inputHash: Uint8Array;
  /** The node's signature over its receipt chain's head, or 64 zero bytes on the steps it does not sign. */
  signature: Uint8Array;
  /** sha256 of the output tensor frame: as received in a Result, as the node states it in a Commit. */
  outputHash: Uint8Array;
}

export interface StepResult extends StepReceipt {
  tensor: DecodedTensor;
}

/** What a node announces about itself (signed, in the DHT). */
export interface NodeInfo {
  peerId: string;
  /** "offline" withdraws the node's span (sent on clean shutdown). */
  state: "online" | "offline";
  modelId: string;
  /** SHA-256 of the checkpoint files the node loaded. */
  checkpointHash: string;
  numBlocks: number;
  start: number;
  end: number;
  /** Measured decode (1-token) and prefill tokens/s per block. */
  inferenceRps: number;
  forwardRps: number;
  cacheTokensLeft: number;
  /** RTTs in seconds to the peers that serve block `end`. */
  nextPings: Record<string, number>;
  /** Measured link speed to those peers, Mbit/s (0: not measured). */
  linkMbps: number;
  version: string;
  /** Id of the model manifest (src/verify/manifest.ts) the node checked its span against at load; absent if none. */
  manifestId?: string;
}

export interface ErrorMessage {
  code: string;
  message: string;
}

// ------------------------------------------------------------------ encoding

export function encodeControl(kind: Kind.Open | Kind.Opened | Kind.Error | Kind.Link, body: object): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(body));
  const out = new Uint8Array(1 + json.byteLength);
  out[0] = kind;
  out.set(json, 1);
  return out;
}

/** A step message; hidden states as values to encode, or as an already encoded tensor frame. */
export function encodeStep(step: {
  stepId: number;
  startFromPosition: number;
  allLogits: boolean;
  push?: boolean;
  commit?: boolean;
  tokens?: ArrayLike<number>;
  hidden?: { data: Float32Array; shape: number[]; codec: Codec };
  frame?: Uint8Array;
}): Uint8Array {
  const payload = step.tokens
    ? new Uint8Array(Int32Array.from(step.tokens).buffer)
    : (step.frame ?? encodeTensor(step.hidden!.data, step.hidden!.shape, step.hidden!.codec));
  const out = new Uint8Array(10 + payload.byteLength);
  const view = new DataView(out.buffer);
  out[0] = Kind.Step;
  view.setUint32(1, step.stepId, true);
  view.setUint32(5, step.startFromPosition, true);
  out[9] = (step.allLogits ? FLAG_ALL_LOGITS : 0) | (step.tokens ? FLAG_TOKENS : 0) | (step.push ? FLAG_PUSH : 0) | (step.commit ? FLAG_COMMIT : 0);
  out.set(payload, 10);
  return out;
}

/** A step for the receiver's session, sent node to node: kind, 16-byte session id, step message. */
export function encodePush(sessionId: string, step: Uint8Array): Uint8Array {
  const out = new Uint8Array(17 + step.byteLength);
  out[0] = Kind.Push;
  out.set(Buffer.from(sessionId, "hex"), 1);
  out.set(step, 17);
  return out;
}

/** A result message: kind, u32 step id, the receipt (32-byte input hash, 64-byte signature), then the encoded tensor frame. */
export function encodeResult(stepId: number, receipt: { inputHash: Uint8Array; signature: Uint8Array }, frame: Uint8Array): Uint8Array {
  checkReceipt(receipt);
  const out = new Uint8Array(5 + RECEIPT_BYTES + frame.byteLength);
  out[0] = Kind.Result;
  new DataView(out.buffer).setUint32(1, stepId, true);
  out.set(receipt.inputHash, 5);
  out.set(receipt.signature, 37);
  out.set(frame, 5 + RECEIPT_BYTES);
  return out;
}

/** A commit message: kind, u32 step id, the receipt (32-byte input hash, 64-byte signature), the 32-byte sha256 of the held output frame. */
export function encodeCommit(receipt: StepReceipt): Uint8Array {
  checkReceipt(receipt);
  if (receipt.outputHash.byteLength !== 32) throw new RangeError("an output hash is 32 bytes");
  const out = new Uint8Array(COMMIT_BYTES);
  out[0] = Kind.Commit;
  new DataView(out.buffer).setUint32(1, receipt.stepId, true);
  out.set(receipt.inputHash, 5);
  out.set(receipt.signature, 37);
  out.set(receipt.outputHash, 5 + RECEIPT_BYTES);
  return out;
}

/** A reveal message: kind, u32 id of the committed step whose output the client asks for. */
export function encodeReveal(stepId: number): Uint8Array {
  const out = new Uint8Array(REVEAL_BYTES);
  out[0] = Kind.Reveal;
  new DataView(out.buffer).setUint32(1, stepId, true);
  return out;
}

const COMMIT_BYTES = 5 + RECEIPT_BYTES + 32;
const REVEAL_BYTES = 5;

function checkReceipt(receipt: { inputHash: Uint8Array; signature: Uint8Array }): void {
  if (receipt.inputHash.byteLength !== 32 || receipt.signature.byteLength !== 64) throw new RangeError("a receipt is a 32-byte hash and a 64-byte signature");
}

/**
 * A span or push stream read and written as length-prefixed messages of up to MAX_MESSAGE_BYTES,
 * with the bounds of src/swarm/framing.ts (the node-wide budget and deadlines unless `opts` says).
 */
export function framedStream(stream: Stream, opts?: Omit<FramingOptions, "maxBytes">): Framed {
  return framed(stream, { ...opts, maxBytes: MAX_MESSAGE_BYTES });
}

// ------------------------------------------------------------------ decoding

export type Message =
  | { kind: Kind.Open; open: OpenRequest }
  | { kind: Kind.Opened; opened: { start: number; end: number } }
  | { kind: Kind.Step; step: StepRequest }
  | { kind: Kind.Result; result: StepResult }
  | { kind: Kind.Error; error: ErrorMessage }
  | { kind: Kind.Link; link: LinkRequest }
  | { kind: Kind.Push; sessionId: string; step: StepRequest }
  | { kind: Kind.Commit; commit: StepReceipt }
  | { kind: Kind.Reveal; stepId: number };

export function decodeMessage(bytes: Uint8Array, maxElements?: number): Message {
  if (bytes.byteLength === 0) throw new ProtocolError("BAD_LENGTH", "empty message");
  const kind = bytes[0]!;
  const body = bytes.subarray(1);
  switch (kind) {
    case Kind.Open: {
      const j = control(body);
      const open: OpenRequest = {
        start: nonNegativeInt(j.start, "start"),
        end: nonNegativeInt(j.end, "end"),
        maxLength: nonNegativeInt(j.maxLength, "maxLength"),
        codec: j.codec as Codec,
      };
      if (!CODECS.includes(open.codec)) throw new ProtocolError("BAD_CODEC", `codec ${String(j.codec)}`);
      if (!(open.start < open.end)) throw new ProtocolError("BAD_SHAPE", `empty span [${open.start}, ${open.end})`);
      if (j.sessionId !== undefined) open.sessionId = sessionId(j.sessionId);
      if (j.split !== undefined) {
        if (typeof j.split !== "boolean") throw new ProtocolError("BAD_SHAPE", `split must be true or false, got ${JSON.stringify(j.split)}`);
        if (j.split) open.split = true;
      }
      return { kind, open };
    }
    case Kind.Link: {
      const j = control(body);
      const link: LinkRequest = {};
      if (j.prev !== undefined) link.prev = peerIdText(j.prev, "prev");
      if (j.next !== undefined) {
        const n = (j.next ?? {}) as Record<string, unknown>;
        const addrs = n.addrs;
        if (!Array.isArray(addrs) || addrs.length > 16 || !addrs.every((a) => typeof a === "string" && a.length < 256)) {
          throw new ProtocolError("BAD_SHAPE", "next.addrs must be up to 16 multiaddr strings");
        }
        link.next = { peerId: peerIdText(n.peerId, "next.peerId"), sessionId: sessionId(n.sessionId), addrs };
      }
      return { kind, link };
    }
    case Kind.Push: {
      if (body.byteLength < 17) throw new ProtocolError("BAD_LENGTH", "push shorter than its header");
      const inner = decodeMessage(body.subarray(16), maxElements);
      if (inner.kind !== Kind.Step) throw new ProtocolError("BAD_CODEC", `a push carries a step, not kind ${inner.kind}`);
      return { kind, sessionId: Buffer.from(body.subarray(0, 16)).toString("hex"), step: inner.step };
    }
    case Kind.Opened: {
      const j = control(body);
      return { kind, opened: { start: nonNegativeInt(j.start, "start"), end: nonNegativeInt(j.end, "end") } };
    }
    case Kind.Error: {
      const j = control(body);
      return { kind, error: { code: String(j.code ?? "UNKNOWN"), message: String(j.message ?? "") } };
    }
    case Kind.Step: {
      if (body.byteLength < 9) throw new ProtocolError("BAD_LENGTH", "step message shorter than its header");
      const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
      const flags = body[8]!;
      if (flags & ~FLAGS) throw new ProtocolError("BAD_CODEC", `unknown step flags 0x${flags.toString(16)}`);
      const payload = body.subarray(9);
      const step: StepRequest = {
        stepId: view.getUint32(0, true),
        startFromPosition: view.getUint32(4, true),
        allLogits: (flags & FLAG_ALL_LOGITS) !== 0,
        push: (flags & FLAG_PUSH) !== 0,
        commit: (flags & FLAG_COMMIT) !== 0,
      };
      if (flags & FLAG_TOKENS) {
        if (payload.byteLength === 0 || payload.byteLength % 4 !== 0) throw new ProtocolError("BAD_LENGTH", `token payload of ${payload.byteLength} bytes`);
        step.tokens = new Int32Array(new Uint8Array(payload).buffer);
      } else {
        step.hidden = decodeTensor(payload, { maxElements });
      }
      return { kind, step };
    }
    case Kind.Result: {
      if (body.byteLength < 4 + RECEIPT_BYTES) throw new ProtocolError("BAD_LENGTH", "result shorter than its header and receipt");
      const stepId = new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true);
      const frame = body.subarray(4 + RECEIPT_BYTES);
      const tensor = decodeTensor(frame, { maxElements });
      return {
        kind,
        result: { stepId, tensor, inputHash: body.slice(4, 36), signature: body.slice(36, 4 + RECEIPT_BYTES), outputHash: sha256(frame) },
      };
    }
    case Kind.Commit: {
      if (bytes.byteLength !== COMMIT_BYTES) throw new ProtocolError("BAD_LENGTH", `commit of ${bytes.byteLength} bytes, not ${COMMIT_BYTES}`);
      const stepId = new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true);
      return {
        kind,
        commit: { stepId, inputHash: body.slice(4, 36), signature: body.slice(36, 4 + RECEIPT_BYTES), outputHash: body.slice(4 + RECEIPT_BYTES) },
      };
    }
    case Kind.Reveal: {
      if (bytes.byteLength !== REVEAL_BYTES) throw new ProtocolError("BAD_LENGTH", `reveal of ${bytes.byteLength} bytes, not ${REVEAL_BYTES}`);
      return { kind, stepId: new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true) };
    }
    default:
      throw new ProtocolError("BAD_CODEC", `unknown message kind ${kind}`);
  }
}

function control(body: Uint8Array): Record<string, unknown> {
  if (body.byteLength > MAX_CONTROL_BYTES) throw new ProtocolError("TOO_LARGE", `control message of ${body.byteLength} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch (e) {
    throw new ProtocolError("BAD_LENGTH", `control message is not JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ProtocolError("BAD_LENGTH", "control message is not an object");
  return value as Record<string, unknown>;
}

function sessionId(v: unknown): string {
  if (typeof v !== "string" || !SESSION_ID.test(v)) throw new ProtocolError("BAD_SHAPE", "sessionId must be 32 lowercase hex digits");
  return v;
}

function peerIdText(v: unknown, name: string): string {
  if (typeof v !== "string" || !/^[1-9A-HJ-NP-Za-km-z]{40,80}$/.test(v)) throw new ProtocolError("BAD_SHAPE", `${name} is not a peer id`);
  return v;
}

function nonNegativeInt(v: unknown, name: string): number {
  if (!(typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 31))
    throw new ProtocolError("BAD_SHAPE", `${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}
