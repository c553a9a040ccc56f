// Converts a Hugging Face folder into a GGUF file (F32, F16, Q8_0 or Q4_0) that llama.cpp and
// Tessera both load, tokenizer and chat template included. The tokenizer is written the way
// llama.cpp's convert_hf_to_gguf.py writes byte-level BPE vocabularies ("gpt2"), with the
// pre-tokenizer named after the tokenizer.json's split regex; tokenizers whose split llama.cpp
// does not know are refused rather than written with a split that tokenizes differently.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Checkpoint } from "./checkpoint.js";
import { expectedShapes } from "./config.js";
import { gguf, type GgufTyped } from "./gguf.js";
import { exportGguf, ggufArchitectureOf, type GgufExportType } from "./gguf-export.js";
import { GPT2_SPLIT_REGEX, LLAMA3_HF_SPLIT_REGEX, LLAMA3_SPLIT_REGEX, QWEN2_HF_SPLIT_REGEX, QWEN2_SPLIT_REGEX, tokenContent, Tokenizer } from "./tokenizer.js";
import { CheckpointError, type ModelConfig } from "./types.js";

export async function convertToGguf(
  checkpoint: Checkpoint,
  out: string,
  dtype: GgufExportType,
  onTensor?: (done: number, total: number) => void,
): Promise<void> {
  if (checkpoint.format !== "hf") throw new CheckpointError("is already GGUF; convert takes a Hugging Face folder", checkpoint.path);
  // Before any tensor is written: an unconvertible tokenizer leaves no half-written file.
  const tokenizer = await tokenizerMetadata(checkpoint.path, checkpoint.config);
  const total = expectedShapes(checkpoint.config).size;
  let done = 0;
  await exportGguf(out, {
    config: checkpoint.config,
    architecture: ggufArchitectureOf(checkpoint.config),
    name: checkpoint.path.split("/").filter(Boolean).at(-1) ?? "model",
    dtype,
    read: async (name) => {
      const values = await checkpoint.readF32(name);
      onTensor?.(++done, total);
      return values;
    },
    extraMetadata: tokenizer,
  });
}

/** GGUF token types (llama.cpp's llama_token_type). */
const TokenType = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

/**
 * llama.cpp's tokenizer.ggml.pre for each split regex of a byte-level tokenizer.json, as
 * tokenizer.json files write it (Oniguruma) or in the JavaScript form llama.cpp itself spells.
 * (llama.cpp's converter recognises a tokenizer by hashing its output on a probe text; the
 * regex is what decides that output, and needs no Python tokenizer to read.)
 */
const PRE_TOKENIZER_OF_SPLIT: ReadonlyMap<string, string> = new Map([
  [QWEN2_HF_SPLIT_REGEX, "qwen2"],
  [QWEN2_SPLIT_REGEX, "qwen2"],
  [LLAMA3_HF_SPLIT_REGEX, "llama-bpe"],
  [LLAMA3_SPLIT_REGEX, "llama-bpe"],
  [GPT2_SPLIT_REGEX, "gpt-2"],
]);

/**
 * Text on which the written GGUF vocabulary must tokenize exactly like the folder's
 * tokenizer.json before convert writes it: whitespace runs, digit runs, contractions in any
 * case, punctuation runs, emoji and several scripts (already NFC, which llama.cpp skips).
 */
const CHECK_TEXTS = [
  "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
  "🚀 (plain) 😶‍🌫️ (joined emoji) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 3.3 3..3 3...3 12345",
  "naïve café, Zürich, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية, हिन्दी, ไทย",
  "''''''```````\"\"\"\"......!!!!!!?????? ------======= (parenthesised) [bracketed] {braced}",
  "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL DON'T",
  "code: if (x != y) { return a->b[i] * 2; } // done\r\n\tindented\n\n\nend   ",
];

