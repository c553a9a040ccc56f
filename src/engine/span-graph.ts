// The ONNX graph of a span [start, end) of transformer blocks: its inputs and outputs, the
// optional embedding (first span) and final norm + LM head (last span). Block bodies live in
// one builder per architecture family (graph-llama.ts, graph-gpt2.ts).
import type { Checkpoint } from "../model/checkpoint.js";
import type { Architecture } from "../model/types.js";
import { type BlockContext, type FamilyGraph, IO } from "./graph-common.js";
import { gpt2Graph } from "./graph-gpt2.js";
import { llamaGraph } from "./graph-llama.js";
import type { SpanSpec } from "./interface.js";
import { ElemType, type GraphBuilder } from "./onnx-builder.js";
import { WeightLoader, type WeightFormat } from "./weights.js";

export type { SpanSpec } from "./interface.js";
export { IO } from "./graph-common.js";

const FAMILIES: Record<Architecture, FamilyGraph> = { llama: llamaGraph, gpt2: gpt2Graph };

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
  const family = FAMILIES[c.architecture];

  let hidden: string;
  if (span.embed) {
    const ids = g.input(IO.inputIds, ElemType.INT64, ["batch", "sequence"]);
    hidden = await w.embedding(ids, "token_embd.weight");
    if (family.embed) hidden = await family.embed(ctx, hidden);
  } else {
    hidden = g.input(IO.hiddenIn, ElemType.FLOAT, ["batch", "sequence", c.hiddenSize]);
  }
  g.input(IO.seqlensK, ElemType.INT32, ["batch"]);
  g.input(IO.totalLength, ElemType.INT32, []);
  for (let i = span.start; i < span.end; i++) {
    g.input(IO.pastKey(i), ElemType.FLOAT, ["batch", c.numKvHeads, "past", c.headDim]);
    g.input(IO.pastValue(i), ElemType.FLOAT, ["batch", c.numKvHeads, "past", c.headDim]);
  }

  const out = await family.blocks(ctx, hidden);

  if (span.head) {
    const normed = await family.finalNorm(ctx, out);
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
