// Tessera against llama.cpp (node-llama-cpp 3.21.1) on the same GGUF files.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax, logSoftmax } from "../src/engine/sampling.js";
import type { WeightFormat } from "../src/engine/weights.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { ggufModel, sampleTokens } from "./support/fixtures.js";
import { LlamaCppOracle } from "./support/llama-cpp.js";

const VOCAB = 512;
const oracles: LlamaCppOracle[] = [];
after(async () => {
  for (const o of oracles) await o.dispose();
});

async function oracleFor(file: string): Promise<LlamaCppOracle> {
  const o = await LlamaCppOracle.load(file);
  oracles.push(o);
  return o;
}

async function tessera(file: string, format: WeightFormat) {
  const pipeline = await LocalPipeline.load(await openCheckpoint(file), { format, maxSequence: 256, splits: [2] });
  return { pipeline, session: pipeline.openSession(128) };
}

/** Largest log-probability difference over the tokens llama.cpp gives at least e^-10. */
function likelyTokenDiff(reference: Float32Array, ours: Float32Array): number {
  let m = 0;
  for (let i = 0; i < reference.length; i++) {
    if (reference[i]! > -10) m = Math.max(m, Math.abs(reference[i]! - ours[i]!));
  }
  return m;
}

async function greedy(session: { append(t: number[]): Promise<Float32Array>; truncate(n: number): void }, prompt: number[], count: number) {
  session.truncate(0);
  let logits = await session.append(prompt);
  const out: number[] = [];
  while (out.length < count) {
    out.push(argmax(logits));
    logits = await session.append([out.at(-1)!]);
  }
  return out;
}

// F32: both sides compute in f32; what remains is summation order (~1e-5). llama.cpp's GELU
// reads an f16 lookup table, which moves GPT-2 log-probabilities by up to ~3e-3.
const F32_TOLERANCE: Record<string, number> = { "tiny-llama": 2e-4, "tiny-llama3": 2e-4, "tiny-qwen2": 2e-4, "tiny-gpt2": 1e-2 };

for (const preset of Object.keys(F32_TOLERANCE)) {
  describe(`${preset} (GGUF F32) against llama.cpp`, () => {
    test("next-token log-probabilities match within the documented tolerance", async () => {
      const file = await ggufModel(preset, "F32");
      const oracle = await oracleFor(file);
      const { pipeline, session } = await tessera(file, "f32");
      try {
        for (const seed of [1, 2, 3]) {
          const prompt = sampleTokens(6 + seed * 3, VOCAB, seed);
          const reference = await oracle.nextLogProbs(prompt, VOCAB);
          session.truncate(0);
          const ours = logSoftmax(await session.append(prompt));
          const diff = likelyTokenDiff(reference, ours);
          assert.ok(diff < F32_TOLERANCE[preset]!, `prompt ${seed}: max log-prob diff ${diff}`);
        }
      } finally {
        await pipeline.release();
      }
    });

    test("greedy generations of 32 tokens are equal", async () => {
      const file = await ggufModel(preset, "F32");
      const oracle = await oracleFor(file);
      const { pipeline, session } = await tessera(file, "f32");
      try {
        const prompt = sampleTokens(8, VOCAB, 42);
        assert.deepEqual(await greedy(session, prompt, 32), await oracle.greedy(prompt, 32));
      } finally {
        await pipeline.release();
      }
    });
  });
}

// Quantized files: both run the stored Q8_0/Q4_0 weights, but llama.cpp rounds activations to
// its own 8-bit blocks and ORT's MatMulNBits to its own, so log-probabilities differ by about
// as much as quantizing does (~0.2 on these untrained models); the top token must agree.
for (const [dtype, format] of [
  ["Q8_0", "q8"],
  ["Q4_0", "q4"],
  ["F16", "f16"],
] as const) {
  test(`tiny-llama GGUF ${dtype} on the ${format} engine tracks llama.cpp`, async () => {
    const file = await ggufModel("tiny-llama", dtype);
    const oracle = await oracleFor(file);
    const { pipeline, session } = await tessera(file, format);
    try {
      const prompt = sampleTokens(10, VOCAB, 5);
      const reference = await oracle.nextLogProbs(prompt, VOCAB);
      const ours = logSoftmax(await session.append(prompt));
      assert.equal(argmax(ours), argmax(reference));
      const bound = dtype === "F16" ? 0.02 : 0.5;
      assert.ok(likelyTokenDiff(reference, ours) < bound, `max log-prob diff ${likelyTokenDiff(reference, ours)}`);
    } finally {
      await pipeline.release();
    }
  });
}
