// Hugging Face folder → GGUF conversion, checked by Tessera and by llama.cpp.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { logSoftmax } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { convertToGguf } from "../src/model/convert.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { hfModel, maxAbsDiff, sampleTokens, workDir } from "./support/fixtures.js";
import { LlamaCppOracle } from "./support/llama-cpp.js";

async function lastLogProbs(path: string, tokens: number[]) {
  const pipeline = await LocalPipeline.load(await openCheckpoint(path), { maxSequence: 128 });
  try {
    return logSoftmax(await pipeline.openSession(64).append(tokens));
  } finally {
    await pipeline.release();
  }
}

for (const preset of ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]) {
  test(`${preset}: the converted GGUF gives the folder's logits, in Tessera and in llama.cpp`, async () => {
    const hf = await hfModel(preset);
    const file = join(workDir, `${preset}-converted.gguf`);
    const progress: number[] = [];
    await convertToGguf(await openCheckpoint(hf), file, "F32", (done) => progress.push(done));
    assert.ok(progress.length > 10);

    const tokens = sampleTokens(9, 512, 21);
    const fromHf = await lastLogProbs(hf, tokens);
    const fromGguf = await lastLogProbs(file, tokens);
    assert.ok(maxAbsDiff(fromHf, fromGguf) < 1e-4, `tessera: ${maxAbsDiff(fromHf, fromGguf)}`);

    const oracle = await LlamaCppOracle.load(file);
    try {
      const reference = await oracle.nextLogProbs(tokens, 512);
      let diff = 0;
      for (let i = 0; i < 512; i++) if (reference[i]! > -10) diff = Math.max(diff, Math.abs(reference[i]! - fromHf[i]!));
      assert.ok(diff < 1e-2, `llama.cpp: ${diff}`);
      const text = "In the beginning, the 3 quick foxes said: \"héllo\"\n\n  world!";
      const folderTokenizer = await loadTokenizer(await openCheckpoint(hf));
      const ggufTokenizer = await loadTokenizer(await openCheckpoint(file));
      const ours = folderTokenizer.encode(text, { addSpecial: false });
      assert.deepEqual(oracle.tokenize(text), ours, "llama.cpp tokenizes the converted vocabulary like the folder's tokenizer.json");
      assert.deepEqual(ggufTokenizer.encode(text), folderTokenizer.encode(text), "BOS handling survives the conversion");
    } finally {
      await oracle.dispose();
    }
  });
}
