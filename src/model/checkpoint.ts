// Opens a checkpoint (Hugging Face folder or GGUF file) behind one interface that speaks
// llama.cpp's tensor names, reading only the tensors asked for.
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { configFromGguf, configFromHf, expectedShapes } from "./config.js";
import { type GgufFile, readGguf } from "./gguf.js";
import { dequantize } from "./quant.js";
import { readSafetensorsDir } from "./safetensors.js";
import { readTensorBytes } from "./tensor-file.js";
import { CheckpointError, type ModelConfig, type RawTensor, type TensorInfo } from "./types.js";
import { transpose } from "./transpose.js";

export type CheckpointFormat = "hf" | "gguf";

export interface Checkpoint {
  format: CheckpointFormat;
  path: string;
  config: ModelConfig;
  /** The files holding the tensors (cache keys and hashes depend on them). */
  files: string[];
  /** GGUF metadata (tokenizer etc.); empty for Hugging Face folders. */
  metadata: Map<string, unknown>;
  has(name: string): boolean;
  /** Stored tensor info under its canonical name, shape in canonical orientation. */
  info(name: string): TensorInfo;
  /** Whether the file stores the tensor transposed (Hugging Face GPT-2's Conv1D weights, [in, out]). */
  storedTransposed(name: string): boolean;
  /** The stored bytes in canonical orientation (already-transposed raw blocks are not possible, see readF32). */
  readRaw(name: string): Promise<RawTensor>;
  /** Dequantized values, row-major in canonical orientation ([out, in] for projections). */
  readF32(name: string): Promise<Float32Array>;
}

interface Mapping {
  /** Name in the checkpoint file. */
  stored: string;
  /** Hugging Face GPT-2's Conv1D stores [in, out]; canonical is [out, in]. */
  transposed: boolean;
}

export async function openCheckpoint(path: string): Promise<Checkpoint> {
  const st = await stat(path).catch(() => {
    throw new CheckpointError("no such file or directory", path);
  });
  return st.isDirectory() ? openHfFolder(path) : openGgufFile(path);
}

/**
 * The config.json of a Hugging Face folder, without looking at its weights (shared with
 * openModelInfo, src/model/model-info.ts).
 */
export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const configFile = join(dir, "config.json");
  const configText = await readFile(configFile, "utf8").catch(() => {
    throw new CheckpointError("missing config.json (a Hugging Face folder needs one)", dir);
  });
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(configText);
  } catch (e) {
    throw new CheckpointError(`invalid JSON: ${(e as Error).message}`, configFile);
  }
  return configFromHf(json, configFile);
}

/**
 * The config a parsed GGUF header describes (its tensor table only says which tensors exist).
 * ropeFreqFactors is not set: it is tensor data (rope_freqs.weight), read by openCheckpoint.
 */
export function ggufConfig(gguf: GgufFile): ModelConfig {
  return configFromGguf(gguf.metadata, gguf.file, new Set(gguf.tensors.keys()));
}

async function openHfFolder(dir: string): Promise<Checkpoint> {
  const config = await readHfConfig(dir);
  const stored = await readSafetensorsDir(dir);
  const mapping = hfNameTable(config, new Set(stored.keys()));
  return buildCheckpoint("hf", dir, config, new Map(), stored, mapping);
}

async function openGgufFile(file: string): Promise<Checkpoint> {
  const gguf = await readGguf(file);
  const names = new Set(gguf.tensors.keys());
  const config = ggufConfig(gguf);
  const mapping = new Map<string, Mapping>();
  for (const name of names) mapping.set(name, { stored: name, transposed: false });
  const checkpoint = buildCheckpoint("gguf", file, config, gguf.metadata, gguf.tensors, mapping);
  if (names.has("rope_freqs.weight")) {
    config.ropeFreqFactors = Array.from(await checkpoint.readF32("rope_freqs.weight"));
  }
  return checkpoint;
}