/** GGUF tokenizer keys for a byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen2 style). */
async function tokenizerMetadata(dir: string, config: ModelConfig): Promise<Array<[string, GgufTyped]>> {
  const file = join(dir, "tokenizer.json");
  const configFile = join(dir, "tokenizer_config.json");
  const json = await readJson(file, true);
  const tokenizerConfig = (await readJson(configFile, false)) ?? {};
  const model = json.model;
  if (!isObject(model) || model.type !== "BPE") {
    throw new CheckpointError(`only byte-level BPE tokenizers convert to GGUF (model.type is ${describe(isObject(model) ? model.type : model)})`, file);
  }
  if (model.byte_fallback === true) {
    throw new CheckpointError(
      "model.byte_fallback is true: a SentencePiece-style BPE, not a byte-level one; only byte-level BPE tokenizers convert to GGUF",
      file,
    );
  }
  for (const key of ["continuing_subword_prefix", "end_of_word_suffix"]) {
    if (model[key]) throw new CheckpointError(`model.${key} is ${describe(model[key])}; llama.cpp's gpt2 vocabularies have none`, file);
  }
  const pre = ggufPreTokenizer(json, file);
  const { tokens, types } = vocabulary(json, model, config.vocabSize, file);
  const merges = mergesOf(model, file);

  // BOS/EOS/add_bos/chat template as Tessera reads the folder, so both files behave alike;
  // like llama.cpp, config.json's ids stand in for tokens tokenizer_config.json does not name.
  const folder = await Tokenizer.fromHfDir(dir);
  // A named token the vocabulary lacks is left out, as llama.cpp's converter leaves it out.
  const idOf = (key: "unk_token" | "pad_token"): number | undefined => {
    const content = tokenContent(tokenizerConfig[key]);
    return content === undefined ? undefined : folder.tokenId(content);
  };
  const specialIds: Array<[string, number | undefined, string]> = [
    ["bos", folder.bosId ?? config.bosTokenId, "bos_token (tokenizer_config.json) or bos_token_id (config.json)"],
    ["eos", folder.eosId ?? config.eosTokenIds[0], "eos_token (tokenizer_config.json) or eos_token_id (config.json)"],
    ["unknown", idOf("unk_token"), "unk_token (tokenizer_config.json)"],
    ["padding", idOf("pad_token"), "pad_token (tokenizer_config.json)"],
  ];

  const meta: Array<[string, GgufTyped]> = [
    ["tokenizer.ggml.model", gguf.str("gpt2")],
    ["tokenizer.ggml.pre", gguf.str(pre)],
    ["tokenizer.ggml.tokens", gguf.arr("str", tokens)],
    ["tokenizer.ggml.token_type", gguf.arr("i32", types)],
    ["tokenizer.ggml.merges", gguf.arr("str", merges)],
  ];
  for (const [name, id, source] of specialIds) {
    if (id === undefined) continue;
    if (!Number.isInteger(id) || id < 0 || id >= tokens.length) {
      throw new CheckpointError(`${name} token id ${id} (from ${source}) is outside the ${tokens.length}-token vocabulary`, dir);
    }
    meta.push([`tokenizer.ggml.${name}_token_id`, gguf.u32(id)]);
  }
  meta.push(["tokenizer.ggml.add_bos_token", gguf.bool(folder.addBos)], ["tokenizer.ggml.add_eos_token", gguf.bool(folder.addEos)]);
  if (folder.chatTemplate !== undefined) meta.push(["tokenizer.chat_template", gguf.str(folder.chatTemplate)]);

  checkSameTokenization(folder, meta, pre, file);
  return meta;
}

/**
 * tokenizer.ggml.pre for the tokenizer.json's normalizer, pre-tokenizer and decoder, or a
 * CheckpointError naming the part that llama.cpp's gpt2 tokenizer cannot reproduce.
 */
