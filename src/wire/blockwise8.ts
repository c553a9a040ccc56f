// Dynamic blockwise 8-bit quantization of activations (bitsandbytes' quantize_blockwise with the
// "dynamic" codebook, as hivemind's BLOCKWISE_8BIT uses it): per 4096-element block, the
// absolute maximum, and for each element the index of the nearest codebook value of x / absmax.

export const BLOCK_SIZE = 4096;

/** The 256 sorted codebook values: ±midpoints of 2^i+1 points on [0.1, 1] scaled by 10^(i−6), 0 and 1. */
export const DYNAMIC_CODE: Float32Array = (() => {
  const values: number[] = [0, 1];
  for (let i = 0; i <= 6; i++) {
    const count = 2 ** i + 1;
    const points = Float32Array.from({ length: count }, (_, k) => 0.1 + (0.9 * k) / (count - 1));
    const scale = Math.fround(10 ** (i - 6));
    for (let k = 0; k + 1 < count; k++) {
      const mid = Math.fround(Math.fround((points[k]! + points[k + 1]!) / 2) * scale);
      values.push(mid, -mid);
    }
  }
  return Float32Array.from(values).sort();
})();

/** Index of the codebook value nearest to v (ties to the lower index). */
function nearest(code: Float32Array, v: number): number {
  let lo = 0;
  let hi = code.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (code[mid]! <= v) lo = mid;
    else hi = mid;
  }
  return v - code[lo]! <= code[hi]! - v ? lo : hi;
}

export interface Blockwise8 {
  absmax: Float32Array;
  indices: Uint8Array;
}

/** Quantizes finite values; the caller checks finiteness. */
export function quantizeBlockwise8(x: Float32Array, code: Float32Array = DYNAMIC_CODE): Blockwise8 {
  const blocks = Math.ceil(x.length / BLOCK_SIZE);
  const absmax = new Float32Array(blocks);
  const indices = new Uint8Array(x.length);
  const zero = nearest(code, 0);
  for (let b = 0; b < blocks; b++) {
    const from = b * BLOCK_SIZE;
    const to = Math.min(x.length, from + BLOCK_SIZE);
    let m = 0;
    for (let i = from; i < to; i++) m = Math.max(m, Math.abs(x[i]!));
    absmax[b] = m;
    if (m === 0) {
      indices.fill(zero, from, to);
      continue;
    }
    const inv = 1 / m;
    for (let i = from; i < to; i++) indices[i] = nearest(code, x[i]! * inv);
  }
  return { absmax, indices };
}

export function dequantizeBlockwise8(q: Blockwise8, code: Float32Array = DYNAMIC_CODE): Float32Array {
  const out = new Float32Array(q.indices.length);
  for (let i = 0; i < out.length; i++) out[i] = code[q.indices[i]!]! * q.absmax[(i / BLOCK_SIZE) | 0]!;
  return out;
}
