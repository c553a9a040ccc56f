// Tensors on the wire: a small little-endian header (dtype, codec, shape) and a binary body.
//
//   u8 magic 'T' | u8 version 1 | u8 origDtype (0 f32, 1 f16, 2 bf16) | u8 compression (0 none,
//   1 blockwise8) | u8 ndim | u8 codebookMode (0 standard, 1 explicit) | u16 reserved 0 |
//   u32 shape[ndim] | body
//   body, none:       elements in origDtype
//   body, blockwise8: i64 n_absmax | i64 n_code (256, or 0 for the standard code) |
//                     f32 absmax[n_absmax] | f32 code[n_code] | u8 idx[n]   (hivemind's layout)
//
// Decoding validates every field and length against the header, so garbage, truncated or
// oversized frames fail with a ProtocolError and never with an out-of-bounds read.
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16 } from "../model/quant.js";
import { BLOCK_SIZE, DYNAMIC_CODE, dequantizeBlockwise8, quantizeBlockwise8 } from "./blockwise8.js";
import { ProtocolError } from "./errors.js";

/** none: f32 as is; f16/bf16: 16-bit floats; blockwise8: dynamic blockwise 8-bit. */
export type Codec = "none" | "f16" | "bf16" | "blockwise8";
export const CODECS: readonly Codec[] = ["none", "f16", "bf16", "blockwise8"];

const MAGIC = 0x54;
const VERSION = 1;
const MAX_DIMS = 8;
/** Default limit on elements per frame (1 GiB of f32). */
export const DEFAULT_MAX_ELEMENTS = 2 ** 28;

const enum Dtype {
  F32 = 0,
  F16 = 1,
  BF16 = 2,
}
const enum Compression {
  None = 0,
  Blockwise8 = 1,
}

export interface DecodedTensor {
  data: Float32Array;
  shape: number[];
  codec: Codec;
}

export function encodeTensor(data: Float32Array, shape: readonly number[], codec: Codec, opts: { explicitCodebook?: boolean } = {}): Uint8Array {
  const n = elementCount(shape);
  if (n !== data.length) throw new RangeError(`shape [${shape}] holds ${n} elements, data has ${data.length}`);
  if (shape.length > MAX_DIMS) throw new RangeError(`at most ${MAX_DIMS} dimensions`);
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) throw new ProtocolError("NON_FINITE_TENSOR", `element ${i} is ${data[i]}`);
  }
  const headerBytes = 8 + 4 * shape.length;
  const explicit = codec === "blockwise8" && Boolean(opts.explicitCodebook);
  let body: Uint8Array[];
  if (codec === "blockwise8") {
    const { absmax, indices } = quantizeBlockwise8(data);
    const counts = new DataView(new ArrayBuffer(16));
    counts.setBigInt64(0, BigInt(absmax.length), true);
    counts.setBigInt64(8, BigInt(explicit ? DYNAMIC_CODE.length : 0), true);
    body = [new Uint8Array(counts.buffer), le(absmax), ...(explicit ? [le(DYNAMIC_CODE)] : []), indices];
  } else {
    body = [codec === "f16" ? le(f32ArrayToF16(data)) : codec === "bf16" ? le(f32ArrayToBf16(data)) : le(data)];
  }
  const out = new Uint8Array(headerBytes + body.reduce((s, b) => s + b.byteLength, 0));
  const view = new DataView(out.buffer);
  out[0] = MAGIC;
  out[1] = VERSION;
  out[2] = codec === "f16" ? Dtype.F16 : codec === "bf16" ? Dtype.BF16 : Dtype.F32;
  out[3] = codec === "blockwise8" ? Compression.Blockwise8 : Compression.None;
  out[4] = shape.length;
  out[5] = explicit ? 1 : 0;
  shape.forEach((d, i) => view.setUint32(8 + 4 * i, d, true));
  let at = headerBytes;
  for (const part of body) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

