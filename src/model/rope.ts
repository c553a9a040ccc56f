// Rotary position frequencies of a model: base inverse frequencies with Llama-3 scaling or GGUF
// frequency factors applied. Part of what a checkpoint means, so the engine and the GGUF writer
// both read them from here.
import type { ModelConfig } from "./types.js";

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
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
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