function buildCheckpoint(
  format: CheckpointFormat,
  path: string,
  config: ModelConfig,
  metadata: Map<string, unknown>,
  stored: Map<string, TensorInfo>,
  mapping: Map<string, Mapping>,
): Checkpoint {
  const shapes = expectedShapes(config);
  for (const [name, shape] of shapes) {
    const m = mapping.get(name);
    const info = m && stored.get(m.stored);
    if (!m || !info) {
      throw new CheckpointError(
        `missing tensor (expected shape [${shape}] for ${config.architecture} with ${config.numLayers} layers)`,
        path,
        m?.stored ?? name,
      );
    }
    const found = m.transposed ? [...info.shape].reverse() : info.shape;
    if (found.length !== shape.length || found.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(`expected shape [${shape}], found [${info.shape}]`, info.file, m.stored);
    }
  }

  const lookup = (name: string) => {
    const m = mapping.get(name);
    const info = m && stored.get(m.stored);
    if (!m || !info) throw new CheckpointError("no such tensor", path, name);
    return { m, info };
  };

  return {
    format,
    path,
    config,
    metadata,
    files: [...new Set([...stored.values()].map((i) => i.file))].sort(),
    has: (name) => mapping.has(name) && stored.has(mapping.get(name)!.stored),
    info(name) {
      const { m, info } = lookup(name);
      return m.transposed ? { ...info, shape: [...info.shape].reverse() } : info;
    },
    storedTransposed: (name) => lookup(name).m.transposed,
    async readRaw(name) {
      const { m, info } = lookup(name);
      if (m.transposed) throw new CheckpointError("stored transposed; use readF32", info.file, m.stored);
      return { info, bytes: await readTensorBytes(info) };
    },
    async readF32(name) {
      const { m, info } = lookup(name);
      const count = info.shape.reduce((a, b) => a * b, 1);
      const values = dequantize(info.dtype, await readTensorBytes(info), count);
      return m.transposed ? transpose(values, info.shape[0]!, info.shape[1]!) : values;
    },
  };
}

/** Canonical (llama.cpp) name -> Hugging Face name, one table per family. */
function hfNameTable(config: ModelConfig, storedNames: Set<string>): Map<string, Mapping> {
  const table = new Map<string, Mapping>();
  const put = (canonical: string, stored: string, transposed = false) => table.set(canonical, { stored, transposed });

  if (config.architecture === "llama") {
    put("token_embd.weight", "model.embed_tokens.weight");
    put("output_norm.weight", "model.norm.weight");
    put("output.weight", "lm_head.weight");
    const layerParts: [string, string][] = [
      ["attn_norm.weight", "input_layernorm.weight"],
      ["ffn_norm.weight", "post_attention_layernorm.weight"],
      ["attn_q.weight", "self_attn.q_proj.weight"],
      ["attn_k.weight", "self_attn.k_proj.weight"],
      ["attn_v.weight", "self_attn.v_proj.weight"],
      ["attn_q.bias", "self_attn.q_proj.bias"],
      ["attn_k.bias", "self_attn.k_proj.bias"],
      ["attn_v.bias", "self_attn.v_proj.bias"],
      ["attn_output.weight", "self_attn.o_proj.weight"],
      ["ffn_gate.weight", "mlp.gate_proj.weight"],
      ["ffn_up.weight", "mlp.up_proj.weight"],
      ["ffn_down.weight", "mlp.down_proj.weight"],
    ];
    for (let i = 0; i < config.numLayers; i++) {
      for (const [c, h] of layerParts) put(`blk.${i}.${c}`, `model.layers.${i}.${h}`);
    }
    return table;
  }

  // GPT-2 checkpoints appear both with and without the "transformer." prefix.
  const prefix = storedNames.has("transformer.wte.weight") ? "transformer." : "";
  put("token_embd.weight", `${prefix}wte.weight`);
  put("position_embd.weight", `${prefix}wpe.weight`);
  put("output_norm.weight", `${prefix}ln_f.weight`);
  put("output_norm.bias", `${prefix}ln_f.bias`);
  const layerParts: [string, string, boolean][] = [
    ["attn_norm.weight", "ln_1.weight", false],
    ["attn_norm.bias", "ln_1.bias", false],
    ["ffn_norm.weight", "ln_2.weight", false],
    ["ffn_norm.bias", "ln_2.bias", false],
    ["attn_qkv.weight", "attn.c_attn.weight", true],
    ["attn_qkv.bias", "attn.c_attn.bias", false],
    ["attn_output.weight", "attn.c_proj.weight", true],
    ["attn_output.bias", "attn.c_proj.bias", false],
    ["ffn_up.weight", "mlp.c_fc.weight", true],
    ["ffn_up.bias", "mlp.c_fc.bias", false],
    ["ffn_down.weight", "mlp.c_proj.weight", true],
    ["ffn_down.bias", "mlp.c_proj.bias", false],
  ];
  for (let i = 0; i < config.numLayers; i++) {
    for (const [c, h, t] of layerParts) put(`blk.${i}.${c}`, `${prefix}h.${i}.${h}`, t);
  }
  return table;
}
