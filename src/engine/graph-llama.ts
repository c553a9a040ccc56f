// Llama-family blocks (Llama 2/3, Mistral, Qwen2): RMSNorm, packed q|k|v (+bias), rotary GQA,
// SwiGLU. Residual additions are fused into the next norm (SkipSimplifiedLayerNormalization).
import { attention, type BlockContext, type BlockOutput, type FamilyGraph, zerosLike } from "./graph-common.js";
import { MS_DOMAIN } from "./onnx-builder.js";
import { rotaryCaches } from "./rope.js";

export async function llamaBlocks(ctx: BlockContext, hidden: string): Promise<BlockOutput> {
  const { g, w, c, span } = ctx;
  // An edge (no blocks) has no use for the rotary tables: left out, not left for ORT to remove.
  if (span.start === span.end) return { delta: hidden, residual: zerosLike(ctx, hidden) };
  const caches = rotaryCaches(c, ctx.maxSequence);
  const half = c.headDim / 2;
  const rotary = {
    cos: g.f32("rope.cos", [ctx.maxSequence, half], caches.cos),
    sin: g.f32("rope.sin", [ctx.maxSequence, half], caches.sin),
  };

  // The span's input enters as (hidden + zeros) through the same fused norm the blocks use, so a
  // model cut into spans computes bit for bit what the uncut model does.
  let residual = zerosLike(ctx, hidden);
  let delta = hidden;
  let normed: string;
  for (let i = span.start; i < span.end; i++) {
    const b = `blk.${i}`;
    [normed, residual] = skipNorm(ctx, delta, residual, await w.vector(`${b}.attn_norm.weight`));
    let qkv = await w.linear(normed, [`${b}.attn_q.weight`, `${b}.attn_k.weight`, `${b}.attn_v.weight`], `${b}.attn_qkv`);
    if (c.qkvBias) {
      const bias = await w.fusedVector([`${b}.attn_q.bias`, `${b}.attn_k.bias`, `${b}.attn_v.bias`], `${b}.attn_qkv.bias`);
      qkv = g.op("Add", [qkv, bias]);
    }
    const attn = attention(ctx, i, qkv, rotary);
    const projected = await w.linear(attn, [`${b}.attn_output.weight`], `${b}.attn_output`);
    [normed, residual] = skipNorm(ctx, projected, residual, await w.vector(`${b}.ffn_norm.weight`));

    const gateUp = await w.linear(normed, [`${b}.ffn_gate.weight`, `${b}.ffn_up.weight`], `${b}.ffn_gate_up`);
    const [gate, up] = g.node("Split", [gateUp], { axis: -1, num_outputs: 2 }, { outputs: 2 });
    const silu = g.op("Mul", [gate!, g.op("Sigmoid", [gate!])]);
    delta = await w.linear(g.op("Mul", [silu, up!]), [`${b}.ffn_down.weight`], `${b}.ffn_down`);
  }
  return { delta, residual };
}

/** RMSNorm(delta + residual) and the new residual, in one fused op. */
function skipNorm(ctx: BlockContext, delta: string, residual: string, weight: string): [string, string] {
  const [normed, , , sum] = ctx.g.node(
    "SkipSimplifiedLayerNormalization",
    [delta, residual, weight],
    { epsilon: { float: ctx.c.normEps } },
    { domain: MS_DOMAIN, outputs: 4 },
  );
  return [normed!, sum!];
}

/** RMSNorm(delta + residual) with the final norm's weight. */
export async function llamaFinalNorm(ctx: BlockContext, out: BlockOutput): Promise<string> {
  const { g, w, c } = ctx;
  const [normed] = g.node(
    "SkipSimplifiedLayerNormalization",
    [out.delta, out.residual, await w.vector("output_norm.weight")],
    { epsilon: { float: c.normEps } },
    { domain: MS_DOMAIN, outputs: 1 },
  );
  if (!normed) throw new Error("SkipSimplifiedLayerNormalization gave no output");
  return normed;
}

export const llamaGraph: FamilyGraph = { blocks: llamaBlocks, finalNorm: llamaFinalNorm };
