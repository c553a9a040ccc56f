// The ONNX graph of a span [start, end) of transformer blocks: its inputs and outputs, the
// optional embedding (first span) and final norm + LM head (last span). Block bodies live in
// one builder per architecture family.
import type { Checkpoint } from "../model/checkpoint.js";
import type { ModelConfig } from "../model/types.js";
import { gpt2Blocks, gpt2Embedding } from "./graph-gpt2.js";
import { llamaBlocks } from "./graph-llama.js";
import { ElemType, type GraphBuilder } from "./onnx-builder.js";
import type { SpanSpec } from "./interface.js";
import { WeightLoader, type WeightFormat } from "./weights.js";

export type { SpanSpec } from "./interface.js";

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

export async function buildSpanGraph(
  g: GraphBuilder,
  checkpoint: Checkpoint,
  span: SpanSpec,
  format: WeightFormat,
  maxSequence: number,
  onTensorRead?: (name: string) => void,
): Promise<void> {
  const c = checkpoint.config;
  const w = new WeightLoader(checkpoint, g, format, onTensorRead);
  const ctx: BlockContext = { g, w, c, span, maxSequence };

  let hidden: string;
  if (span.embed) {
    const ids = g.input(IO.inputIds, ElemType.INT64, ["batch", "sequence"]);
    hidden = await w.embedding(ids, "token_embd.weight");
    if (c.architecture === "gpt2") {
      const positions = g.input(IO.positionIds, ElemType.INT64, ["batch", "sequence"]);
      hidden = await gpt2Embedding(ctx, hidden, positions);
    }
  } else {
    hidden = g.input(IO.hiddenIn, ElemType.FLOAT, ["batch", "sequence", c.hiddenSize]);
  }
  g.input(IO.seqlensK, ElemType.INT32, ["batch"]);
  g.input(IO.totalLength, ElemType.INT32, []);
  for (let i = span.start; i < span.end; i++) {
    g.input(IO.pastKey(i), ElemType.FLOAT, ["batch", c.numKvHeads, "past", c.headDim]);
    g.input(IO.pastValue(i), ElemType.FLOAT, ["batch", c.numKvHeads, "past", c.headDim]);
  }

  const out =
    c.architecture === "llama" ? await llamaBlocks(ctx, hidden) : await gpt2Blocks(ctx, hidden);

  if (span.head) {
    const normed =
      c.architecture === "llama"
        ? g.node(
            "SkipSimplifiedLayerNormalization",
            [out.delta, out.residual, await w.vector("output_norm.weight")],
            { epsilon: { float: c.normEps } },
            { domain: "com.microsoft", outputs: 1 },
          )[0]!
        : g.node(
            "SkipLayerNormalization",
            [
              out.delta,
              out.residual,
              await w.vector("output_norm.weight"),
              await w.vector("output_norm.bias"),
              out.bias ?? "",
            ],
            { epsilon: { float: c.normEps } },
            { domain: "com.microsoft", outputs: 1 },
          )[0]!;
    const from = g.input(IO.logitsFrom, ElemType.INT64, [1]);
    const tail = g.op("Slice", [normed, from, g.i64("slice.end", [Number.MAX_SAFE_INTEGER]), g.i64("slice.axis", [1])]);
    const headWeight = c.tieWordEmbeddings ? "token_embd.weight" : "output.weight";
    const logits = await w.linear(tail, [headWeight], "lm_head");
    g.node("Identity", [logits], {}, { outputs: [IO.logits] });
    g.output(IO.logits, ElemType.FLOAT, ["batch", "logit_positions", c.vocabSize]);
  } else {
    // Same order of additions as the fused norms: (delta + residual) + bias.
    const sum = g.op("Add", [out.delta, out.residual]);
    g.node(out.bias ? "Add" : "Identity", out.bias ? [sum, out.bias] : [sum], {}, { outputs: [IO.hiddenOut] });
    g.output(IO.hiddenOut, ElemType.FLOAT, ["batch", "sequence", c.hiddenSize]);
  }
  for (let i = span.start; i < span.end; i++) {
    g.output(IO.presentKey(i), ElemType.FLOAT, ["batch", c.numKvHeads, "present", c.headDim]);
    g.output(IO.presentValue(i), ElemType.FLOAT, ["batch", c.numKvHeads, "present", c.headDim]);
  }
}

/** GroupQueryAttention over packed q|k|v, reading and writing this layer's KV cache. */
export function attention(ctx: BlockContext, layer: number, qkv: string, rotary?: { cos: string; sin: string }): string {
  const { g, c } = ctx;
  const [out] = g.node(
    "GroupQueryAttention",
    [
      qkv,
      "",
      "",
      IO.pastKey(layer),
      IO.pastValue(layer),
      IO.seqlensK,
      IO.totalLength,
      rotary?.cos ?? "",
      rotary?.sin ?? "",
    ],
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
