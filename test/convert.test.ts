// Hugging Face folder → GGUF conversion, checked by Tessera and by llama.cpp.
import assert from "node:assert/strict";
import { access, cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { logSoftmax } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { convertToGguf } from "../src/model/convert.js";
import { DEFAULT_TRAINING_TEXT } from "../src/model/bpe-train.js";
import { PRESETS, writeHfTestModel, type HfTokenizerStyle, type HfWriteOptions } from "../src/model/fixtures.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { CheckpointError } from "../src/model/types.js";
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
      const text = 'In the beginning, the 3 quick foxes said: "héllo"\n\n  world!';
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

// ---------------------------------------------------------------------------------------------
// Tokenizers with a Sequence[Split, ByteLevel] pre-tokenizer (Qwen2, Llama 3), as their
// tokenizer.json files write them.

/** Digits, contractions, whitespace and newline runs: where the GPT-2, Qwen2 and Llama 3 splits differ. */
const SPLIT_TEXT =
  "I'm sure you'd say DON'T, they'll count 12345 or 2024 and 3.14159; it's WE'VE seen naïve café Zürich, " +
  "Ελληνικά, 日本語 🦜\n\n  two  spaces,\ttabs\r\nand (brackets) [x] {y}\n\n\n   trailing   ";
/** Default text plus lines that teach the vocabulary digit runs and contractions (GPT-2 split). */
const SPLIT_TRAINING_TEXT =
  DEFAULT_TRAINING_TEXT +
  "You'd say it's 12345, I'm sure; they'll count 123 and 45 and 2024 again, you know. We've seen 12345 twice, haven't you?\n".repeat(12);

const STYLE_PRESET = { gpt2: "tiny-qwen2", qwen2: "tiny-qwen2", llama3: "tiny-llama3" } as const;
const folders = new Map<string, Promise<string>>();
/** A Hugging Face folder whose tokenizer.json has the given layout, vocabulary trained on SPLIT_TRAINING_TEXT. */
function styledFolder(style: HfTokenizerStyle, extra: Omit<HfWriteOptions, "tokenizer" | "trainingText"> = {}, tag = ""): Promise<string> {
  const dir = join(workDir, `${STYLE_PRESET[style]}-${style}-tokenizer${tag}-hf`);
  let p = folders.get(dir);
  if (!p) {
    p = writeHfTestModel(dir, PRESETS[STYLE_PRESET[style]]!, { tokenizer: style, trainingText: SPLIT_TRAINING_TEXT, ...extra }).then(() => dir);
    folders.set(dir, p);
  }
  return p;
}

interface TokenizerJson {
  added_tokens: { id: number }[];
  model: { vocab: Record<string, number>; merges: string[]; ignore_merges: boolean };
}

async function readTokenizerJson(dir: string): Promise<TokenizerJson> {
  return JSON.parse(await readFile(join(dir, "tokenizer.json"), "utf8"));
}

test("the GPT-2, Qwen2 and Llama 3 splits tokenize the test text differently with the test vocabulary", async () => {
  const ids = await Promise.all(
    (["gpt2", "qwen2", "llama3"] as const).map(async (style) =>
      (await loadTokenizer(await openCheckpoint(await styledFolder(style)))).encode(SPLIT_TEXT, { addSpecial: false }),
    ),
  );
  const [gpt2, qwen2, llama3] = ids;
  assert.notDeepEqual(qwen2, gpt2);
  assert.notDeepEqual(llama3, gpt2);
  assert.notDeepEqual(qwen2, llama3);
});

for (const [style, pre] of [
  ["qwen2", "qwen2"],
  ["llama3", "llama-bpe"],
] as const) {
  test(`${style}-style tokenizer.json (Sequence[Split, ByteLevel]) converts with tokenizer.ggml.pre '${pre}' and tokenizes like the folder, in llama.cpp and in Tessera`, async () => {
    const source = await styledFolder(style);
    const hf = join(workDir, `${style}-with-hole-hf`);
    await cp(source, hf, { recursive: true });
    // Qwen2's vocab_size exceeds its tokenizer's: leave an id no token has, which llama.cpp pads.
    const json = await readTokenizerJson(hf);
    const usedInMerges = new Set(json.model.merges.flatMap((m) => m.split(" ")));
    const added = new Set(json.added_tokens.map((t) => t.id));
    const [hole, holeToken] =
      Object.entries(json.model.vocab)
        .map(([token, id]) => [id, token] as const)
        .filter(([id, token]) => !added.has(id) && !usedInMerges.has(token) && [...token].length > 1)
        .sort((a, b) => b[0] - a[0])[0] ?? assert.fail("no learned token that no merge builds on");
    delete json.model.vocab[holeToken];
    json.model.merges = json.model.merges.filter((m) => m.replace(" ", "") !== holeToken);
    await writeFile(join(hf, "tokenizer.json"), JSON.stringify(json));

    const file = join(workDir, `${style}-tokenizer-converted.gguf`);
    const checkpoint = await openCheckpoint(hf);
    await convertToGguf(checkpoint, file, "F16");

    const gguf = await openCheckpoint(file);
    const meta = gguf.metadata;
    const tokens = meta.get("tokenizer.ggml.tokens") as string[];
    const types = Array.from(meta.get("tokenizer.ggml.token_type") as ArrayLike<number>);
    const folderTokenizer = await loadTokenizer(checkpoint);
    const idOf = (t: string) => folderTokenizer.tokenId(t) ?? assert.fail(`no token ${t}`);
    assert.equal(meta.get("tokenizer.ggml.model"), "gpt2");
    assert.equal(meta.get("tokenizer.ggml.pre"), pre);
    assert.equal(tokens.length, checkpoint.config.vocabSize);
    assert.equal(tokens[hole], `[PAD${hole}]`);
    assert.equal(types[hole], 5, "the hole is UNUSED");
    assert.deepEqual(
      ["<s>", "</s>", "<|im_start|>", "<|im_end|>"].map((t) => types[idOf(t)]),
      [3, 3, 3, 3],
      "specials are CONTROL",
    );
    assert.equal(types[idOf("Ġthe")], 1);
    assert.equal((meta.get("tokenizer.ggml.merges") as string[]).length, json.model.merges.length);
    assert.equal(meta.get("tokenizer.ggml.eos_token_id"), idOf("</s>"));
    // Qwen2 names no BOS token: config.json's bos_token_id is written, but none is added.
    assert.equal(meta.get("tokenizer.ggml.bos_token_id"), idOf("<s>"));
    assert.equal(meta.get("tokenizer.ggml.add_bos_token"), style === "llama3", "add_bos_token (llama3: from the TemplateProcessing post-processor)");
    assert.equal(meta.get("tokenizer.ggml.padding_token_id"), style === "qwen2" ? idOf("</s>") : undefined);
    assert.equal(meta.get("tokenizer.chat_template"), folderTokenizer.chatTemplate);

    const ggufTokenizer = await loadTokenizer(gguf);
    const expected = folderTokenizer.encode(SPLIT_TEXT, { addSpecial: false });
    assert.equal(folderTokenizer.decode(expected), SPLIT_TEXT);
    const oracle = await LlamaCppOracle.load(file);
    try {
      assert.deepEqual(oracle.tokenize(SPLIT_TEXT), expected, "llama.cpp tokenizes the GGUF like the folder's tokenizer.json");
    } finally {
      await oracle.dispose();
    }
    assert.deepEqual(ggufTokenizer.encode(SPLIT_TEXT, { addSpecial: false }), expected, "Tessera tokenizes the GGUF like the folder");
    assert.deepEqual(ggufTokenizer.encode(SPLIT_TEXT), folderTokenizer.encode(SPLIT_TEXT), "BOS handling survives the conversion");
    assert.equal(ggufTokenizer.decode(expected), SPLIT_TEXT);
  });
}

test("a Split regex that llama.cpp has no pre-tokenizer for is refused, naming the regex", async () => {
  const regex = String.raw`\p{L}+|\p{N}{1,4}|[^\s\p{L}\p{N}]+|\s+`;
  const hf = await styledFolder("qwen2", { splitRegex: regex }, "-unknown-split");
  const file = join(workDir, "unknown-split.gguf");
  await assert.rejects(convertToGguf(await openCheckpoint(hf), file, "F32"), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.ok(e.message.includes(join(hf, "tokenizer.json")), e.message);
    assert.ok(e.message.includes(`unknown pre-tokenizer Split regex ${JSON.stringify(regex)}`), e.message);
    assert.match(e.message, /known: qwen2, llama-bpe, gpt-2/);
    return true;
  });
  await assert.rejects(access(file), "nothing is written");
});

test("a tokenizer.json that llama.cpp would tokenize differently (llama-bpe without ignore_merges) is refused", async () => {
  const hf = join(workDir, "llama3-no-ignore-merges-hf");
  await cp(await styledFolder("llama3"), hf, { recursive: true });
  const json = await readTokenizerJson(hf);
  // " you" is a whole word of a vocabulary token: without its merge and ignore_merges, tokenizer.json
  // spells it in pieces, while llama.cpp's llama-bpe (which ignores merges) takes the token.
  assert.ok("Ġyou" in json.model.vocab);
  json.model.ignore_merges = false;
  json.model.merges = json.model.merges.filter((m) => m.replace(" ", "") !== "Ġyou");
  await writeFile(join(hf, "tokenizer.json"), JSON.stringify(json));
  await assert.rejects(convertToGguf(await openCheckpoint(hf), join(workDir, "no-ignore-merges.gguf"), "F32"), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.match(e.message, /pre-tokenizer 'llama-bpe'\) would tokenize .* but tokenizer\.json gives/);
    return true;
  });
});
