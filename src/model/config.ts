// Model configs from Hugging Face config.json and from GGUF metadata, into one ModelConfig.
import { CheckpointError, type ModelConfig, type RopeScaling } from "./types.js";

const LLAMA_FAMILY = new Set(["llama", "mistral", "qwen2"]);

type Json = Record<string, unknown>;

export function configFromHf(json: Json, file: string): ModelConfig {
  const modelType = String(json.model_type ?? "");
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new CheckpointError(`config key '${key}' must be a number, found ${JSON.stringify(json[key])}`, file);
    }
    return v;
  };
  const eos = json.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.map(Number) : typeof eos === "number" ? [eos] : [];
  const bosTokenId = typeof json.bos_token_id === "number" ? json.bos_token_id : undefined;

  if (LLAMA_FAMILY.has(modelType)) {
    const numHeads = num("num_attention_heads");
    const hiddenSize = num("hidden_size");
    return validate(
      {
        architecture: "llama",
        vocabSize: num("vocab_size"),
        hiddenSize,
        numLayers: num("num_hidden_layers"),
        numHeads,
        numKvHeads: num("num_key_value_heads", numHeads),
        headDim: num("head_dim", hiddenSize / numHeads),
        intermediateSize: num("intermediate_size"),
        normEps: num("rms_norm_eps", 1e-6),
        maxPositionEmbeddings: num("max_position_embeddings", 4096),
        tieWordEmbeddings: Boolean(json.tie_word_embeddings ?? false),
        qkvBias: modelType === "qwen2" || Boolean(json.attention_bias),
        ropeTheta: num("rope_theta", 10000),
        ropeScaling: ropeScalingFromHf(json.rope_scaling, file),
        ropeInterleaved: false,
        bosTokenId,
        eosTokenIds,
      },
      file,
    );
  }
  if (modelType === "gpt2") {
    const hiddenSize = num("n_embd");
    const numHeads = num("n_head");
    return validate(
      {
        architecture: "gpt2",
        vocabSize: num("vocab_size"),
        hiddenSize,
        numLayers: num("n_layer"),
        numHeads,
        numKvHeads: numHeads,
        headDim: hiddenSize / numHeads,
        intermediateSize: typeof json.n_inner === "number" ? json.n_inner : 4 * hiddenSize,
        normEps: num("layer_norm_epsilon", 1e-5),
        maxPositionEmbeddings: num("n_positions", 1024),
        tieWordEmbeddings: true,
        qkvBias: true,
        ropeTheta: 0,
        ropeInterleaved: false,
        bosTokenId,
        eosTokenIds,
      },
      file,
    );
  }
  throw new CheckpointError(`unknown architecture '${modelType}' (model_type); supported: llama, mistral, qwen2, gpt2`, file);
}

function ropeScalingFromHf(raw: unknown, file: string): RopeScaling | undefined {
  if (raw == null) return undefined;
  const r = raw as Json;
  const type = String(r.rope_type ?? r.type ?? "");
  if (type === "default") return undefined;
  if (type !== "llama3") throw new CheckpointError(`unsupported rope_scaling type '${type}' (supported: llama3)`, file);
  return {
    type: "llama3",
    factor: Number(r.factor),
    lowFreqFactor: Number(r.low_freq_factor),
    highFreqFactor: Number(r.high_freq_factor),
    originalMaxPositionEmbeddings: Number(r.original_max_position_embeddings),
  };
}

/** GGUF architectures and the key prefix their hyperparameters use. */
const GGUF_ARCHS: Record<string, ModelConfig["architecture"]> = {
  llama: "llama",
  qwen2: "llama",
  gpt2: "gpt2",
};

export function configFromGguf(meta: Map<string, unknown>, file: string, tensorNames: Set<string>): ModelConfig {
  const arch = String(meta.get("general.architecture") ?? "");
  const family = GGUF_ARCHS[arch];
  if (!family) {
    throw new CheckpointError(`unknown architecture '${arch}' (general.architecture); supported: ${Object.keys(GGUF_ARCHS).join(", ")}`, file);
  }
  const num = (key: string, fallback?: number): number => {
    const v = meta.get(`${arch}.${key}`) ?? fallback;
    const n = typeof v === "bigint" ? Number(v) : v;
    if (typeof n !== "number" || !Number.isFinite(n)) {
      throw new CheckpointError(`metadata key '${arch}.${key}' must be a number, found ${String(v)}`, file);
    }
    return n;
  };
  const tokenCount = (meta.get("tokenizer.ggml.tokens") as unknown[] | undefined)?.length;
  const hiddenSize = num("embedding_length");
  const numHeads = num("attention.head_count");
  const optionalId = (key: string) => {
    const v = meta.get(key);
    return v === undefined ? undefined : Number(v);
  };
  const eos = optionalId("tokenizer.ggml.eos_token_id");
  const eot = optionalId("tokenizer.ggml.eot_token_id");
  const common = {
    vocabSize: num("vocab_size", tokenCount),
    hiddenSize,
    numLayers: num("block_count"),
    numHeads,
    numKvHeads: num("attention.head_count_kv", numHeads),
    headDim: num("attention.key_length", hiddenSize / numHeads),
    intermediateSize: num("feed_forward_length"),
    maxPositionEmbeddings: num("context_length", 4096),
    tieWordEmbeddings: !tensorNames.has("output.weight"),
    bosTokenId: optionalId("tokenizer.ggml.bos_token_id"),
    eosTokenIds: [...new Set([eos, eot].filter((x): x is number => x !== undefined))],
  };
  if (family === "gpt2") {
    return validate(
      {
        ...common,
        architecture: "gpt2",
        normEps: num("attention.layer_norm_epsilon", 1e-5),
        qkvBias: true,
        ropeTheta: 0,
        ropeInterleaved: false,
      },
      file,
    );
  }
  return validate(
    {
      ...common,
      architecture: "llama",
      normEps: num("attention.layer_norm_rms_epsilon", 1e-6),
      qkvBias: tensorNames.has("blk.0.attn_q.bias"),
      ropeTheta: num("rope.freq_base", 10000),
      // llama.cpp's converter permutes q/k of "llama" checkpoints into adjacent rotary pairs;
      // qwen2 keeps the Hugging Face half-rotation layout (NEOX rope in llama.cpp terms).
      ropeInterleaved: arch === "llama",
    },
    file,
  );
}

