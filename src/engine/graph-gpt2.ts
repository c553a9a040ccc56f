// GPT-2 blocks: LayerNorm with bias, learned positions, packed q|k|v with bias, GQA without
// rotary, tanh-GeLU (FastGelu) MLP. Residual additions are fused into SkipLayerNormalization.
import { attention, type BlockContext, type BlockOutput, type FamilyGraph, IO, zerosLike } from "./graph-common.js";
import { ElemType, MS_DOMAIN } from "./onnx-builder.js";

/** Learned positions, a graph input of their own, added to the token embedding. */
export async function gpt2Embedding(ctx: BlockContext, tokens: string): Promise<string> {
  const positions = ctx.g.input(IO.positionIds, ElemType.INT64, ["batch", "sequence"]);
  return ctx.g.op("Add", [tokens, await ctx.w.embedding(positions, "position_embd.weight")]);
}

export async function gpt2Blocks(ctx: BlockContext, hidden: string): Promise<BlockOutput> {
  const { g, w, span } = ctx;
  const norm = async (prefix: string) => [await w.vector(`${prefix}.weight`), await w.vector(`${prefix}.bias`)];
  // As in the Llama builder: the input goes through the same fused norm as every block boundary.
  let residual = zerosLike(ctx, hidden);
  let delta = hidden;
  let deltaBias = "";
  let normed: string;
  for (let i = span.start; i < span.end; i++) {
    const b = `blk.${i}`;
    [normed, residual] = skipNorm(ctx, delta, residual, await norm(`${b}.attn_norm`), deltaBias);
    const qkv = g.op("Add", [await w.linear(normed, [`${b}.attn_qkv.weight`], `${b}.attn_qkv`), await w.vector(`${b}.attn_qkv.bias`)]);
    const attn = attention(ctx, i, qkv);
    const projected = await w.linear(attn, [`${b}.attn_output.weight`], `${b}.attn_output`);
    [normed, residual] = skipNorm(ctx, projected, residual, await norm(`${b}.ffn_norm`), await w.vector(`${b}.attn_output.bias`));
    const up = await w.linear(normed, [`${b}.ffn_up.weight`], `${b}.ffn_up`);
    const act = g.op("FastGelu", [up, await w.vector(`${b}.ffn_up.bias`)], {}, MS_DOMAIN);
    delta = await w.linear(act, [`${b}.ffn_down.weight`], `${b}.ffn_down`);
    deltaBias = await w.vector(`${b}.ffn_down.bias`);
  }
  return { delta, residual, bias: deltaBias };
}

/** LayerNorm(delta + bias + residual) and the new residual, in one fused op. */
function skipNorm(ctx: BlockContext, delta: string, residual: string, [gamma, beta]: string[], bias: string): [string, string] {
  const [normed, , , sum] = ctx.g.node(
    "SkipLayerNormalization",
    [delta, residual, gamma!, beta!, bias],
    { epsilon: { float: ctx.c.normEps } },
    { domain: MS_DOMAIN, outputs: 4 },
  );
  return [normed!, sum!];
}

/** LayerNorm(delta + bias + residual) with the final norm's weights. */
export async function gpt2FinalNorm(ctx: BlockContext, out: BlockOutput): Promise<string> {
  const { g, w, c } = ctx;
  const [normed] = g.node(
    "SkipLayerNormalization",
    [out.delta, out.residual, await w.vector("output_norm.weight"), await w.vector("output_norm.bias"), out.bias ?? ""],
    { epsilon: { float: c.normEps } },
    { domain: MS_DOMAIN, outputs: 1 },
  );
  if (!normed) throw new Error("SkipLayerNormalization gave no output");
  return normed;
}

export const gpt2Graph: FamilyGraph = { embed: gpt2Embedding, blocks: gpt2Blocks, finalNorm: gpt2FinalNorm };
