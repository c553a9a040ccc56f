// Repacking of ggml Q8_0/Q4_0 blocks into the inputs of ONNX Runtime's com.microsoft.MatMulNBits
// (block_size 32, no zero_points input). An engine concern: model/ only knows the GGUF layout.
import { blockScale, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK, quantizeQ4_0, quantizeQ8_0, requireBytes } from "../model/quant.js";

/** Inputs B and scales of com.microsoft.MatMulNBits (block_size 32, no zero_points input). */
export interface MatMulNBitsWeight {
  /** uint8 [N, K/32, blob], blob = 16 bytes (4 bits) or 32 bytes (8 bits). */
  weight: Uint8Array;
  /** float [N * K/32]: the f16 block scales, widened. */
  scales: Float32Array;
}

/**
 * Repacks a GGUF Q8_0/Q4_0 matrix with `rows` = N output features, each `cols` = K input features
 * long, into MatMulNBits layout. Without a zero_points input ORT uses 2^(bits-1):
 *   bits=4: element 2i is the low nibble, 2i+1 the high nibble of byte i; value = (q - 8) * scale;
 *   bits=8: one byte per element u = q + 128;                            value = (u - 128) * scale.
 * Both reproduce the GGUF values exactly.
 */
export function toMatMulNBits(dtype: "Q8_0" | "Q4_0", bytes: Uint8Array, rows: number, cols: number): MatMulNBitsWeight {
  if (cols % QK !== 0) throw new RangeError(`K = ${cols} is not a multiple of ${QK}`);
  const blocks = (rows * cols) / QK;
  const blockBytes = dtype === "Q8_0" ? Q8_0_BLOCK_BYTES : Q4_0_BLOCK_BYTES;
  requireBytes(dtype, bytes, blocks * blockBytes, rows * cols);
  const blob = dtype === "Q8_0" ? QK : QK / 2;
  // GGUF rows are contiguous along K, so block b of the tensor is block (b mod K/32) of row floor(b / (K/32)),
  // exactly the [N, K/32] order MatMulNBits wants.
  const weight = new Uint8Array(blocks * blob);
  const scales = new Float32Array(blocks);
  for (let b = 0, at = 0, w = 0; b < blocks; b++, at += blockBytes, w += blob) {
    scales[b] = blockScale(bytes, at);
    const qs = at + 2;
    if (dtype === "Q8_0") {
      for (let j = 0; j < QK; j++) weight[w + j] = bytes[qs + j]! ^ 0x80;
    } else {
      // Elements 0..15 are the low nibbles of qs[0..15], elements 16..31 the high nibbles.
      for (let i = 0; i < 8; i++) {
        weight[w + i] = (bytes[qs + 2 * i]! & 0x0f) | ((bytes[qs + 2 * i + 1]! & 0x0f) << 4);
        weight[w + 8 + i] = (bytes[qs + 2 * i]! >> 4) | (bytes[qs + 2 * i + 1]! & 0xf0);
      }
    }
  }
  return { weight, scales };
}

/**
 * Quantizes a float [N, K] row-major matrix with ggml's Q4_0 (bits 4) or Q8_0 (bits 8) reference
 * quantizer and repacks it for MatMulNBits: the same numbers a GGUF file quantized by llama.cpp holds.
 */
export function quantizeToMatMulNBits(x: Float32Array, rows: number, cols: number, bits: 4 | 8): MatMulNBitsWeight {
  if (x.length !== rows * cols) throw new RangeError(`expected ${rows}x${cols} = ${rows * cols} floats, got ${x.length}`);
  if (cols % QK !== 0) throw new RangeError(`K = ${cols} is not a multiple of ${QK}`);
  return bits === 4 ? toMatMulNBits("Q4_0", quantizeQ4_0(x), rows, cols) : toMatMulNBits("Q8_0", quantizeQ8_0(x), rows, cols);
}
