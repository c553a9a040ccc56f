// Opening checkpoints: configs of every supported family, and clear errors for bad ones.
import assert from "node:assert/strict";
import { cp, readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { readSafetensorsDir } from "../src/model/safetensors.js";
import { CheckpointError } from "../src/model/types.js";
import { writeSafetensors } from "../src/model/safetensors.js";
import { readTensorBytes } from "../src/model/tensor-file.js";
import { ggufModel, hfModel, workDir } from "./support/fixtures.js";

async function copyOf(preset: string, name: string): Promise<string> {
  const dir = join(workDir, name);
  await cp(await hfModel(preset), dir, { recursive: true });
  return dir;
}

/** Rewrites model.safetensors of a folder through `edit` (name → tensor or undefined to drop). */
async function rewriteTensors(
  dir: string,
  edit: (name: string, t: { dtype: string; shape: number[]; bytes: Uint8Array }) => { dtype: string; shape: number[]; bytes: Uint8Array } | undefined,
) {
  const infos = await readSafetensorsDir(dir);
  const tensors = [];
  for (const [name, info] of infos) {
    const t = edit(name, { dtype: info.dtype, shape: info.shape, bytes: await readTensorBytes(info) });
    if (t) tensors.push({ name, dtype: t.dtype as "F32", shape: t.shape, bytes: t.bytes });
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
}

function rejectsWith(p: Promise<unknown>, ...parts: (string | RegExp)[]) {
  return assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${String(e)}`);
    for (const part of parts) {
      if (typeof part === "string") assert.ok(e.message.includes(part), `'${e.message}' should mention '${part}'`);
      else assert.match(e.message, part);
    }
    return true;
  });
}

test("configs of each family read the same from a Hugging Face folder and from GGUF", async () => {
  for (const preset of ["tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-gpt2"]) {
    const hf = (await openCheckpoint(await hfModel(preset))).config;
    const gg = (await openCheckpoint(await ggufModel(preset))).config;
    for (const key of [
      "architecture",
      "vocabSize",
      "hiddenSize",
      "numLayers",
      "numHeads",
      "numKvHeads",
      "headDim",
      "intermediateSize",
      "tieWordEmbeddings",
      "qkvBias",
      "bosTokenId",
    ] as const) {
      assert.deepEqual(gg[key], hf[key], `${preset}: ${key}`);
    }
    assert.equal(gg.ropeInterleaved, preset === "tiny-llama" || preset === "tiny-llama3", `${preset}: GGUF llama stores adjacent rotary pairs`);
    assert.equal(hf.ropeInterleaved, false);
  }
  const llama3 = await openCheckpoint(await hfModel("tiny-llama3"));
  assert.equal(llama3.config.ropeScaling?.type, "llama3");
  assert.equal((await openCheckpoint(await ggufModel("tiny-llama3"))).config.ropeFreqFactors?.length, 16);
});

test("a missing tensor names the file's folder, the tensor and the expected shape", async () => {
  const dir = await copyOf("tiny-llama", "missing-tensor");
  await rewriteTensors(dir, (name, t) => (name === "model.layers.2.mlp.up_proj.weight" ? undefined : t));
  await rejectsWith(openCheckpoint(dir), dir, "model.layers.2.mlp.up_proj.weight", "missing tensor", "[256,128]");
});

test("a tensor of the wrong shape names the file, the tensor, expected and found shapes", async () => {
  const dir = await copyOf("tiny-llama", "wrong-shape");
  await rewriteTensors(dir, (name, t) =>
    name === "model.layers.1.self_attn.k_proj.weight" ? { ...t, shape: [32, 128], bytes: t.bytes.subarray(0, 32 * 128 * 4) } : t,
  );
  await rejectsWith(openCheckpoint(dir), "model.safetensors", "model.layers.1.self_attn.k_proj.weight", "expected shape [64,128], found [32,128]");
});

test("an unknown architecture is refused by name", async () => {
  const dir = await copyOf("tiny-llama", "unknown-arch");
  const configFile = join(dir, "config.json");
  const config = JSON.parse(await readFile(configFile, "utf8"));
  await writeFile(configFile, JSON.stringify({ ...config, model_type: "mamba" }));
  await rejectsWith(openCheckpoint(dir), "config.json", "unknown architecture 'mamba'");
});

test("a truncated GGUF file fails when its data is read, naming the tensor", async () => {
  const source = await ggufModel("tiny-qwen2");
  const file = join(workDir, "truncated.gguf");
  await cp(source, file);
  const { size } = await import("node:fs/promises").then((fs) => fs.stat(file));
  await truncate(file, size - 1000);
  await rejectsWith(openCheckpoint(file), "truncated.gguf", /tensor '[^']+'/);
});

test("a config whose header lies about the model (layer count) fails on the first missing block", async () => {
  const dir = await copyOf("tiny-gpt2", "lying-config");
  const configFile = join(dir, "config.json");
  const config = JSON.parse(await readFile(configFile, "utf8"));
  await writeFile(configFile, JSON.stringify({ ...config, n_layer: 5 }));
  await rejectsWith(openCheckpoint(dir), "missing tensor", "transformer.h.3.");
});

test("a span reads only its own blocks' tensors", async () => {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const read: string[] = [];
  const { SpanRunner } = await import("../src/engine/runtime.js");
  const runner = await SpanRunner.load(
    checkpoint,
    { start: 1, end: 3, embed: false, head: false },
    { cacheDir: join(workDir, "span-only-cache"), onTensorRead: (n) => read.push(n) },
  );
  await runner.release();
  assert.ok(read.length > 0);
  for (const name of read) assert.match(name, /^blk\.[12]\./, `span [1,3) read ${name}`);
});

test("bad sessions: token ids outside the vocabulary and overfull sessions are refused cleanly", async () => {
  const pipeline = await LocalPipeline.load(await openCheckpoint(await hfModel("tiny-llama")), { maxSequence: 64 });
  try {
    const s = pipeline.openSession(8);
    await assert.rejects(s.append([1, 99999]), /token id 99999 at index 1 outside the vocabulary/);
    await assert.rejects(s.append([1, 2, 3, 4, 5, 6, 7, 8, 9]), /session full/);
    assert.equal(s.length, 0);
    await s.append([1, 2, 3]);
    assert.equal(s.length, 3);
  } finally {
    await pipeline.release();
  }
});
