// The cos/sin caches GroupQueryAttention reads, [positions, rotaryDim / 2], from the model's
// rotary frequencies.
import { inverseFrequencies } from "../model/rope.js";
import type { ModelConfig } from "../model/types.js";

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
