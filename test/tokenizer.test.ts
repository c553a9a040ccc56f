import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ggufTokenizerMetadata, tokenizerJsonFromBpe, trainByteLevelBpe, type BpeVocab } from "../src/model/bpe-train.js";
import { gguf, readGguf, writeGguf, type GgufTyped } from "../src/model/gguf.js";
import {
  BYTE_TO_UNICODE,
  expandCaseInsensitiveGroups,
  LLAMA3_HF_SPLIT_REGEX,
  LLAMA3_SPLIT_REGEX,
  QWEN2_HF_SPLIT_REGEX,
  QWEN2_SPLIT_REGEX,
  sentencePieceTokenizerJson,
  Tokenizer,
} from "../src/model/tokenizer.js";
import { CheckpointError } from "../src/model/types.js";

const SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];
const CHAT_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/** Texts that exercise the pre-tokenizer: unicode, newlines, runs of spaces, digits, emoji, specials. */
const TEXTS = [
  "Hello world",
  "The lighthouse keeper's log: 214 puffins, 87 razorbills, 1,306 guillemots.",
  "  leading spaces,   inner   runs and trailing   ",
  "line one\nline two\n\n\nafter blank lines\r\nwindows line\tand\ttabs\n",
  "naïve café, Zürich, São Paulo, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية",
  "emoji 🦜🏳️‍🌈 👩🏽‍💻 and ZWJ, combining e\u0301 and a\u0308",
  "numbers 3.14159 1e-9 0xFF 1234567890 ²³ ½ ٣",
  "we'll they're I'd you've it's Don'T SHE'LL",
  "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
  "code: if (x != y) { return a->b[i] * 2; } // done",
  "</s>text right after a special<s>",
  "",
  " ",
  "\n",
];
const ALL_TEXT = TEXTS.join(" | ");

let vocab: BpeVocab;
let fromJson: Tokenizer;
let fromGguf: Tokenizer;
let dir: string;

