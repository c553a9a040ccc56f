// The span protocol's messages. One libp2p stream carries one inference session; every message
// is length-prefixed and starts with its kind. Control messages are small JSON objects, tensors
// travel as binary tensor frames (src/wire). Everything a peer sends is validated here, so the
// node and the client only ever see well-formed values.
import { decodeTensor, encodeTensor, type Codec, CODECS, type DecodedTensor } from "../wire/tensor-frame.js";
import { ProtocolError } from "../wire/errors.js";

export const SPAN_PROTOCOL = "/tessera/span/1.0.0";
export const INFO_PROTOCOL = "/tessera/info/1.0.0";
/** Largest message either side accepts (a 2048-token f32 prefill of hidden size 8192 is 64 MiB). */
export const MAX_MESSAGE_BYTES = 128 << 20;
const MAX_CONTROL_BYTES = 64 << 10;

export const enum Kind {
  Open = 1,
  Opened = 2,
  Step = 3,
  Result = 4,
  Error = 5,
}

export interface OpenRequest {
  start: number;
  end: number;
  maxLength: number;
  /** Codec the node should use for the tensors it returns. */
  codec: Codec;
}

export interface StepRequest {
  stepId: number;
  /** Position of the first new token; less than the session's length rolls its cache back. */
  startFromPosition: number;
  allLogits: boolean;
  tokens?: Int32Array;
  hidden?: DecodedTensor;
}

export interface StepResult {
  stepId: number;
  tensor: DecodedTensor;
}

/** What a node says about itself on the info protocol. */
export interface NodeInfo {
  peerId: string;
  modelId: string;
  numBlocks: number;
  start: number;
  end: number;
  inferenceRps: number;
  forwardRps: number;
  cacheTokensLeft: number;
  version: string;
}

export interface ErrorMessage {
  code: string;
  message: string;
}

// ------------------------------------------------------------------ encoding

export function encodeControl(kind: Kind.Open | Kind.Opened | Kind.Error, body: object): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(body));
  const out = new Uint8Array(1 + json.byteLength);
  out[0] = kind;
  out.set(json, 1);
  return out;
}

export function encodeStep(step: { stepId: number; startFromPosition: number; allLogits: boolean; tokens?: ArrayLike<number>; hidden?: { data: Float32Array; shape: number[]; codec: Codec } }): Uint8Array {
  const payload = step.tokens
    ? new Uint8Array(Int32Array.from(step.tokens).buffer)
    : encodeTensor(step.hidden!.data, step.hidden!.shape, step.hidden!.codec);
  const out = new Uint8Array(10 + payload.byteLength);
  const view = new DataView(out.buffer);
  out[0] = Kind.Step;
  view.setUint32(1, step.stepId, true);
  view.setUint32(5, step.startFromPosition, true);
  out[9] = (step.allLogits ? 1 : 0) | (step.tokens ? 2 : 0);
  out.set(payload, 10);
  return out;
}

export function encodeResult(stepId: number, data: Float32Array, shape: number[], codec: Codec): Uint8Array {
  const frame = encodeTensor(data, shape, codec);
  const out = new Uint8Array(5 + frame.byteLength);
  out[0] = Kind.Result;
  new DataView(out.buffer).setUint32(1, stepId, true);
  out.set(frame, 5);
  return out;
}

// ------------------------------------------------------------------ decoding

export type Message =
  | { kind: Kind.Open; open: OpenRequest }
  | { kind: Kind.Opened; opened: { start: number; end: number } }
  | { kind: Kind.Step; step: StepRequest }
  | { kind: Kind.Result; result: StepResult }
  | { kind: Kind.Error; error: ErrorMessage };

export function decodeMessage(bytes: Uint8Array, maxElements?: number): Message {
  if (bytes.byteLength === 0) throw new ProtocolError("BAD_LENGTH", "empty message");
  const kind = bytes[0]!;
  const body = bytes.subarray(1);
  switch (kind) {
    case Kind.Open: {
      const j = control(body);
      const open = {
        start: nonNegativeInt(j.start, "start"),
        end: nonNegativeInt(j.end, "end"),
        maxLength: nonNegativeInt(j.maxLength, "maxLength"),
        codec: j.codec as Codec,
      };
      if (!CODECS.includes(open.codec)) throw new ProtocolError("BAD_CODEC", `codec ${String(j.codec)}`);
      if (!(open.start < open.end)) throw new ProtocolError("BAD_SHAPE", `empty span [${open.start}, ${open.end})`);
      return { kind, open };
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
      const payload = body.subarray(9);
      const step: StepRequest = {
        stepId: view.getUint32(0, true),
        startFromPosition: view.getUint32(4, true),
        allLogits: (flags & 1) !== 0,
      };
      if (flags & 2) {
        if (payload.byteLength === 0 || payload.byteLength % 4 !== 0) throw new ProtocolError("BAD_LENGTH", `token payload of ${payload.byteLength} bytes`);
        step.tokens = new Int32Array(new Uint8Array(payload).buffer);
      } else {
        step.hidden = decodeTensor(payload, { maxElements });
      }
      return { kind, step };
    }
    case Kind.Result: {
      if (body.byteLength < 4) throw new ProtocolError("BAD_LENGTH", "result shorter than its header");
      const stepId = new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true);
      return { kind, result: { stepId, tensor: decodeTensor(body.subarray(4), { maxElements }) } };
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

function nonNegativeInt(v: unknown, name: string): number {
  if (!(typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 31)) throw new ProtocolError("BAD_SHAPE", `${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}
