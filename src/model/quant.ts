// Numeric codecs: half/bfloat16 conversions and ggml Q8_0/Q4_0 (de)quantization, exactly as ggml
// does them. Assumes a little-endian host.
//
// ggml blocks hold 32 consecutive elements of a row:
//   Q8_0 (34 bytes): f16 scale d, then 32 int8 q;               value = d * q
//   Q4_0 (18 bytes): f16 scale d, then 16 bytes of nibbles;      value = d * (q - 8)
//                    element j < 16 is the low nibble of byte j, element j + 16 its high nibble.

import type { DType } from "./types.js";

export const QK = 32;
export const Q8_0_BLOCK_BYTES = 34;
export const Q4_0_BLOCK_BYTES = 18;

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

const F16_TO_F32 = buildF16Table();

function buildF16Table(): Float32Array {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0) table[h] = sign * mantissa * 2 ** -24;
    else if (exponent === 31) table[h] = mantissa ? NaN : sign * Infinity;
    else table[h] = sign * (1024 + mantissa) * 2 ** (exponent - 25);
  }
  return table;
}

/** IEEE half (as its 16 bits) to float. */
export function f16ToF32(half: number): number {
  return F16_TO_F32[half & 0xffff]!;
}

/** Float to IEEE half bits: round to nearest even, subnormals kept, overflow to inf, NaN to quiet NaN (as ggml). */
export function f32ToF16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToF16(scratchU32[0]!);
}

function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const magnitude = bits & 0x7fffffff;
  if (magnitude >= 0x47800000) {
    // |x| >= 65536, inf or NaN
    return sign | (magnitude > 0x7f800000 ? 0x7e00 : 0x7c00);
  }
  if (magnitude >= 0x38800000) {
    // Normal half: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
    // A carry out of the mantissa correctly bumps the exponent (up to inf for [65520, 65536)).
    return sign | ((magnitude - 0x38000000 + 0xfff + ((magnitude >>> 13) & 1)) >>> 13);
  }
  // Subnormal half (|x| < 2^-14): result = round_even(|x| * 2^24).
  const exponent = magnitude >>> 23;
  const shift = 126 - exponent;
  if (shift > 24) return sign; // below 2^-25 (or an f32 subnormal): rounds to zero
  const mantissa = (magnitude & 0x7fffff) | 0x800000;
  let q = mantissa >>> shift;
  const remainder = mantissa & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (remainder > half || (remainder === half && q & 1)) q++;
  return sign | q;
}

/** bfloat16 (as its 16 bits) to float. */
export function bf16ToF32(bf16: number): number {
  scratchU32[0] = (bf16 & 0xffff) << 16;
  return scratchF32[0]!;
}

/** Float to bfloat16 bits, round to nearest even, NaN kept quiet. */
export function f32ToBf16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToBf16(scratchU32[0]!);
}

function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** Halves (as 16-bit words) to floats. */
export function f16ArrayToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) out[i] = F16_TO_F32[src[i]!]!;
  return out;
}

/** Floats to halves (16-bit words), rounding as f32ToF16. */
export function f32ArrayToF16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]!);
  return out;
}

/** bfloat16 words to floats. */
export function bf16ArrayToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const outBits = new Uint32Array(out.buffer, out.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) outBits[i] = src[i]! << 16;
  return out;
}

/** Floats to bfloat16 words, rounding as f32ToBf16. */
export function f32ArrayToBf16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToBf16(bits[i]!);
  return out;
}

/**
 * Decodes `count` elements stored as `dtype` (F32, F16, BF16, Q8_0, Q4_0) into floats.
 * `bytes` may start at any address. Pass `out` to reuse a buffer.
 */
/** The bytes `values` take when stored as `dtype` (the inverse of dequantize). */
export function quantize(values: Float32Array, dtype: DType): Uint8Array {
  const bytes = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  switch (dtype) {
    case "F32":
      return bytes(values);
    case "F16":
      return bytes(f32ArrayToF16(values));
    case "BF16":
      return bytes(f32ArrayToBf16(values));
    case "Q8_0":
      return quantizeQ8_0(values);
    case "Q4_0":
      return quantizeQ4_0(values);
    default:
      throw new RangeError(`cannot store floats as ${dtype}`);
  }
}

export function dequantize(dtype: DType, bytes: Uint8Array, count: number, out = new Float32Array(count)): Float32Array {
  if (out.length < count) throw new RangeError(`output holds ${out.length} elements, need ${count}`);
  switch (dtype) {
    case "F32":
      requireBytes(dtype, bytes, count * 4, count);
      // A byte copy into the output's own buffer works whatever the source alignment.
      new Uint8Array(out.buffer, out.byteOffset, count * 4).set(bytes.subarray(0, count * 4));
      return out;
    case "F16":
      requireBytes(dtype, bytes, count * 2, count);
      return f16ArrayToF32(asUint16(bytes, count), out);
    case "BF16":
      requireBytes(dtype, bytes, count * 2, count);
      return bf16ArrayToF32(asUint16(bytes, count), out);
    case "Q8_0":
      requireBlocks(dtype, bytes, count, Q8_0_BLOCK_BYTES);
      dequantizeQ8_0(bytes, count / QK, out);
      return out;
    case "Q4_0":
      requireBlocks(dtype, bytes, count, Q4_0_BLOCK_BYTES);
      dequantizeQ4_0(bytes, count / QK, out);
      return out;
    default:
      throw new RangeError(`cannot dequantize ${dtype}: not a floating-point type`);
  }
}