function ggufPreTokenizer(json: Record<string, unknown>, file: string): string {
  const normalizer = json.normalizer;
  // Qwen2 ships an NFC normalizer; llama.cpp's converter drops it (its tokenizer has none), so
  // text that is not already NFC tokenizes differently there, as it does in llama.cpp's own GGUFs.
  if (normalizer != null && !(isObject(normalizer) && normalizer.type === "NFC")) {
    throw new CheckpointError(`normalizer ${summary(normalizer)} has no GGUF equivalent (supported: none, or NFC)`, file);
  }
  const decoder = json.decoder;
  if (!isObject(decoder) || decoder.type !== "ByteLevel") {
    throw new CheckpointError(`decoder ${summary(decoder)}: byte-level BPE vocabularies decode with ByteLevel`, file);
  }

  const pre = json.pre_tokenizer;
  if (isObject(pre) && pre.type === "ByteLevel") {
    checkByteLevel(pre, true, "pre_tokenizer", file);
    return "gpt-2";
  }
  const steps = isObject(pre) && pre.type === "Sequence" && Array.isArray(pre.pretokenizers) ? pre.pretokenizers : undefined;
  const [split, byteLevel] = steps ?? [];
  if (steps?.length !== 2 || !isObject(split) || split.type !== "Split" || !isObject(byteLevel) || byteLevel.type !== "ByteLevel") {
    throw new CheckpointError(`unsupported pre_tokenizer ${summary(pre)}: expected ByteLevel, or Sequence[Split, ByteLevel] (Llama 3, Qwen2)`, file);
  }
  checkByteLevel(byteLevel, false, "pre_tokenizer.pretokenizers[1]", file);
  const regex = isObject(split.pattern) ? split.pattern.Regex : undefined;
  if (typeof regex !== "string") {
    throw new CheckpointError(`pre_tokenizer Split: expected a { Regex } pattern, found ${JSON.stringify(split.pattern)}`, file);
  }
  if (split.behavior !== "Isolated" || split.invert === true) {
    throw new CheckpointError(
      `pre_tokenizer Split: expected behavior "Isolated" and invert false, found behavior ${describe(split.behavior)} and invert ${describe(split.invert)}`,
      file,
    );
  }
  const name = PRE_TOKENIZER_OF_SPLIT.get(regex);
  if (name === undefined) {
    const known = [...new Set(PRE_TOKENIZER_OF_SPLIT.values())].join(", ");
    throw new CheckpointError(
      `unknown pre-tokenizer Split regex ${JSON.stringify(regex)}: it is not one whose llama.cpp pre-tokenizer is known (known: ${known})`,
      file,
    );
  }
  return name;
}

/** A ByteLevel pre-tokenizer step: no prefix space, and its own GPT-2 regex only when it stands alone. */
function checkByteLevel(step: Record<string, unknown>, useRegex: boolean, where: string, file: string): void {
  if (step.add_prefix_space === true) {
    throw new CheckpointError(`${where}: ByteLevel add_prefix_space is true; llama.cpp's gpt2 tokenizer never adds a prefix space`, file);
  }
  const found = step.use_regex ?? true;
  if (found !== useRegex) {
    throw new CheckpointError(
      `${where}: ByteLevel use_regex is ${describe(found)}, expected ${useRegex}` +
        (useRegex ? " (without it nothing splits the text into words)" : " (the Split before it already splits)"),
      file,
    );
  }
}

/**
 * Tokens and GGUF token types, id by id up to the model's vocabulary size, as llama.cpp's
 * get_vocab_base lays them out: added tokens are CONTROL when special (or spelled like a
 * control token, `<|...|>`), USER_DEFINED otherwise; ids no token has become `[PAD<id>]` (UNUSED).
 */
function vocabulary(json: Record<string, unknown>, model: Record<string, unknown>, vocabSize: number, file: string): { tokens: string[]; types: number[] } {
  const byId = new Map<number, { token: string; type: number }>();
  const place = (id: unknown, token: string, type: number, where: string) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new CheckpointError(`${where}: token ${JSON.stringify(token)} has id ${describe(id)}, expected a non-negative integer`, file);
    }
    if (id >= vocabSize) {
      throw new CheckpointError(
        `${where}: token ${JSON.stringify(token)} has id ${id}, outside the model's vocabulary (config.json vocab_size ${vocabSize})`,
        file,
      );
    }
    const previous = byId.get(id);
    if (previous && where === "model.vocab") {
      throw new CheckpointError(`model.vocab: id ${id} is given to both ${JSON.stringify(previous.token)} and ${JSON.stringify(token)}`, file);
    }
    byId.set(id, { token, type });
  };
  if (!isObject(model.vocab)) throw new CheckpointError(`model.vocab: expected an object of token → id, found ${summary(model.vocab)}`, file);
  for (const [token, id] of Object.entries(model.vocab)) place(id, token, TokenType.NORMAL, "model.vocab");
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw new CheckpointError(`added_tokens: expected a list, found ${summary(added)}`, file);
  added.forEach((t: unknown, i) => {
    if (!isObject(t) || typeof t.content !== "string") {
      throw new CheckpointError(`added_tokens[${i}]: expected { id, content, special }, found ${JSON.stringify(t)}`, file);
    }
    const control = t.special === true || looksLikeControlToken(t.content);
    place(t.id, t.content, control ? TokenType.CONTROL : TokenType.USER_DEFINED, `added_tokens[${i}]`);
  });
  const tokens: string[] = [];
  const types: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    const entry = byId.get(id);
    tokens.push(entry?.token ?? `[PAD${id}]`);
    types.push(entry?.type ?? TokenType.UNUSED);
  }
  return { tokens, types };
}