export function decodeTensor(frame: Uint8Array, opts: { maxElements?: number } = {}): DecodedTensor {
  if (frame.byteLength < 8) throw new ProtocolError("BAD_LENGTH", `frame of ${frame.byteLength} bytes is shorter than a header`);
  if (frame[0] !== MAGIC) throw new ProtocolError("BAD_MAGIC", `first byte 0x${frame[0]!.toString(16)}, expected 0x54`);
  if (frame[1] !== VERSION) throw new ProtocolError("BAD_VERSION", `version ${frame[1]}, expected ${VERSION}`);
  const dtype = frame[2]!;
  const compression = frame[3]!;
  const ndim = frame[4]!;
  const codebookMode = frame[5]!;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (dtype > Dtype.BF16) throw new ProtocolError("BAD_DTYPE", `dtype ${dtype}`);
  if (compression > Compression.Blockwise8) throw new ProtocolError("BAD_CODEC", `compression ${compression}`);
  if (view.getUint16(6, true) !== 0) throw new ProtocolError("BAD_LENGTH", "reserved header bytes are not zero");
  if (ndim > MAX_DIMS) throw new ProtocolError("BAD_SHAPE", `${ndim} dimensions, at most ${MAX_DIMS}`);
  const headerBytes = 8 + 4 * ndim;
  if (frame.byteLength < headerBytes) throw new ProtocolError("BAD_LENGTH", "frame ends inside its shape");
  const shape = Array.from({ length: ndim }, (_, i) => view.getUint32(8 + 4 * i, true));
  const n = elementCount(shape);
  const maxElements = opts.maxElements ?? DEFAULT_MAX_ELEMENTS;
  if (n > maxElements) throw new ProtocolError("TOO_LARGE", `shape [${shape}] has ${n} elements, limit ${maxElements}`);
  const body = frame.subarray(headerBytes);

  if (compression === Compression.None) {
    if (codebookMode !== 0) throw new ProtocolError("BAD_CODEBOOK", "an uncompressed frame carries no codebook");
    const size = dtype === Dtype.F32 ? 4 : 2;
    expectLength(body.byteLength, n * size);
    const data =
      dtype === Dtype.F32 ? new Float32Array(copy(body).buffer) : (dtype === Dtype.F16 ? f16ArrayToF32 : bf16ArrayToF32)(new Uint16Array(copy(body).buffer));
    return { data: checkFinite(data), shape, codec: (["none", "f16", "bf16"] as const)[dtype]! };
  }

  if (codebookMode > 1) throw new ProtocolError("BAD_CODEBOOK", `codebook mode ${codebookMode}`);
  if (body.byteLength < 16) throw new ProtocolError("BAD_LENGTH", "blockwise8 body shorter than its counts");
  const blocks = Math.ceil(n / BLOCK_SIZE);
  const nAbsmax = view.getBigInt64(headerBytes, true);
  const nCode = view.getBigInt64(headerBytes + 8, true);
  if (nAbsmax !== BigInt(blocks)) throw new ProtocolError("BAD_LENGTH", `n_absmax ${nAbsmax}, expected ${blocks} for ${n} elements`);
  const expectedCode = codebookMode === 1 ? 256n : 0n;
  if (nCode !== expectedCode) throw new ProtocolError("BAD_CODEBOOK", `n_code ${nCode}, expected ${expectedCode}`);
  const codeLength = Number(nCode);
  expectLength(body.byteLength, 16 + 4 * blocks + 4 * codeLength + n);
  const absmax = new Float32Array(copy(body.subarray(16, 16 + 4 * blocks)).buffer);
  for (const a of absmax) {
    if (!(Number.isFinite(a) && a >= 0)) throw new ProtocolError("NON_FINITE_TENSOR", `block absmax ${a}`);
  }
  let code = DYNAMIC_CODE;
  if (codeLength) {
    code = new Float32Array(copy(body.subarray(16 + 4 * blocks, 16 + 4 * blocks + 4 * codeLength)).buffer);
    for (const c of code) if (!(Number.isFinite(c) && Math.abs(c) <= 1)) throw new ProtocolError("BAD_CODEBOOK", `code value ${c}`);
  }
  const indices = body.subarray(16 + 4 * blocks + 4 * codeLength);
  const data = dequantizeBlockwise8({ absmax, indices }, code);
  return { data, shape, codec: "blockwise8" };
}

/** Bytes a frame of `n` elements with `ndim` dimensions takes under a codec. */
export function frameBytes(n: number, ndim: number, codec: Codec, explicitCodebook = false): number {
  const header = 8 + 4 * ndim;
  if (codec === "none") return header + 4 * n;
  if (codec === "f16" || codec === "bf16") return header + 2 * n;
  return header + 16 + 4 * Math.ceil(n / BLOCK_SIZE) + (explicitCodebook ? 1024 : 0) + n;
}

function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!(Number.isInteger(d) && d >= 0)) throw new ProtocolError("BAD_SHAPE", `dimension ${d} in [${shape}]`);
    n *= d;
  }
  return n;
}

function expectLength(found: number, expected: number): void {
  if (found !== expected) throw new ProtocolError("BAD_LENGTH", `body of ${found} bytes, expected ${expected}`);
}

function checkFinite(data: Float32Array): Float32Array {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) throw new ProtocolError("NON_FINITE_TENSOR", `element ${i} is ${data[i]}`);
  }
  return data;
}

/** A copy with its own, aligned buffer (frames arrive at arbitrary offsets). */
function copy(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

function le(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}
