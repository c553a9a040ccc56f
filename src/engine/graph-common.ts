// What every family's graph builder shares: the span graph's input and output names, the context
// a family's builder gets, and the ops all families use (GroupQueryAttention on the session's KV
// cache). Families import this; span-graph.ts imports the families: no cycle.
import type { ModelConfig } from "../model/types.js";
import type { SpanSpec } from "./interface.js";
import type { GraphBuilder } from "./onnx-builder.js";
import type { WeightLoader } from "./weights.js";

export const IO = {
  inputIds: "input_ids",
  positionIds: "position_ids",
  hiddenIn: "hidden_states",
  seqlensK: "seqlens_k",
  totalLength: "total_sequence_length",
  logitsFrom: "logits_from",
  logits: "logits",
  hiddenOut: "hidden_out",
  pastKey: (layer: number) => `past_key.${layer}`,
  pastValue: (layer: number) => `past_value.${layer}`,
  presentKey: (layer: number) => `present_key.${layer}`,
  presentValue: (layer: number) => `present_value.${layer}`,
} as const;

/** What a family's block builder receives and returns. */
export interface BlockContext {
  g: GraphBuilder;
  w: WeightLoader;
  c: ModelConfig;
  span: SpanSpec;
  maxSequence: number;
}

/**
 * The residual stream leaving the last block, split as (delta, residual) so that the final norm
 * (or the next block's norm) can fuse the addition. `bias` is a pending bias of delta (GPT-2).
 */
export interface BlockOutput {
  delta: string;
  residual: string;
  bias?: string;
}

/** One architecture family's part of a span graph (one file per family, as llama.cpp keeps one per architecture). */
export interface FamilyGraph {
  /** Ops after the token embedding lookup (GPT-2 adds learned positions, a graph input of its own). */
  embed?(ctx: BlockContext, tokens: string): Promise<string>;
  /** Blocks span.start..span.end over the residual stream. */
  blocks(ctx: BlockContext, hidden: string): Promise<BlockOutput>;
  /** The final norm before the LM head, fusing the last residual addition. */
  finalNorm(ctx: BlockContext, out: BlockOutput): Promise<string>;
}

/** GroupQueryAttention over packed q|k|v, reading and writing this layer's KV cache. */
export function attention(ctx: BlockContext, layer: number, qkv: string, rotary?: { cos: string; sin: string }): string {
  const { g, c } = ctx;
  const [out] = g.node(
    "GroupQueryAttention",
    [qkv, "", "", IO.pastKey(layer), IO.pastValue(layer), IO.seqlensK, IO.totalLength, rotary?.cos ?? "", rotary?.sin ?? ""],
    {
      num_heads: c.numHeads,
      kv_num_heads: c.numKvHeads,
      do_rotary: rotary ? 1 : 0,
      rotary_interleaved: c.ropeInterleaved ? 1 : 0,
    },
    { domain: "com.microsoft", outputs: [`attn.${layer}`, IO.presentKey(layer), IO.presentValue(layer)] },
  );
  return out!;
}

/** Zeros shaped like `x`, computed at run time. */
export function zerosLike(ctx: BlockContext, x: string): string {
  return ctx.g.op("ConstantOfShape", [ctx.g.op("Shape", [x])]);
}