function validate(c: ModelConfig, file: string): ModelConfig {
  const positiveInts: (keyof ModelConfig)[] = ["vocabSize", "hiddenSize", "numLayers", "numHeads", "numKvHeads", "headDim", "intermediateSize"];
  for (const key of positiveInts) {
    const v = c[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new CheckpointError(`config ${key} must be a positive integer, found ${String(v)}`, file);
    }
  }
  if (c.numHeads % c.numKvHeads !== 0) {
    throw new CheckpointError(`num_heads (${c.numHeads}) must be a multiple of num_kv_heads (${c.numKvHeads})`, file);
  }
  if (c.architecture === "llama" && c.headDim % 16 !== 0) {
    throw new CheckpointError(`head_dim must be a multiple of 16 for rotary attention, found ${c.headDim}`, file);
  }
  if (c.architecture === "gpt2" && c.headDim % 8 !== 0) {
    throw new CheckpointError(`head_dim must be a multiple of 8, found ${c.headDim}`, file);
  }
  return c;
}

/** The shape (row-major, [out, in] for projections) every tensor of a config must have. */
export function expectedShapes(c: ModelConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const H = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  shapes.set("token_embd.weight", [c.vocabSize, H]);
  shapes.set("output_norm.weight", [H]);
  if (!c.tieWordEmbeddings) shapes.set("output.weight", [c.vocabSize, H]);
  if (c.architecture === "gpt2") {
    shapes.set("position_embd.weight", [c.maxPositionEmbeddings, H]);
    shapes.set("output_norm.bias", [H]);
  }
  for (let i = 0; i < c.numLayers; i++) {
    const b = `blk.${i}`;
    shapes.set(`${b}.attn_norm.weight`, [H]);
    shapes.set(`${b}.ffn_norm.weight`, [H]);
    shapes.set(`${b}.attn_output.weight`, [H, q]);
    shapes.set(`${b}.ffn_up.weight`, [c.intermediateSize, H]);
    shapes.set(`${b}.ffn_down.weight`, [H, c.intermediateSize]);
    if (c.architecture === "llama") {
      shapes.set(`${b}.attn_q.weight`, [q, H]);
      shapes.set(`${b}.attn_k.weight`, [kv, H]);
      shapes.set(`${b}.attn_v.weight`, [kv, H]);
      shapes.set(`${b}.ffn_gate.weight`, [c.intermediateSize, H]);
      if (c.qkvBias) {
        shapes.set(`${b}.attn_q.bias`, [q]);
        shapes.set(`${b}.attn_k.bias`, [kv]);
        shapes.set(`${b}.attn_v.bias`, [kv]);
      }
    } else {
      shapes.set(`${b}.attn_norm.bias`, [H]);
      shapes.set(`${b}.ffn_norm.bias`, [H]);
      shapes.set(`${b}.attn_qkv.weight`, [q + 2 * kv, H]);
      shapes.set(`${b}.attn_qkv.bias`, [q + 2 * kv]);
      shapes.set(`${b}.attn_output.bias`, [H]);
      shapes.set(`${b}.ffn_up.bias`, [c.intermediateSize]);
      shapes.set(`${b}.ffn_down.bias`, [H]);
    }
  }
  return shapes;
}

/** Tensors a span [start, end) needs, with or without the embedding and the head. */
export function spanTensorNames(c: ModelConfig, span: { start: number; end: number; embed: boolean; head: boolean }): string[] {
  const names: string[] = [];
  for (const name of expectedShapes(c).keys()) {
    const layer = /^blk\.(\d+)\./.exec(name);
    if (layer) {
      const i = Number(layer[1]);
      if (i >= span.start && i < span.end) names.push(name);
    } else if (name.startsWith("token_embd") || name.startsWith("position_embd")) {
      if (span.embed || (span.head && c.tieWordEmbeddings && name.startsWith("token_embd"))) names.push(name);
    } else if (span.head) {
      names.push(name);
    }
  }
  return names;
}