export function requireBytes(dtype: DType, bytes: Uint8Array, needed: number, count: number): void {
  if (bytes.length < needed) throw new RangeError(`${count} ${dtype} elements need ${needed} bytes, got ${bytes.length}`);
}

function requireBlocks(dtype: DType, bytes: Uint8Array, count: number, blockBytes: number): void {
  if (count % QK !== 0) throw new RangeError(`${dtype} element count ${count} is not a multiple of ${QK}`);
  requireBytes(dtype, bytes, (count / QK) * blockBytes, count);
}

/** The bytes as 16-bit words: a view when aligned, else a copy. */
function asUint16(bytes: Uint8Array, count: number): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  return new Uint16Array(bytes.slice(0, count * 2).buffer);
}

export function blockScale(bytes: Uint8Array, at: number): number {
  return F16_TO_F32[bytes[at]! | (bytes[at + 1]! << 8)]!;
}

function dequantizeQ8_0(bytes: Uint8Array, blocks: number, out: Float32Array): void {
  const signed = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0, at = 0, o = 0; b < blocks; b++, at += Q8_0_BLOCK_BYTES, o += QK) {
    const d = blockScale(bytes, at);
    for (let j = 0; j < QK; j++) out[o + j] = d * signed[at + 2 + j]!;
  }
}

function dequantizeQ4_0(bytes: Uint8Array, blocks: number, out: Float32Array): void {
  for (let b = 0, at = 0, o = 0; b < blocks; b++, at += Q4_0_BLOCK_BYTES, o += QK) {
    const d = blockScale(bytes, at);
    for (let j = 0; j < QK / 2; j++) {
      const packed = bytes[at + 2 + j]!;
      out[o + j] = d * ((packed & 0x0f) - 8);
      out[o + j + QK / 2] = d * ((packed >> 4) - 8);
    }
  }
}

const fround = Math.fround;

/** C's roundf: halves away from zero. */
function roundHalfAway(v: number): number {
  return v >= 0 ? Math.floor(v + 0.5) : -Math.floor(0.5 - v);
}

function requireWholeBlocks(x: Float32Array): number {
  if (x.length % QK !== 0) throw new RangeError(`length ${x.length} is not a multiple of ${QK}`);
  return x.length / QK;
}

function writeScale(out: Uint8Array, at: number, d: number): void {
  const half = f32ToF16(d);
  out[at] = half & 0xff;
  out[at + 1] = half >> 8;
}

/**
 * ggml's quantize_row_q8_0_ref, bit for bit: d = amax / 127, q = roundf(x * (1/d)), in float32
 * arithmetic; the block stores d rounded to f16.
 */
export function quantizeQ8_0(x: Float32Array, out = new Uint8Array(requireWholeBlocks(x) * Q8_0_BLOCK_BYTES)): Uint8Array {
  const blocks = requireWholeBlocks(x);
  for (let b = 0, at = 0, i = 0; b < blocks; b++, at += Q8_0_BLOCK_BYTES, i += QK) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[i + j]!));
    const d = fround(amax / 127);
    const id = d ? fround(1 / d) : 0;
    writeScale(out, at, d);
    for (let j = 0; j < QK; j++) out[at + 2 + j] = roundHalfAway(fround(x[i + j]! * id)) & 0xff;
  }
  return out;
}

/**
 * ggml's quantize_row_q4_0_ref, bit for bit: `max` is the first element of largest magnitude
 * (sign kept), d = max / -8, q = min(15, (int8)(x * (1/d) + 8.5)) in float32 arithmetic.
 */
export function quantizeQ4_0(x: Float32Array, out = new Uint8Array(requireWholeBlocks(x) * Q4_0_BLOCK_BYTES)): Uint8Array {
  const blocks = requireWholeBlocks(x);
  const nibble = (v: number, id: number) => Math.min(15, Math.trunc(fround(fround(v * id) + 8.5)));
  for (let b = 0, at = 0, i = 0; b < blocks; b++, at += Q4_0_BLOCK_BYTES, i += QK) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QK; j++) {
      const v = x[i + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fround(max / -8);
    const id = d ? fround(1 / d) : 0;
    writeScale(out, at, d);
    for (let j = 0; j < QK / 2; j++) {
      out[at + 2 + j] = nibble(x[i + j]!, id) | (nibble(x[i + j + QK / 2]!, id) << 4);
    }
  }
  return out;
}
