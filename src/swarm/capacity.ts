// How many blocks a node can hold (hybrid sharding, arXiv 2407.19775): free memory minus a reserve, over the
// bytes one block takes in the served weight format plus its KV budget. Pure.
import type { WeightFormat } from "../engine/interface.js";
import type { ModelConfig } from "../model/types.js";

const BYTES_PER_WEIGHT: Record<WeightFormat, number> = { f32: 4, f16: 2, q8: 1 + 4 / 32, q4: 0.5 + 4 / 32 };

export function blockBytes(c: ModelConfig, format: WeightFormat): number {
  const attention = c.hiddenSize * (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * c.hiddenSize;
  const mlp = (c.architecture === "llama" ? 3 : 2) * c.hiddenSize * c.intermediateSize;
  return (attention + mlp) * BYTES_PER_WEIGHT[format] + 4 * 4 * c.hiddenSize;
}

export function kvBytesPerBlock(c: ModelConfig, cacheTokens: number): number {
  return cacheTokens * 2 * c.numKvHeads * c.headDim * 4;
}

/** Blocks that fit in `freeBytes`, at least 1 and at most the model's. */
export function blocksThatFit(c: ModelConfig, format: WeightFormat, freeBytes: number, cacheTokens: number, reserveBytes = 1 << 30): number {
  const perBlock = blockBytes(c, format) + kvBytesPerBlock(c, cacheTokens);
  return Math.max(1, Math.min(c.numLayers, Math.floor((freeBytes - reserveBytes) / perBlock)));
}