/** Added tokens some models forget to mark special (llama.cpp's does_token_look_special). */
function looksLikeControlToken(token: string): boolean {
  return (
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(token) ||
    (token.startsWith("<|") && token.endsWith("|>")) ||
    (token.startsWith("<｜") && token.endsWith("｜>")) ||
    (token.startsWith("<unused") && token.endsWith(">"))
  );
}

/** Merges as "left right" strings; pairs ([left, right], transformers ≥ 4.45) with spaces written as "Ġ", as llama.cpp does. */
function mergesOf(model: Record<string, unknown>, file: string): string[] {
  const merges = model.merges;
  if (!Array.isArray(merges)) throw new CheckpointError(`model.merges: expected a list, found ${summary(merges)}`, file);
  return merges.map((m: unknown, i) => {
    if (typeof m === "string" && m.split(" ").length === 2) return m;
    if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") {
      return `${m[0].replaceAll(" ", "\u0120")} ${m[1].replaceAll(" ", "\u0120")}`;
    }
    throw new CheckpointError(`model.merges[${i}]: expected "left right" or [left, right], found ${JSON.stringify(m)}`, file);
  });
}

/** Refuses metadata whose tokenizer (as Tessera reads GGUF, the way llama.cpp does) differs from the folder's. */
function checkSameTokenization(folder: Tokenizer, meta: Array<[string, GgufTyped]>, pre: string, file: string): void {
  const plain = new Map<string, unknown>(meta.map(([key, v]) => [key, v.type === "arr" ? v.values : v.value]));
  const written = Tokenizer.fromGgufMetadata(plain);
  for (const text of [...CHECK_TEXTS, CHECK_TEXTS.join(" ")]) {
    const want = folder.encode(text, { addSpecial: false });
    const got = written.encode(text, { addSpecial: false });
    if (got.length === want.length && got.every((id, i) => id === want[i])) continue;
    throw new CheckpointError(
      `the GGUF vocabulary (pre-tokenizer '${pre}') would tokenize ${JSON.stringify(text)} as [${got.join(", ")}], ` +
        `but tokenizer.json gives [${want.join(", ")}]; not writing a tokenizer that llama.cpp and Tessera would read differently`,
      file,
    );
  }
}

async function readJson(file: string, required: true): Promise<Record<string, unknown>>;
async function readJson(file: string, required: false): Promise<Record<string, unknown> | undefined>;
async function readJson(file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new CheckpointError(`cannot read it: ${(e as Error).message}`, file);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`not valid JSON: ${(e as Error).message}`, file);
  }
  if (!isObject(value)) throw new CheckpointError(`expected a JSON object, found ${summary(value)}`, file);
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  return value === undefined ? "missing" : JSON.stringify(value);
}

/** A tokenizer.json component in short: its type, and the types of its steps (`Sequence[Split, ByteLevel]`). */
function summary(value: unknown): string {
  if (!isObject(value)) return describe(value);
  const steps = [value.pretokenizers, value.normalizers, value.decoders, value.processors].find(Array.isArray);
  const type = typeof value.type === "string" ? value.type : JSON.stringify(value).slice(0, 80);
  return steps ? `${type}[${steps.map((s: unknown) => (isObject(s) && typeof s.type === "string" ? s.type : "?")).join(", ")}]` : type;
}
