// Writes small random-weight checkpoints in real formats (Hugging Face folders and GGUF files),
// the same weights in both, for tests and benchmarks. Weights derive from (seed, tensor name),
// so each writer generates them on demand without holding a whole model.
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ggufTokenizerMetadata, tokenizerJsonFromBpe, trainByteLevelBpe, type BpeVocab } from "./bpe-train.js";
import { expectedShapes } from "./config.js";
import { gguf } from "./gguf.js";
import { exportGguf, type GgufExportType } from "./gguf-export.js";
import { quantize } from "./quant.js";
import { writeSafetensorsSharded } from "./safetensors.js";
import { LLAMA3_HF_SPLIT_REGEX, QWEN2_HF_SPLIT_REGEX } from "./tokenizer.js";
import type { ModelConfig, RopeScaling } from "./types.js";
import { transpose } from "./transpose.js";

export type FixtureArchitecture = "llama" | "mistral" | "qwen2" | "gpt2";

export interface TestModelSpec {
  architecture: FixtureArchitecture;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings?: boolean;
  ropeTheta?: number;
  ropeScaling?: RopeScaling;
  seed?: number;
}

export const PRESETS: Record<string, TestModelSpec> = {
  "tiny-llama": {
    architecture: "llama",
    vocabSize: 512,
    hiddenSize: 128,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 2,
    intermediateSize: 256,
    maxPositionEmbeddings: 512,
  },
  "tiny-llama3": {
    architecture: "llama",
    vocabSize: 512,
    hiddenSize: 128,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 1,
    intermediateSize: 384,
    maxPositionEmbeddings: 2048,
    ropeTheta: 500000,
    ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    tieWordEmbeddings: true,
  },
  "tiny-qwen2": {
    architecture: "qwen2",
    vocabSize: 512,
    hiddenSize: 128,
    numLayers: 3,
    numHeads: 4,
    numKvHeads: 2,
    intermediateSize: 256,
    maxPositionEmbeddings: 512,
    ropeTheta: 1000000,
    tieWordEmbeddings: true,
  },
  "tiny-gpt2": {
    architecture: "gpt2",
    vocabSize: 512,
    hiddenSize: 128,
    numLayers: 3,
    numHeads: 4,
    numKvHeads: 4,
    intermediateSize: 512,
    maxPositionEmbeddings: 256,
  },
  /** ≈0.6B parameters, Llama-shaped: the engine benchmark's model. */
  "bench-0.6b": {
    architecture: "llama",
    vocabSize: 32000,
    hiddenSize: 1536,
    numLayers: 20,
    numHeads: 24,
    numKvHeads: 8,
    intermediateSize: 4096,
    maxPositionEmbeddings: 4096,
  },
};

const SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];
const CHAT_TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/** The ModelConfig a spec describes (Hugging Face layout). */
export function fixtureConfig(spec: TestModelSpec): ModelConfig {
  const llama = spec.architecture !== "gpt2";
  const vocab = fixtureVocab(spec);
  return {
    architecture: llama ? "llama" : "gpt2",
    vocabSize: spec.vocabSize,
    hiddenSize: spec.hiddenSize,
    numLayers: spec.numLayers,
    numHeads: spec.numHeads,
    numKvHeads: llama ? spec.numKvHeads : spec.numHeads,
    headDim: spec.hiddenSize / spec.numHeads,
    intermediateSize: spec.intermediateSize,
    normEps: 1e-5,
    maxPositionEmbeddings: spec.maxPositionEmbeddings,
    tieWordEmbeddings: llama ? (spec.tieWordEmbeddings ?? false) : true,
    qkvBias: spec.architecture !== "llama" && spec.architecture !== "mistral",
    ropeTheta: llama ? (spec.ropeTheta ?? 10000) : 0,
    ropeScaling: spec.ropeScaling,
    ropeInterleaved: false,
    bosTokenId: vocab.specialTokens.find((s) => s.token === "<s>")!.id,
    eosTokenIds: [vocab.specialTokens.find((s) => s.token === "</s>")!.id],
  };
}

const vocabCache = new Map<string, BpeVocab>();
/** The spec's vocabulary; the specials come last, so their ids do not depend on the training text. */
function fixtureVocab(spec: TestModelSpec, trainingText?: string): BpeVocab {
  const key = `${spec.vocabSize}\0${trainingText ?? ""}`;
  let v = vocabCache.get(key);
  if (!v) {
    v = trainByteLevelBpe(trainingText, { vocabSize: spec.vocabSize, specialTokens: SPECIALS });
    vocabCache.set(key, v);
  }
  return v;
}

