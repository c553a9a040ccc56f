// Rotary position tables: inverse frequencies (with Llama-3 scaling or GGUF frequency factors)
// and the cos/sin caches GroupQueryAttention reads, [positions, rotaryDim / 2].
import type { ModelConfig } from "../model/types.js";

export function inverseFrequencies(c: ModelConfig, rotaryDim = c.headDim): Float64Array {
  const half = rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / rotaryDim);

  const s = c.ropeScaling;
  if (s?.type === "llama3") {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const freq = inv[i]!;
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = freq / s.factor;
      } else {
        const smooth =
          (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (freq / s.factor) + smooth * freq;
      }
    }
  }
  if (c.ropeFreqFactors) {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / c.ropeFreqFactors[i]!;
  }
  return inv;
}

/** Llama-3 scaling expressed as GGUF's rope_freqs tensor (divisors of the base frequencies). */
export function llama3FreqFactors(c: ModelConfig): Float32Array {
  const base = inverseFrequencies({ ...c, ropeScaling: undefined, ropeFreqFactors: undefined });
  const scaled = inverseFrequencies({ ...c, ropeFreqFactors: undefined });
  return Float32Array.from(base, (f, i) => f / scaled[i]!);
}

export function rotaryCaches(c: ModelConfig, positions: number): { cos: Float32Array; sin: Float32Array } {
  const inv = inverseFrequencies(c);
  const half = inv.length;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * inv[i]!;
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
