// Text <-> token ids for Hugging Face folders (tokenizer.json) and GGUF files (tokenizer.ggml.*),
// chat templates, and incremental detokenization for streaming. GGUF vocabularies are turned
// into the equivalent tokenizer.json so one implementation (@huggingface/tokenizers) runs both.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { CheckpointError } from "./types.js";

export interface ChatMessage {
  role: string;
  content: string;
}

/** GPT-2's pre-tokenizer split, in the form tokenizer.json / llama.cpp use. */
export const GPT2_SPLIT_REGEX = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** GPT-2's bytes_to_unicode: byte -> the printable character that stands for it in vocabularies. */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const table: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : next++);
  }
  return table;
})();

/** End-of-turn tokens of common chat formats; they count as EOS when the chat template uses them. */
const END_OF_TURN_TOKENS = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>"];

/** GGUF token types (llama.cpp's llama_token_type). */
const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

interface TokenizerSettings {
  bosToken?: string;
  eosToken?: string;
  unkToken?: string;
  padToken?: string;
  addBos: boolean;
  addEos: boolean;
  chatTemplate?: string;
  /** Extra end-of-generation ids (generation_config.json, GGUF eot/eom ids). */
  extraEosIds?: number[];
}

/** The tokenizer of an opened checkpoint: its folder's tokenizer.json, or its GGUF metadata. */
export async function loadTokenizer(checkpoint: { format: "hf" | "gguf"; path: string; metadata: Map<string, unknown> }): Promise<Tokenizer> {
  if (checkpoint.format === "hf") return Tokenizer.fromHfDir(checkpoint.path);
  try {
    return Tokenizer.fromGgufMetadata(checkpoint.metadata);
  } catch (e) {
    if (e instanceof CheckpointError && e.file === undefined) throw new CheckpointError(e.message, checkpoint.path);
    throw e;
  }
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId?: number;
  /** The EOS token proper (what addEos appends). */
  readonly eosId?: number;
  /** Every id that ends generation: EOS, end-of-turn tokens the chat template uses, generation_config's. */
  readonly eosIds: number[];
  readonly chatTemplate?: string;
  /** Whether encode() puts BOS first / EOS last when asked for special tokens (add_bos_token / add_eos_token). */
  readonly addBos: boolean;
  readonly addEos: boolean;
  private readonly specialIds: Set<number>;
  private compiledTemplate?: Template;

  private constructor(
    private readonly hf: HfTokenizer,
    private readonly settings: TokenizerSettings,
    vocabSize: number,
  ) {
    this.vocabSize = vocabSize;
    this.chatTemplate = settings.chatTemplate;
    this.addBos = settings.addBos;
    this.addEos = settings.addEos;
    this.specialIds = new Set([...hf.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.bosId = settings.bosToken === undefined ? undefined : hf.token_to_id(settings.bosToken);
    this.eosId = settings.eosToken === undefined ? undefined : hf.token_to_id(settings.eosToken);
    const eos = new Set<number>();
    const add = (token: string | undefined) => {
      const id = token === undefined ? undefined : hf.token_to_id(token);
      if (id !== undefined) eos.add(id);
    };
    add(settings.eosToken);
    for (const id of settings.extraEosIds ?? []) eos.add(id);
    for (const token of END_OF_TURN_TOKENS) if (settings.chatTemplate?.includes(token)) add(token);
    this.eosIds = [...eos];
  }

  /** From a parsed tokenizer.json (and optionally tokenizer_config.json). */
  static fromTokenizerJson(json: object, config: Record<string, unknown> = {}, extraEosIds: number[] = []): Tokenizer {
    const postTemplate = templateProcessingSpecials(json);
    const bosToken = tokenContent(config.bos_token) ?? postTemplate.first;
    const eosToken = tokenContent(config.eos_token);
    const addBos = typeof config.add_bos_token === "boolean" ? config.add_bos_token : postTemplate.first !== undefined && postTemplate.first === bosToken;
    const addEos = typeof config.add_eos_token === "boolean" ? config.add_eos_token : postTemplate.last !== undefined && postTemplate.last === eosToken;
    const hf = new HfTokenizer(json, { ...config, clean_up_tokenization_spaces: false });
    return new Tokenizer(
      hf,
      {
        bosToken,
        eosToken,
        unkToken: tokenContent(config.unk_token),
        padToken: tokenContent(config.pad_token),
        addBos,
        addEos,
        chatTemplate: chatTemplateFromConfig(config.chat_template),
        extraEosIds,
      },
      vocabSizeOf(json),
    );
  }

  /** tokenizer.json plus, when present, tokenizer_config.json, chat_template.jinja and generation_config.json. */
  static async fromHfDir(dir: string): Promise<Tokenizer> {
    const readJson = async (name: string, required: boolean): Promise<Record<string, unknown> | undefined> => {
      let text: string;
      try {
        text = await readFile(join(dir, name), "utf8");
      } catch (e) {
        if (!required && (e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw new CheckpointError(`cannot read ${name}: ${(e as Error).message}`, dir);
      }
      try {
        return JSON.parse(text) as Record<string, unknown>;
      } catch (e) {
        throw new CheckpointError(`${name} is not valid JSON: ${(e as Error).message}`, dir);
      }
    };
    const json = (await readJson("tokenizer.json", true))!;
    const config = (await readJson("tokenizer_config.json", false)) ?? {};
    if (config.chat_template === undefined) {
      const template = await readFile(join(dir, "chat_template.jinja"), "utf8").catch((e: NodeJS.ErrnoException) => {
        if (e.code === "ENOENT") return undefined;
        throw new CheckpointError(`cannot read chat_template.jinja: ${e.message}`, dir);
      });
      if (template !== undefined) config.chat_template = template;
    }
    const generation = await readJson("generation_config.json", false);
    const generationEos = generation?.eos_token_id;
    const extraEos = (Array.isArray(generationEos) ? generationEos : [generationEos]).filter((x): x is number => typeof x === "number");
    try {
      return Tokenizer.fromTokenizerJson(json, config, extraEos);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      throw new CheckpointError(`unsupported tokenizer.json: ${(e as Error).message}`, dir);
    }
  }

  /** From GGUF metadata: "gpt2" (byte-level BPE) and "llama" (SentencePiece BPE) vocabularies. */
  static fromGgufMetadata(metadata: Map<string, unknown>): Tokenizer {
    const meta = new GgufMeta(metadata);
    const model = meta.string("tokenizer.ggml.model");
    const tokens = meta.array("tokenizer.ggml.tokens")?.map(String);
    if (!tokens) throw new CheckpointError("missing tokenizer.ggml.tokens");
    const types = meta.array("tokenizer.ggml.token_type")?.map(Number) ?? tokens.map(() => TokenType.NORMAL);
    const pre = meta.string("tokenizer.ggml.pre");

    let json: Record<string, unknown>;
    let defaultAddBos: boolean;
    let defaultIds: { bos?: number; eos?: number } = {};
    if (model === "gpt2") {
      const merges = meta.array("tokenizer.ggml.merges")?.map(String);
      if (!merges) throw new CheckpointError("missing tokenizer.ggml.merges for a gpt2 tokenizer");
      const split = GGUF_PRE_TOKENIZERS[pre ?? "default"];
      if (!split) {
        throw new CheckpointError(`unsupported pre-tokenizer '${pre}' (tokenizer.ggml.pre); supported: ${Object.keys(GGUF_PRE_TOKENIZERS).join(", ")}`);
      }
      json = byteLevelTokenizerJson({ tokens, merges, tokenTypes: types, splitRegexes: split.regexes, ignoreMerges: split.ignoreMerges });
      defaultAddBos = split.addBos ?? false;
    } else if (model === "llama") {
      const scores = meta.array("tokenizer.ggml.scores")?.map(Number);
      if (!scores) throw new CheckpointError("missing tokenizer.ggml.scores for a llama tokenizer");
      json = sentencePieceTokenizerJson({
        tokens,
        scores,
        tokenTypes: types,
        addSpacePrefix: meta.boolean("tokenizer.ggml.add_space_prefix") ?? true,
        unkId: meta.number("tokenizer.ggml.unknown_token_id"),
      });
      defaultAddBos = true;
      defaultIds = { bos: 1, eos: 2 };
    } else {
      throw new CheckpointError(`unsupported tokenizer model '${model}' (tokenizer.ggml.model); supported: gpt2, llama`);
    }

    const tokenAt = (id: number | undefined) => (id !== undefined && id >= 0 && id < tokens.length ? tokens[id] : undefined);
    const extraEos = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
      .map((key) => meta.number(key))
      .filter((id): id is number => id !== undefined && tokenAt(id) !== undefined);
    return new Tokenizer(
      new HfTokenizer(json, { clean_up_tokenization_spaces: false }),
      {
        bosToken: tokenAt(meta.number("tokenizer.ggml.bos_token_id") ?? defaultIds.bos),
        eosToken: tokenAt(meta.number("tokenizer.ggml.eos_token_id") ?? defaultIds.eos),
        unkToken: tokenAt(meta.number("tokenizer.ggml.unknown_token_id")),
        padToken: tokenAt(meta.number("tokenizer.ggml.padding_token_id")),
        addBos: meta.boolean("tokenizer.ggml.add_bos_token") ?? defaultAddBos,
        addEos: meta.boolean("tokenizer.ggml.add_eos_token") ?? false,
        chatTemplate: meta.string("tokenizer.chat_template"),
        extraEosIds: extraEos,
      },
      tokens.length,
    );
  }

  /** Special tokens written in `text` become their ids; BOS/EOS are added when addSpecial and the tokenizer asks for them. */
  encode(text: string, opts: { addSpecial?: boolean } = {}): number[] {
    const ids = text === "" ? [] : this.hf.encode(text, { add_special_tokens: false }).ids;
    if (opts.addSpecial ?? true) {
      if (this.settings.addBos && this.bosId !== undefined) ids.unshift(this.bosId);
      if (this.settings.addEos && this.eosId !== undefined) ids.push(this.eosId);
    }
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    if (ids.length === 0) return "";
    // Never "clean up" spaces before punctuation: decode must invert encode, also in pieces.
    return this.hf.decode([...ids], { skip_special_tokens: opts.skipSpecial ?? false, clean_up_tokenization_spaces: false });
  }

  /** The token as the vocabulary spells it (e.g. "Ġthe", "▁the", "<0x0A>"). */
  tokenText(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  tokenId(text: string): number | undefined {
    return this.hf.token_to_id(text);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (this.chatTemplate === undefined) throw new Error("this model has no chat template");
    this.compiledTemplate ??= new Template(this.chatTemplate);
    const { bosToken, eosToken, unkToken, padToken } = this.settings;
    return this.compiledTemplate.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: bosToken ?? "",
      eos_token: eosToken ?? "",
      unk_token: unkToken ?? "",
      pad_token: padToken ?? "",
    });
  }

  streamDecoder(opts: { skipSpecial?: boolean; context?: readonly number[] } = {}): StreamDecoder {
    return new StreamDecoder(this, opts);
  }
}

/**
 * Incremental detokenization: push ids one at a time, get only the text that is now final.
 * Text is decoded over a sliding window starting one emitted token back, so decoders that
 * depend on neighbours (SentencePiece's leading space) give the same text as a full decode;
 * a window that ends in an incomplete UTF-8 sequence (U+FFFD at the end) is held back.
 */
export class StreamDecoder {
  private readonly ids: number[];
  private prefixOffset = 0;
  private readOffset: number;
  private readonly skipSpecial: boolean;

  /** `context`: ids already shown (e.g. the prompt's tail), so the first piece keeps its leading space. */
  constructor(
    private readonly tokenizer: Tokenizer,
    opts: { skipSpecial?: boolean; context?: readonly number[] } = {},
  ) {
    this.skipSpecial = opts.skipSpecial ?? false;
    this.ids = [...(opts.context ?? []).slice(-4)];
    this.readOffset = this.ids.length;
  }

  push(id: number): string {
    this.ids.push(id);
    const text = this.pending();
    if (text.length === 0 || text.endsWith("\uFFFD")) return "";
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    if (this.prefixOffset > 64) {
      this.ids.splice(0, this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
    return text;
  }

  /** Whatever is still held back (an incomplete character comes out as U+FFFD). */
  flush(): string {
    const text = this.pending();
    this.prefixOffset = this.readOffset = this.ids.length;
    return text;
  }

  private pending(): string {
    const decode = (ids: number[]) => this.tokenizer.decode(ids, { skipSpecial: this.skipSpecial });
    const prefix = decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = decode(this.ids.slice(this.prefixOffset));
    return full.startsWith(prefix) ? full.slice(prefix.length) : full;
  }
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json builders

interface PreTokenizerSpec {
  regexes: string[];
  ignoreMerges?: boolean;
  addBos?: boolean;
}

/** Llama 3's split as its tokenizer.json writes it (Oniguruma syntax, with a `(?i:...)` group). */
export const LLAMA3_HF_SPLIT_REGEX = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
/** Qwen2's split (digits one by one) as its tokenizer.json writes it. */
export const QWEN2_HF_SPLIT_REGEX = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
/** The same splits in JavaScript syntax, exactly as llama.cpp's llama-vocab.cpp spells them. */
export const LLAMA3_SPLIT_REGEX = expandCaseInsensitiveGroups(LLAMA3_HF_SPLIT_REGEX);
export const QWEN2_SPLIT_REGEX = expandCaseInsensitiveGroups(QWEN2_HF_SPLIT_REGEX);

/**
 * Rewrites Oniguruma's inline case-insensitive groups, which JavaScript (Node 20) lacks, into
 * plain ones: `(?i:'s|'ll)` becomes `(?:'[sS]|'[lL][lL])`. Only groups of literal text and `|`
 * are supported (all that tokenizer.json splits use); anything else inside one is an error
 * rather than a silently different regex.
 */
export function expandCaseInsensitiveGroups(regex: string): string {
  let out = "";
  let i = 0;
  for (;;) {
    const start = regex.indexOf("(?i:", i);
    if (start < 0) return out + regex.slice(i);
    const end = regex.indexOf(")", start);
    const body = end < 0 ? undefined : regex.slice(start + 4, end);
    if (body === undefined || /[\\[\](){}.*+?^$]/.test(body)) {
      throw new Error(`cannot rewrite the (?i:...) group at offset ${start} of ${JSON.stringify(regex)}: only literal text and '|' are supported inside it`);
    }
    const folded = body.replace(/[A-Za-z]/g, (c) => `[${c.toLowerCase()}${c.toUpperCase()}]`);
    out += regex.slice(i, start) + "(?:" + folded + ")";
    i = end + 1;
  }
}

/** llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) and the splits they stand for (llama-vocab.cpp). */
const GGUF_PRE_TOKENIZERS: Record<string, PreTokenizerSpec> = (() => {
  const gpt2: PreTokenizerSpec = { regexes: [GPT2_SPLIT_REGEX] };
  const llama3: PreTokenizerSpec = { regexes: [LLAMA3_SPLIT_REGEX], ignoreMerges: true, addBos: true };
  const qwen2: PreTokenizerSpec = { regexes: [QWEN2_SPLIT_REGEX] };
  const starcoder: PreTokenizerSpec = { regexes: [String.raw`\p{N}`, GPT2_SPLIT_REGEX] };
  return {
    default: {
      regexes: [String.raw`[\p{P}\$\+<=>\^~\|]+`, GPT2_SPLIT_REGEX, String.raw`\p{N}+`, "[0-9][0-9][0-9]"],
    },
    "gpt-2": gpt2,
    "phi-2": gpt2,
    mpt: gpt2,
    olmo: gpt2,
    jais: gpt2,
    llama3,
    "llama-v3": llama3,
    "llama-bpe": llama3,
    falcon3: llama3,
    pixtral: llama3,
    "smaug-bpe": { regexes: [LLAMA3_SPLIT_REGEX] },
    dbrx: { regexes: [LLAMA3_SPLIT_REGEX] },
    qwen2,
    "deepseek-r1-qwen": qwen2,
    stablelm2: qwen2,
    starcoder,
    refact: starcoder,
    smollm: starcoder,
  };
})();

/**
 * tokenizer.json for a byte-level BPE vocabulary (GPT-2 style). Control tokens become special
 * added tokens, user-defined ones plain added tokens. Without `splitRegexes` the standard
 * ByteLevel pre-tokenizer (GPT-2 split) is used; with them, Split steps followed by ByteLevel.
 */
export function byteLevelTokenizerJson(v: {
  tokens: readonly string[];
  merges: readonly string[];
  tokenTypes?: readonly number[];
  splitRegexes?: readonly string[];
  ignoreMerges?: boolean;
}): Record<string, unknown> {
  const byteLevel = (useRegex: boolean) => ({ type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
  const preTokenizer = v.splitRegexes
    ? {
        type: "Sequence",
        pretokenizers: [
          ...v.splitRegexes.map((regex) => ({ type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false })),
          byteLevel(false),
        ],
      }
    : byteLevel(true);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens(v.tokens, v.tokenTypes),
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: byteLevel(true),
    decoder: byteLevel(true),
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: v.ignoreMerges ?? false,
      vocab: vocabObject(v.tokens),
      merges: firstOccurrences(v.merges),
    },
  };
}

/**
 * tokenizer.json for a SentencePiece BPE vocabulary with scores and <0xNN> byte tokens, the way
 * Llama/Mistral tokenizer.json files are laid out (legacy Prepend+Replace normalizer, so a space
 * is prepended after every special token, as llama.cpp does). Merges are derived from the scores:
 * every split of a normal token into two vocabulary pieces, ranked by the token's score.
 */
export function sentencePieceTokenizerJson(v: {
  tokens: readonly string[];
  scores: readonly number[];
  tokenTypes: readonly number[];
  addSpacePrefix: boolean;
  unkId?: number;
}): Record<string, unknown> {
  const ids = new Map<string, number>();
  v.tokens.forEach((t, id) => {
    if (!ids.has(t)) ids.set(t, id);
  });
  const isPiece = (id: number | undefined) => id !== undefined && (v.tokenTypes[id] ?? TokenType.NORMAL) === TokenType.NORMAL;
  const merges: { left: string; right: string; score: number }[] = [];
  v.tokens.forEach((token, id) => {
    if (!isPiece(id)) return;
    const chars = Array.from(token);
    const local: { left: string; right: string; score: number; l: number; r: number }[] = [];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join("");
      const right = chars.slice(i).join("");
      const l = ids.get(left);
      const r = ids.get(right);
      if (isPiece(l) && isPiece(r)) local.push({ left, right, score: v.scores[id] ?? 0, l: l!, r: r! });
    }
    local.sort((a, b) => a.l - b.l || a.r - b.r);
    merges.push(...local);
  });
  merges.sort((a, b) => b.score - a.score); // stable: ties keep vocabulary order
  const unkId = v.unkId ?? v.tokenTypes.indexOf(TokenType.UNKNOWN);
  const replace = (from: string, to: string) => ({ type: "Replace", pattern: { String: from }, content: to });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens(v.tokens, v.tokenTypes),
    normalizer: v.addSpacePrefix ? { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, replace(" ", "▁")] } : replace(" ", "▁"),
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        replace("▁", " "),
        { type: "ByteFallback" },
        { type: "Fuse" },
        ...(v.addSpacePrefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unkId >= 0 ? v.tokens[unkId] : null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabObject(v.tokens),
      merges: firstOccurrences(merges.map((m) => `${m.left} ${m.right}`)),
    },
  };
}

function addedTokens(tokens: readonly string[], types: readonly number[] | undefined) {
  const added: object[] = [];
  types?.forEach((type, id) => {
    if (type !== TokenType.CONTROL && type !== TokenType.USER_DEFINED && type !== TokenType.UNKNOWN) return;
    added.push({
      id,
      content: tokens[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: type !== TokenType.USER_DEFINED,
    });
  });
  return added;
}

/** token -> id without prototype surprises (a vocabulary may well contain "__proto__"). */
function vocabObject(tokens: readonly string[]): Record<string, number> {
  const vocab: Record<string, number> = Object.create(null);
  tokens.forEach((t, id) => {
    if (!(t in vocab)) vocab[t] = id;
  });
  return vocab;
}

/** llama.cpp keeps the first rank of a repeated merge; tokenizers.js would keep the last. */
function firstOccurrences(merges: readonly string[]): string[] {
  return [...new Set(merges)];
}

// ---------------------------------------------------------------------------------------------
// Reading tokenizer.json / tokenizer_config.json / GGUF metadata

/** The text of a special-token setting: a string, or an AddedToken-like { content }. */
export function tokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return undefined;
}

/** chat_template is a string, or a list of named templates of which "default" is the one to use. */
function chatTemplateFromConfig(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value as { name?: string; template?: string }[];
    return (named.find((t) => t.name === "default") ?? named[0])?.template;
  }
  return undefined;
}

/** The special tokens a TemplateProcessing post-processor puts before and after a single sequence. */
function templateProcessingSpecials(json: object): { first?: string; last?: string } {
  const find = (p: unknown): { single?: unknown[] } | undefined => {
    if (!p || typeof p !== "object") return undefined;
    const proc = p as { type?: string; processors?: unknown[]; single?: unknown[] };
    if (proc.type === "TemplateProcessing") return proc;
    if (proc.type === "Sequence") return proc.processors?.map(find).find((x) => x !== undefined);
    return undefined;
  };
  const single = find((json as { post_processor?: unknown }).post_processor)?.single;
  if (!single || single.length === 0) return {};
  const special = (item: unknown) => (item as { SpecialToken?: { id?: string } }).SpecialToken?.id;
  return { first: special(single[0]), last: single.length > 1 ? special(single[single.length - 1]) : undefined };
}

function vocabSizeOf(json: object): number {
  const j = json as { model?: { vocab?: Record<string, number> | [string, number][] }; added_tokens?: { id: number }[] };
  let size = 0;
  const vocab = j.model?.vocab;
  if (Array.isArray(vocab))
    size = vocab.length; // Unigram: [piece, score][]
  else if (vocab) for (const id of Object.values(vocab)) size = Math.max(size, id + 1);
  for (const t of j.added_tokens ?? []) size = Math.max(size, t.id + 1);
  return size;
}

class GgufMeta {
  constructor(private readonly meta: Map<string, unknown>) {}

  string(key: string): string | undefined {
    const v = this.meta.get(key);
    return typeof v === "string" ? v : undefined;
  }

  number(key: string): number | undefined {
    const v = this.meta.get(key);
    return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
  }

  boolean(key: string): boolean | undefined {
    const v = this.meta.get(key);
    return typeof v === "boolean" ? v : undefined;
  }

  array(key: string): unknown[] | undefined {
    const v = this.meta.get(key);
    if (Array.isArray(v)) return v;
    if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return Array.from(v as unknown as ArrayLike<unknown>);
    return undefined;
  }
}
