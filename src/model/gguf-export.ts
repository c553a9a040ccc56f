// Writes a model as a GGUF file the way llama.cpp's converter lays it out: its metadata keys,
// q/k rows of Llama-family models permuted to adjacent rotary pairs, Llama-3 rope scaling as a
// rope_freqs tensor, and 1-D tensors kept in F32 when the weights are quantized.
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { llama3FreqFactors } from "./rope.js";
import { expectedShapes } from "./config.js";
import { gguf, type GgufTyped, writeGguf } from "./gguf.js";
import { quantize } from "./quant.js";
import type { DType, ModelConfig } from "./types.js";

export type GgufExportType = "F32" | "F16" | "Q8_0" | "Q4_0";
/** llama.cpp's general.architecture names for the families Tessera writes. */
export type GgufArchitecture = "llama" | "qwen2" | "gpt2";

const FILE_TYPE: Record<GgufExportType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7 };

export interface GgufExport {
  config: ModelConfig;
  architecture: GgufArchitecture;
  name: string;
  dtype: GgufExportType;
  /** Canonical tensor values, Hugging Face row order ([out, in], rotate-half q/k). */
  read: (name: string) => Float32Array | Promise<Float32Array>;
  /** tokenizer.* keys (and anything else to store). */
  extraMetadata: Array<[string, GgufTyped]>;
}

/** The GGUF architecture a config corresponds to (Qwen2 is the Llama family with q/k/v biases). */
export function ggufArchitectureOf(c: ModelConfig): GgufArchitecture {
  if (c.architecture === "gpt2") return "gpt2";
  return c.qkvBias ? "qwen2" : "llama";
}

export async function exportGguf(file: string, e: GgufExport): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const c = e.config;
  const arch = e.architecture;
  const permuteQK = arch === "llama";
  const tensors = [...expectedShapes(c)].map(([name, shape]) => {
    const dtype = storedType(name, shape, e.dtype);
    return {
      name,
      dtype,
      shape,
      bytes: async () => {
        let values = await e.read(name);
        if (permuteQK && name.includes("attn_q.")) values = toAdjacentPairs(values, c.numHeads, c.headDim);
        if (permuteQK && name.includes("attn_k.")) values = toAdjacentPairs(values, c.numKvHeads, c.headDim);
        return quantize(values, dtype);
      },
    };
  });
  if (c.ropeScaling) {
    const factors = llama3FreqFactors(c);
    tensors.push({ name: "rope_freqs.weight", dtype: "F32", shape: [factors.length], bytes: async () => quantize(factors, "F32") });
  }

  const metadata: Array<[string, GgufTyped]> = [
    ["general.architecture", gguf.str(arch)],
    ["general.name", gguf.str(e.name)],
    ["general.file_type", gguf.u32(FILE_TYPE[e.dtype])],
    [`${arch}.context_length`, gguf.u32(c.maxPositionEmbeddings)],
    [`${arch}.embedding_length`, gguf.u32(c.hiddenSize)],
    [`${arch}.block_count`, gguf.u32(c.numLayers)],
    [`${arch}.feed_forward_length`, gguf.u32(c.intermediateSize)],
    [`${arch}.attention.head_count`, gguf.u32(c.numHeads)],
  ];
  if (arch === "gpt2") {
    metadata.push([`${arch}.attention.layer_norm_epsilon`, gguf.f32(c.normEps)]);
  } else {
    metadata.push(
      [`${arch}.attention.head_count_kv`, gguf.u32(c.numKvHeads)],
      [`${arch}.attention.layer_norm_rms_epsilon`, gguf.f32(c.normEps)],
      [`${arch}.rope.freq_base`, gguf.f32(c.ropeTheta)],
      [`${arch}.rope.dimension_count`, gguf.u32(c.headDim)],
      [`${arch}.vocab_size`, gguf.u32(c.vocabSize)],
    );
    if (c.headDim !== c.hiddenSize / c.numHeads) {
      metadata.push([`${arch}.attention.key_length`, gguf.u32(c.headDim)], [`${arch}.attention.value_length`, gguf.u32(c.headDim)]);
    }
  }
  metadata.push(...e.extraMetadata);
  await writeGguf(file, metadata, tensors);
}

/** 1-D tensors and rows that do not fill 32-element blocks stay F32/F16, as llama.cpp leaves them. */
function storedType(name: string, shape: number[], dtype: GgufExportType): DType {
  if (shape.length < 2 || name.startsWith("position_embd")) return "F32";
  if ((dtype === "Q8_0" || dtype === "Q4_0") && shape[shape.length - 1]! % 32 !== 0) return "F16";
  return dtype;
}

/** HF rotate-half rows → GGUF adjacent-pair rows, per head: new[2j + t] = old[t·d/2 + j]. */
export function toAdjacentPairs(w: Float32Array, heads: number, headDim: number): Float32Array {
  const cols = w.length / (heads * headDim);
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * headDim + t * half + j) * cols;
        out.set(w.subarray(src, src + cols), (h * headDim + 2 * j + t) * cols);
      }
    }
  }
  return out;
}