before(async () => {
  vocab = trainByteLevelBpe(undefined, { vocabSize: 3000, specialTokens: SPECIALS });
  fromJson = Tokenizer.fromTokenizerJson(tokenizerJsonFromBpe(vocab), {
    bos_token: "<s>",
    eos_token: "</s>",
    add_bos_token: true,
    chat_template: CHAT_TEMPLATE,
  });
  const meta = new Map<string, unknown>(
    ggufTokenizerMetadata(vocab, { bosId: vocab.tokens.indexOf("<s>"), eosId: vocab.tokens.indexOf("</s>"), addBos: true }).map(([k, v]) => [k, plainValue(v)]),
  );
  meta.set("tokenizer.chat_template", CHAT_TEMPLATE);
  fromGguf = Tokenizer.fromGgufMetadata(meta);
  dir = await mkdtemp(join(tmpdir(), "tessera-tokenizer-"));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** `value`, failing the test (and not a type assertion) when it is missing. */
function defined<T>(value: T | undefined, what: string): T {
  assert.ok(value !== undefined, `${what} is missing`);
  return value;
}

function plainValue(v: GgufTyped): unknown {
  return v.type === "arr" ? [...v.values] : v.value;
}

describe("byte-level BPE trainer", () => {
  test("layout: 256 bytes, then merges, then specials", () => {
    assert.equal(vocab.tokens.length, 3000);
    assert.deepEqual(new Set(vocab.tokens.slice(0, 256)), new Set(BYTE_TO_UNICODE));
    assert.equal(vocab.tokens[0], "!");
    assert.deepEqual(
      vocab.specialTokens,
      SPECIALS.map((token, i) => ({ token, id: 3000 - SPECIALS.length + i })),
    );
    assert.equal(new Set(vocab.tokens).size, vocab.tokens.length);
    const known = new Set(vocab.tokens);
    for (const [a, b] of vocab.merges) assert.ok(known.has(a) && known.has(b) && known.has(a + b));
    assert.equal(new Set(vocab.merges.map((m) => m.join(" "))).size, vocab.merges.length);
    assert.ok(vocab.tokens.includes("Ġthe"), "learns common words");
  });

  test("is deterministic and fast at 32k", () => {
    const t0 = performance.now();
    const big = trainByteLevelBpe(undefined, { vocabSize: 32000, specialTokens: SPECIALS });
    assert.ok(performance.now() - t0 < 5000);
    assert.equal(big.tokens.length, 32000);
    assert.deepEqual(trainByteLevelBpe(undefined, { vocabSize: 32000, specialTokens: SPECIALS }), big);
    assert.deepEqual(big.tokens.slice(0, 2000), vocab.tokens.slice(0, 2000));
  });

  test("rejects a vocabulary too small for the bytes", () => {
    assert.throws(() => trainByteLevelBpe("abc", { vocabSize: 257, specialTokens: ["<a>", "<b>"] }));
  });
});

describe("Tokenizer", () => {
  test("tokenizer.json and GGUF metadata encode identically, and decode inverts encode", () => {
    for (const text of [...TEXTS, ALL_TEXT]) {
      const ids = fromJson.encode(text, { addSpecial: false });
      assert.deepEqual(fromGguf.encode(text, { addSpecial: false }), ids, JSON.stringify(text));
      assert.equal(fromJson.decode(ids), text);
      assert.equal(fromGguf.decode(ids), text);
    }
    assert.equal(fromJson.vocabSize, 3000);
    assert.equal(fromGguf.vocabSize, 3000);
  });

  test("special tokens, BOS and EOS", () => {
    const bos = vocab.tokens.indexOf("<s>");
    const imEnd = vocab.tokens.indexOf("<|im_end|>");
    for (const tok of [fromJson, fromGguf]) {
      assert.equal(tok.bosId, bos);
      assert.deepEqual(tok.eosIds.sort(), [vocab.tokens.indexOf("</s>"), imEnd].sort());
      const ids = tok.encode("hi<|im_end|>");
      assert.equal(ids[0], bos);
      assert.equal(ids.at(-1), imEnd);
      assert.equal(tok.encode("hi", { addSpecial: false })[0] === bos, false);
      assert.equal(tok.decode(ids, { skipSpecial: true }), "hi");
      assert.equal(tok.decode(ids), "<s>hi<|im_end|>");
      assert.ok(tok.isSpecial(imEnd));
      assert.equal(tok.tokenText(imEnd), "<|im_end|>");
      assert.deepEqual(tok.encode(""), [bos]);
    }
  });

  test("chat template", () => {
    const text = fromGguf.applyChatTemplate([{ role: "user", content: "Hi!" }], { addGenerationPrompt: true });
    assert.equal(text, "<s><|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
    const noTemplate = Tokenizer.fromTokenizerJson(tokenizerJsonFromBpe(vocab));
    assert.throws(() => noTemplate.applyChatTemplate([{ role: "user", content: "x" }]), /no chat template/);
  });

  test("fromHfDir reads tokenizer.json, tokenizer_config.json and generation_config.json", async () => {
    const hfDir = join(dir, "hf");
    await mkdir(hfDir);
    await writeFile(join(hfDir, "tokenizer.json"), JSON.stringify(tokenizerJsonFromBpe(vocab)));
    await writeFile(
      join(hfDir, "tokenizer_config.json"),
      JSON.stringify({ bos_token: { content: "<s>" }, eos_token: "</s>", add_bos_token: false, chat_template: CHAT_TEMPLATE }),
    );
    await writeFile(join(hfDir, "generation_config.json"), JSON.stringify({ eos_token_id: [5] }));
    const tok = await Tokenizer.fromHfDir(hfDir);
    assert.equal(tok.bosId, vocab.tokens.indexOf("<s>"));
    assert.ok(tok.eosIds.includes(5) && tok.eosIds.includes(vocab.tokens.indexOf("<|im_end|>")));
    assert.deepEqual(tok.encode("Hello world"), fromJson.encode("Hello world", { addSpecial: false }));
    await assert.rejects(Tokenizer.fromHfDir(join(dir, "missing")), CheckpointError);
  });

  test("(?i:...) groups expand to llama.cpp's spelling of the Llama 3 and Qwen2 splits", () => {
    // Verbatim from llama.cpp's src/llama-vocab.cpp (LLAMA_VOCAB_PRE_TYPE_LLAMA3 and _QWEN2).
    assert.equal(
      LLAMA3_SPLIT_REGEX,
      String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
    );
    assert.equal(
      QWEN2_SPLIT_REGEX,
      String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
    );
    assert.equal(expandCaseInsensitiveGroups("a(?i:xY|'z)b(?i:q)c"), "a(?:[xX][yY]|'[zZ])b(?:[qQ])c");
    assert.equal(expandCaseInsensitiveGroups(String.raw`\p{L}+`), String.raw`\p{L}+`);
    assert.throws(() => expandCaseInsensitiveGroups("x(?i:[a-z]+)"), /\(\?i:\.\.\.\) group at offset 1 of "x\(\?i:\[a-z\]\+\)"/);
    // tokenizers.js reads the Oniguruma form in tokenizer.json the way the expansion reads.
    for (const [hfForm, jsForm] of [
      [LLAMA3_HF_SPLIT_REGEX, LLAMA3_SPLIT_REGEX],
      [QWEN2_HF_SPLIT_REGEX, QWEN2_SPLIT_REGEX],
    ] as const) {
      const hf = Tokenizer.fromTokenizerJson(tokenizerJsonFromBpe(vocab, { splitRegexes: [hfForm] }));
      const js = Tokenizer.fromTokenizerJson(tokenizerJsonFromBpe(vocab, { splitRegexes: [jsForm] }));
      for (const text of [...TEXTS, ALL_TEXT]) assert.deepEqual(hf.encode(text), js.encode(text), JSON.stringify(text));
    }
  });

  test("unknown GGUF tokenizer models and pre-tokenizers are checkpoint errors", () => {
    const meta = (model: string, pre?: string) =>
      new Map<string, unknown>([
        ["tokenizer.ggml.model", model],
        ["tokenizer.ggml.tokens", ["a"]],
        ["tokenizer.ggml.merges", []],
        ...(pre ? [["tokenizer.ggml.pre", pre] as [string, unknown]] : []),
      ]);
    assert.throws(() => Tokenizer.fromGgufMetadata(meta("bert")), CheckpointError);
    assert.throws(() => Tokenizer.fromGgufMetadata(meta("gpt2", "no-such-pre")), CheckpointError);
  });

  test("StreamDecoder emits exactly the decoded text, holding back partial characters", () => {
    for (const tok of [fromJson, fromGguf]) {
      const ids = tok.encode(ALL_TEXT, { addSpecial: false });
      const stream = tok.streamDecoder();
      let out = "";
      for (const id of ids) {
        const piece = stream.push(id);
        assert.ok(!piece.includes("\uFFFD"));
        out += piece;
      }
      out += stream.flush();
      assert.equal(out, ALL_TEXT);
    }
    // A 4-byte emoji split over byte tokens comes out whole, at its last byte.
    const parrot = Array.from(new TextEncoder().encode("🦜"), (b) =>
      defined(fromJson.tokenId(defined(BYTE_TO_UNICODE[b], `byte ${b}'s character`)), `byte ${b}'s token`),
    );
    const stream = fromJson.streamDecoder();
    assert.deepEqual(
      parrot.map((id) => stream.push(id)),
      ["", "", "", "🦜"],
    );
    const cut = fromJson.streamDecoder();
    cut.push(defined(parrot[0], "the emoji's first byte token"));
    assert.equal(cut.flush(), "\uFFFD");
  });
});

describe("SentencePiece ('llama') GGUF vocabularies", () => {
  test("byte fallback, leading-space handling, and streaming", () => {
    const spm = Tokenizer.fromGgufMetadata(spmMetadata(vocab));
    for (const text of TEXTS) {
      const ids = spm.encode(text, { addSpecial: false });
      // Like llama.cpp and HF's legacy Llama tokenizers, a space is prepended after each special token.
      const expected = text.replace(/(<\|im_end\|>|<\/?s>)(?!$)/g, "$1 ");
      assert.equal(spm.decode(ids), expected, JSON.stringify(text));
    }
    const ids = spm.encode("Hello world 🦜", { addSpecial: true });
    assert.equal(ids[0], 1);
    assert.deepEqual(
      ids.slice(1).map((id) => spm.tokenText(id)),
      [...spm.encode("Hello world 🦜", { addSpecial: false }).map((id) => spm.tokenText(id))],
    );
    assert.ok(ids.map((id) => spm.tokenText(id)).includes("<0xF0>"), "emoji falls back to bytes");
    assert.match(defined(spm.tokenText(defined(ids[1], "the first token after BOS")), "its text"), /^▁H/);
    const stream = spm.streamDecoder();
    assert.equal(
      ids
        .slice(1)
        .map((id) => stream.push(id))
        .join("") + stream.flush(),
      "Hello world 🦜",
    );
    const withContext = spm.streamDecoder({ context: spm.encode("Say", { addSpecial: false }) });
    const first = defined(spm.encode("Hello", { addSpecial: false })[0], "the first token of 'Hello'");
    assert.equal(spm.decode([first]), "He");
    assert.equal(withContext.push(first), " He");
  });

  test("a SentencePiece tokenizer.json in a Hugging Face folder matches the GGUF vocabulary", async () => {
    const meta = spmMetadata(vocab);
    const fromMeta = Tokenizer.fromGgufMetadata(meta);
    const spmDir = join(dir, "spm-hf");
    await mkdir(spmDir);
    const json = sentencePieceTokenizerJson({
      tokens: meta.get("tokenizer.ggml.tokens") as string[],
      scores: meta.get("tokenizer.ggml.scores") as number[],
      tokenTypes: meta.get("tokenizer.ggml.token_type") as number[],
      addSpacePrefix: true,
    });
    await writeFile(join(spmDir, "tokenizer.json"), JSON.stringify(json));
    await writeFile(join(spmDir, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>", add_bos_token: true }));
    const fromDir = await Tokenizer.fromHfDir(spmDir);
    for (const text of TEXTS) assert.deepEqual(fromDir.encode(text), fromMeta.encode(text), JSON.stringify(text));
    assert.equal(fromDir.vocabSize, fromMeta.vocabSize);
  });
});

/**
 * A SentencePiece-style vocabulary derived from the BPE one: <unk>, <s>, </s>, 256 byte tokens,
 * then every learned token that is whole UTF-8 text, with '▁' for spaces, scored by merge rank.
 */
function spmMetadata(v: BpeVocab): Map<string, unknown> {
  const unicodeToByte = new Map(BYTE_TO_UNICODE.map((c, b) => [c, b]));
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
    scores.push(0);
  }
  const seen = new Set(tokens);
  const special = new Set(v.specialTokens.map((s) => s.token));
  v.tokens.forEach((t) => {
    if (special.has(t)) return;
    let piece: string;
    try {
      piece = decoder.decode(Uint8Array.from(Array.from(t, (c) => unicodeToByte.get(c)!)));
    } catch {
      return;
    }
    piece = piece.replaceAll(" ", "▁");
    if (seen.has(piece)) return;
    seen.add(piece);
    tokens.push(piece);
    types.push(1);
    scores.push(-tokens.length);
  });
  tokens.push("<|im_end|>");
  types.push(3);
  scores.push(0);
  return new Map<string, unknown>([
    ["tokenizer.ggml.model", "llama"],
    ["tokenizer.ggml.tokens", tokens],
    ["tokenizer.ggml.scores", scores],
    ["tokenizer.ggml.token_type", types],
    ["tokenizer.ggml.bos_token_id", 1],
    ["tokenizer.ggml.eos_token_id", 2],
    ["tokenizer.ggml.unknown_token_id", 0],
  ]);
}

// ---------------------------------------------------------------------------------------------
// Cross-check with llama.cpp (node-llama-cpp's prebuilt binaries) on a tiny GGUF llama model.

describe("agreement with llama.cpp", () => {
  test("byte-level (gpt-2, llama-bpe, qwen2 splits) and SentencePiece vocabularies tokenize like llama.cpp", async (t) => {
    let getLlama: typeof import("node-llama-cpp").getLlama;
    let llama: Awaited<ReturnType<typeof getLlama>>;
    try {
      ({ getLlama } = await import("node-llama-cpp"));
      llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never, progressLogs: false });
    } catch (e) {
      t.skip(`node-llama-cpp unavailable: ${(e as Error).message}`);
      return;
    }

    const bosId = vocab.tokens.indexOf("<s>");
    const eosId = vocab.tokens.indexOf("</s>");
    // The same vocabulary under the GPT-2, Llama-3 and Qwen2 pre-tokenizer splits.
    const byteLevelFiles: string[] = [];
    for (const pre of ["gpt-2", "llama-bpe", "qwen2"]) {
      const file = join(dir, `${pre}-vocab.gguf`);
      const metadata = ggufTokenizerMetadata(vocab, { bosId, eosId }).map(([k, v]): [string, GgufTyped] => [k, k === "tokenizer.ggml.pre" ? gguf.str(pre) : v]);
      await writeTinyLlamaGguf(file, vocab.tokens.length, metadata);
      byteLevelFiles.push(file);
    }
    const spmMeta = spmMetadata(vocab);
    const spmFile = join(dir, "spm-vocab.gguf");
    const spmTokens = spmMeta.get("tokenizer.ggml.tokens") as string[];
    await writeTinyLlamaGguf(spmFile, spmTokens.length, [
      ["tokenizer.ggml.model", gguf.str("llama")],
      ["tokenizer.ggml.tokens", gguf.arr("str", spmTokens)],
      ["tokenizer.ggml.scores", gguf.arr("f32", spmMeta.get("tokenizer.ggml.scores") as number[])],
      ["tokenizer.ggml.token_type", gguf.arr("i32", spmMeta.get("tokenizer.ggml.token_type") as number[])],
      ["tokenizer.ggml.bos_token_id", gguf.u32(1)],
      ["tokenizer.ggml.eos_token_id", gguf.u32(2)],
      ["tokenizer.ggml.unknown_token_id", gguf.u32(0)],
    ]);

    for (const file of [...byteLevelFiles, spmFile]) {
      const ours = Tokenizer.fromGgufMetadata((await readGguf(file)).metadata);
      const model = await llama.loadModel({ modelPath: file });
      try {
        for (const text of [...TEXTS, ALL_TEXT].filter((x) => x !== "")) {
          assert.deepEqual(ours.encode(text, { addSpecial: false }), [...model.tokenize(text, true)], `${file}: ${JSON.stringify(text)}`);
        }
      } finally {
        await model.dispose();
      }
    }
  });
});

/** A minimal F32 llama model (hidden 64, 2 heads, 1 layer) around the given tokenizer metadata. */
async function writeTinyLlamaGguf(file: string, vocabSize: number, tokenizer: Array<[string, GgufTyped]>): Promise<void> {
  const hidden = 64;
  const ff = 128;
  const metadata: Array<[string, GgufTyped]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str("tokenizer-test")],
    ["llama.context_length", gguf.u32(256)],
    ["llama.embedding_length", gguf.u32(hidden)],
    ["llama.block_count", gguf.u32(1)],
    ["llama.feed_forward_length", gguf.u32(ff)],
    ["llama.attention.head_count", gguf.u32(2)],
    ["llama.attention.head_count_kv", gguf.u32(2)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(1e-5)],
    ["llama.rope.dimension_count", gguf.u32(hidden / 2)],
    ["llama.vocab_size", gguf.u32(vocabSize)],
    ...tokenizer,
  ];
  const tensor = (name: string, shape: number[]) => ({
    name,
    dtype: "F32" as const,
    shape,
    bytes: new Uint8Array(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.01).buffer),
  });
  await writeGguf(file, metadata, [
    tensor("token_embd.weight", [vocabSize, hidden]),
    tensor("output_norm.weight", [hidden]),
    tensor("output.weight", [vocabSize, hidden]),
    tensor("blk.0.attn_norm.weight", [hidden]),
    tensor("blk.0.attn_q.weight", [hidden, hidden]),
    tensor("blk.0.attn_k.weight", [hidden, hidden]),
    tensor("blk.0.attn_v.weight", [hidden, hidden]),
    tensor("blk.0.attn_output.weight", [hidden, hidden]),
    tensor("blk.0.ffn_norm.weight", [hidden]),
    tensor("blk.0.ffn_gate.weight", [ff, hidden]),
    tensor("blk.0.ffn_up.weight", [ff, hidden]),
    tensor("blk.0.ffn_down.weight", [hidden, ff]),
  ]);
}
