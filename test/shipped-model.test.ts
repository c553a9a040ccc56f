// The model that ships with Tessera: loads in both formats, has learned its text, decodes
// deterministically.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { evaluateTokens } from "../src/engine/evaluate.js";
import { generate } from "../src/engine/generate.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { GREEDY } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import "./support/fixtures.js";
import { LlamaCppOracle } from "./support/llama-cpp.js";

/** Recorded from `tessera eval` on the first EVAL_TOKENS held-out tokens (see README); the bound leaves 3% room. */
const EVAL_TOKENS = 4096;
const PERPLEXITY_BOUND = 28.3; // measured 27.47
const TOP1_FLOOR = 0.36; // measured 0.3716
const GOLDEN_PROMPT = "And God said,";
/** Pure greedy (no repetition penalty), so it loops the way small models do. */
const GOLDEN_CONTINUATION = " I will not go to pass, I will not go to pass, and will not go to pass, nor will not";

async function load(path: string, splits?: number[]) {
  const checkpoint = await openCheckpoint(path);
  const tokenizer = await loadTokenizer(checkpoint);
  const pipeline = await LocalPipeline.load(checkpoint, { splits, maxSequence: 512 });
  return { checkpoint, tokenizer, pipeline };
}

async function greedyText(path: string, splits?: number[]): Promise<string> {
  const { tokenizer, pipeline } = await load(path, splits);
  try {
    const session = pipeline.openSession(256);
    const result = await generate(session, tokenizer, tokenizer.encode(GOLDEN_PROMPT), { maxTokens: 24, sampling: GREEDY, seed: 0 });
    return result.text;
  } finally {
    await pipeline.release();
  }
}

test("the shipped model loads from its folder and its GGUF file with the same config", async () => {
  const hf = await openCheckpoint(SHIPPED_MODEL.hf);
  const gguf = await openCheckpoint(SHIPPED_MODEL.gguf);
  assert.equal(hf.config.architecture, "llama");
  assert.ok(hf.config.numHeads / hf.config.numKvHeads >= 2, "grouped-query attention");
  assert.equal(hf.config.tieWordEmbeddings, false);
  for (const key of ["vocabSize", "hiddenSize", "numLayers", "numHeads", "numKvHeads", "intermediateSize"] as const) {
    assert.equal(gguf.config[key], hf.config[key], key);
  }
});

test("held-out perplexity and top-1 accuracy stay within their recorded bounds", async () => {
  const { tokenizer, pipeline, checkpoint } = await load(SHIPPED_MODEL.hf, [3]);
  try {
    const tokens = tokenizer.encode(await readFile(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false }).slice(0, EVAL_TOKENS);
    const result = await evaluateTokens(pipeline.openSession(256), tokens, checkpoint.config.vocabSize, { window: 256 });
    assert.ok(result.perplexity < PERPLEXITY_BOUND, `perplexity ${result.perplexity}`);
    assert.ok(result.top1 > TOP1_FLOOR, `top-1 ${result.top1}`);
  } finally {
    await pipeline.release();
  }
});

test("greedy generation is deterministic, the same in both formats and across span splits", async () => {
  const first = await greedyText(SHIPPED_MODEL.hf);
  assert.equal(first, GOLDEN_CONTINUATION);
  assert.equal(await greedyText(SHIPPED_MODEL.hf, [2, 5]), first);
  assert.equal(await greedyText(SHIPPED_MODEL.gguf), first);
});

test("llama.cpp runs the shipped GGUF to the same greedy continuation", async () => {
  const { tokenizer, pipeline } = await load(SHIPPED_MODEL.gguf);
  const oracle = await LlamaCppOracle.load(SHIPPED_MODEL.gguf);
  try {
    const prompt = tokenizer.encode(GOLDEN_PROMPT);
    assert.deepEqual(oracle.tokenize(GOLDEN_PROMPT), prompt, "same tokenization");
    const session = pipeline.openSession(256);
    const ours = await generate(session, tokenizer, prompt, { maxTokens: 24, sampling: GREEDY, seed: 0, stopAtEos: false });
    assert.deepEqual(await oracle.greedy(prompt, 24), ours.tokens);
  } finally {
    await oracle.dispose();
    await pipeline.release();
  }
});