/** Deterministic weights of one tensor, scaled so activations and logits stay informative. */
export function fixtureTensor(spec: TestModelSpec, name: string, shape: number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const rng = uniformRng(hashSeed(spec.seed ?? 0, name));
  const out = new Float32Array(n);
  const isNorm = /norm\.weight$/.test(name);
  const isBias = name.endsWith(".bias");
  let std: number;
  if (isNorm) std = 0.1;
  else if (isBias) std = 0.05;
  // A head of std 3/√H gives logits with a spread of a few units. A tied embedding is also the
  // head, but smaller, or the residual's own token would dominate and greedy text would repeat.
  else if (name.startsWith("output.")) std = 3 / Math.sqrt(shape[1]!);
  else if (name.startsWith("token_embd")) std = (isTied(spec) ? 1.2 : 3) / Math.sqrt(shape[1]!);
  else if (name.startsWith("position_embd")) std = 0.5 / Math.sqrt(shape[1]!);
  else std = 1 / Math.sqrt(shape[1]!);
  const a = std * Math.sqrt(3);
  for (let i = 0; i < n; i++) out[i] = (isNorm ? 1 : 0) + a * (2 * rng() - 1);
  return out;
}

function isTied(spec: TestModelSpec): boolean {
  return spec.architecture === "gpt2" || Boolean(spec.tieWordEmbeddings);
}

/** Tensor names and shapes in canonical (llama.cpp) naming, [out, in] for projections. */
function fixtureShapes(spec: TestModelSpec): Map<string, number[]> {
  return expectedShapes(fixtureConfig(spec));
}

// ---------------------------------------------------------------- Hugging Face folder

/**
 * How a Hugging Face folder's tokenizer is laid out (the vocabulary is the same in each):
 * - "gpt2": a ByteLevel pre-tokenizer (GPT-2's split), add_bos_token as the architecture has it;
 * - "qwen2": NFC normalizer, Sequence[Split(Qwen2's regex), ByteLevel], no BOS token
 *   (config.json's bos_token_id only), pad_token "</s>";
 * - "llama3": Sequence[Split(Llama 3's regex), ByteLevel], ignore_merges, and BOS added by a
 *   TemplateProcessing post-processor rather than add_bos_token.
 */
export type HfTokenizerStyle = "gpt2" | "qwen2" | "llama3";

export interface HfWriteOptions {
  dtype?: "F32" | "F16" | "BF16";
  /** Shard size limit; default one file. */
  maxShardBytes?: number;
  /** Tokenizer layout, default "gpt2". */
  tokenizer?: HfTokenizerStyle;
  /** Replaces the Split regex of the "qwen2" and "llama3" layouts (e.g. with one no converter knows). */
  splitRegex?: string;
  /** Trains the vocabulary on this text instead of the default (same size, same special-token ids). */
  trainingText?: string;
}

export async function writeHfTestModel(dir: string, spec: TestModelSpec, opts: HfWriteOptions = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  const dtype = opts.dtype ?? "F32";
  const tensors = [...fixtureShapes(spec)].map(([name, shape]) => {
    const hf = hfName(spec, name);
    const values = fixtureTensor(spec, name, shape);
    // Hugging Face GPT-2 stores Conv1D weights as [in, out].
    const [stored, storedShape] = hf.transposed ? [transpose(values, shape[0]!, shape[1]!), [shape[1]!, shape[0]!]] : [values, shape];
    return { name: hf.name, dtype, shape: storedShape, bytes: quantize(stored, dtype) };
  });
  await writeSafetensorsSharded(dir, tensors, opts.maxShardBytes ?? Number.MAX_SAFE_INTEGER);
  const config = fixtureConfig(spec);
  const vocab = fixtureVocab(spec, opts.trainingText);
  await writeFile(join(dir, "config.json"), JSON.stringify(hfConfigJson(spec, config, dtype), null, 2));
  const tokenizer = hfTokenizerFiles(spec, vocab, opts);
  await writeFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizer.json));
  await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify(tokenizer.config, null, 2));
}

function hfTokenizerFiles(spec: TestModelSpec, vocab: BpeVocab, opts: HfWriteOptions): { json: Record<string, unknown>; config: Record<string, unknown> } {
  const common = { eos_token: "</s>", chat_template: CHAT_TEMPLATE, model_max_length: spec.maxPositionEmbeddings };
  const style = opts.tokenizer ?? "gpt2";
  if (style === "gpt2") {
    const config = {
      bos_token: "<s>",
      eos_token: "</s>",
      add_bos_token: spec.architecture !== "gpt2",
      chat_template: CHAT_TEMPLATE,
      model_max_length: spec.maxPositionEmbeddings,
    };
    return { json: tokenizerJsonFromBpe(vocab), config };
  }
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  if (style === "qwen2") {
    return {
      json: {
        ...tokenizerJsonFromBpe(vocab, { splitRegexes: [opts.splitRegex ?? QWEN2_HF_SPLIT_REGEX] }),
        normalizer: { type: "NFC" },
        post_processor: byteLevel,
      },
      config: { bos_token: null, pad_token: "</s>", add_bos_token: false, ...common },
    };
  }
  const bos = vocab.specialTokens.find((s) => s.token === "<s>");
  if (!bos) throw new Error("the fixture vocabulary has no <s> token");
  const special = { SpecialToken: { id: "<s>", type_id: 0 } };
  return {
    json: {
      ...tokenizerJsonFromBpe(vocab, { splitRegexes: [opts.splitRegex ?? LLAMA3_HF_SPLIT_REGEX], ignoreMerges: true }),
      post_processor: {
        type: "Sequence",
        processors: [
          { ...byteLevel, add_prefix_space: true, use_regex: true },
          {
            type: "TemplateProcessing",
            single: [special, { Sequence: { id: "A", type_id: 0 } }],
            pair: [special, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<s>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
            special_tokens: { "<s>": { id: "<s>", ids: [bos.id], tokens: ["<s>"] } },
          },
        ],
      },
    },
    config: { bos_token: "<s>", ...common },
  };
}

function hfConfigJson(spec: TestModelSpec, c: ModelConfig, dtype: string): Record<string, unknown> {
  const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype];
  if (spec.architecture === "gpt2") {
    return {
      architectures: ["GPT2LMHeadModel"],
      model_type: "gpt2",
      vocab_size: c.vocabSize,
      n_embd: c.hiddenSize,
      n_layer: c.numLayers,
      n_head: c.numHeads,
      n_inner: c.intermediateSize,
      n_positions: c.maxPositionEmbeddings,
      n_ctx: c.maxPositionEmbeddings,
      layer_norm_epsilon: c.normEps,
      activation_function: "gelu_new",
      bos_token_id: c.bosTokenId,
      eos_token_id: c.eosTokenIds[0],
      torch_dtype: torchDtype,
    };
  }
  const cls = { llama: "LlamaForCausalLM", mistral: "MistralForCausalLM", qwen2: "Qwen2ForCausalLM" }[spec.architecture];
  return {
    architectures: [cls],
    model_type: spec.architecture,
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    rope_scaling: c.ropeScaling
      ? {
          rope_type: "llama3",
          factor: c.ropeScaling.factor,
          low_freq_factor: c.ropeScaling.lowFreqFactor,
          high_freq_factor: c.ropeScaling.highFreqFactor,
          original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
        }
      : null,
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: false,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds[0],
    torch_dtype: torchDtype,
  };
}

function hfName(spec: TestModelSpec, canonical: string): { name: string; transposed: boolean } {
  const m = /^blk\.(\d+)\.(.+)$/.exec(canonical);
  if (spec.architecture === "gpt2") {
    const top: Record<string, string> = {
      "token_embd.weight": "wte.weight",
      "position_embd.weight": "wpe.weight",
      "output_norm.weight": "ln_f.weight",
      "output_norm.bias": "ln_f.bias",
    };
    if (!m) return { name: `transformer.${top[canonical]}`, transposed: false };
    const [part, kind] = splitLast(m[2]!);
    const local: Record<string, string> = {
      attn_norm: "ln_1",
      ffn_norm: "ln_2",
      attn_qkv: "attn.c_attn",
      attn_output: "attn.c_proj",
      ffn_up: "mlp.c_fc",
      ffn_down: "mlp.c_proj",
    };
    const transposed = kind === "weight" && !part.endsWith("norm");
    return { name: `transformer.h.${m[1]}.${local[part]}.${kind}`, transposed };
  }
  const top: Record<string, string> = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
  };
  if (!m) return { name: top[canonical]!, transposed: false };
  const [part, kind] = splitLast(m[2]!);
  const local: Record<string, string> = {
    attn_norm: "input_layernorm",
    ffn_norm: "post_attention_layernorm",
    attn_q: "self_attn.q_proj",
    attn_k: "self_attn.k_proj",
    attn_v: "self_attn.v_proj",
    attn_output: "self_attn.o_proj",
    ffn_gate: "mlp.gate_proj",
    ffn_up: "mlp.up_proj",
    ffn_down: "mlp.down_proj",
  };
  return { name: `model.layers.${m[1]}.${local[part]}.${kind}`, transposed: false };
}

function splitLast(s: string): [string, string] {
  const i = s.lastIndexOf(".");
  return [s.slice(0, i), s.slice(i + 1)];
}

// ---------------------------------------------------------------- GGUF file

export interface GgufWriteOptions {
  dtype?: GgufExportType;
}

export async function writeGgufTestModel(file: string, spec: TestModelSpec, opts: GgufWriteOptions = {}): Promise<void> {
  const c = fixtureConfig(spec);
  const vocab = fixtureVocab(spec);
  await exportGguf(file, {
    config: c,
    architecture: spec.architecture === "mistral" ? "llama" : spec.architecture,
    name: `tessera-fixture-${spec.architecture}`,
    dtype: opts.dtype ?? "F32",
    read: (name) => fixtureTensor(spec, name, expectedShapes(c).get(name)!),
    extraMetadata: [
      ...ggufTokenizerMetadata(vocab, { bosId: c.bosTokenId!, eosId: c.eosTokenIds[0]!, addBos: spec.architecture !== "gpt2" }),
      ["tokenizer.chat_template", gguf.str(CHAT_TEMPLATE)],
    ],
  });
}

function hashSeed(seed: number, name: string): number {
  let h = (2166136261 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0;
  return h;
}

/** xorshift32: fast and good enough for weights; returns uniform [0, 1). */
function uniformRng(seed: number): () => number {
  let s = seed || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}
