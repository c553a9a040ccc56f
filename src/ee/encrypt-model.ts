// Writes the EE transform of a checkpoint in the format it came in (Hugging Face folder or GGUF),
// without its tokenizer, plus the public deployment manifest. Runs where the key is.
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { type Checkpoint, openCheckpoint } from "../model/checkpoint.js";
import { configFromHf, expectedShapes } from "../model/config.js";
import { checkpointHash } from "../model/hash.js";
import { type GgufTensorInput, type GgufTyped, gguf, readGguf, typedMetadata, writeGguf } from "../model/gguf.js";
import { dequantize, quantize } from "../model/quant.js";
import { INDEX_FILE_NAME, readSafetensors, type SafetensorsInput, writeSafetensors } from "../model/safetensors.js";
import { readTensorBytes } from "../model/tensor-file.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { CheckpointError, type DType, type TensorInfo } from "../model/types.js";
import {
  deploymentId,
  deriveModelPermutations,
  EeKeyError,
  type EeKey,
  type EeLevel,
  newKey,
  readKeyFile,
  ropeLayoutOf,
  vocabHash,
  writeKeyFile,
} from "./key.js";
import { type EeManifest, manifestFileFor } from "./manifest.js";
import { applyToF32, applyToStored, moveQuantizedRows, planTransforms, type TensorTransform, type TransformOptions, transposeTransform } from "./transform.js";

export { type EeManifest, MANIFEST_FILE_NAME } from "./manifest.js";

export interface EncryptModelOptions {
  /** Hugging Face folder or .gguf file. */
  model: string;
  /** A key file: read and checked against the model when it exists, else created (mode 0600). */
  keyFile?: string;
  /** Or the key itself. With neither, a fresh key is made and only returned (e.g. one per session). */
  key?: EeKey;
  level: EeLevel;
  /** Output folder (Hugging Face input) or .gguf file (GGUF input); must not exist yet. */
  out: string;
  /** Per tensor written. */
  onProgress?: (done: number, total: number) => void;
  /** Test hooks: deliberately wrong transforms (see TransformOptions). */
  transform?: TransformOptions;
}

export interface EncryptModelResult {
  key: EeKey;
  /** A new key was generated (and written to keyFile, when one was given). */
  keyCreated: boolean;
  manifest: EeManifest;
  /** Where the manifest was written: `<out>/ee-manifest.json`, or `<name>.ee-manifest.json` beside a .gguf. */
  manifestFile: string;
  /** Tensors whose stored values could not move exactly (quantized blocks requantized after a column permutation). */
  requantized: string[];
}

export async function encryptModel(opts: EncryptModelOptions): Promise<EncryptModelResult> {
  const checkpoint = await openCheckpoint(opts.model);
  const c = checkpoint.config;
  if (existsSync(opts.out)) throw new CheckpointError("already exists; encrypt-model writes a new folder or file", opts.out);
  const base = await keyFieldsFor(checkpoint, opts.level);

  let key = opts.key;
  let keyCreated = false;
  if (!key && opts.keyFile && existsSync(opts.keyFile)) key = await readKeyFile(opts.keyFile);
  if (!key) {
    key = newKey(base);
    if (opts.keyFile) await writeKeyFile(opts.keyFile, key);
    keyCreated = true;
  }
  checkKeyFits(key, base, opts.keyFile ?? "key");

  const plan = planTransforms(c, deriveModelPermutations(key, c), opts.transform);
  const requantized: string[] = checkpoint.format === "hf" ? await writeHf(checkpoint, plan, opts) : await writeGgufOut(checkpoint, plan, opts);

  const encrypted = await openCheckpoint(opts.out);
  // No base-model hash: it would tell a node which public weights to match against (the client's
  // key holds it).
  const manifest: EeManifest = {
    level: key.level,
    ropeLayout: key.ropeLayout,
    deploymentId: deploymentId(key),
    modelHash: await checkpointHash(encrypted),
  };
  const manifestFile = manifestFileFor(opts.out, checkpoint.format);
  await writeFile(manifestFile, JSON.stringify(manifest, null, 2) + "\n");
  return { key, keyCreated, manifest, manifestFile, requantized };
}

/** Everything a key for this plaintext checkpoint and level records, but the secret. */
export async function keyFieldsFor(checkpoint: Checkpoint, level: EeLevel): Promise<Omit<EeKey, "v" | "secret">> {
  const c = checkpoint.config;
  return {
    baseModelHash: await checkpointHash(checkpoint),
    vocabHash: vocabHash(await loadTokenizer(checkpoint)),
    vocabSize: c.vocabSize,
    level,
    ropeLayout: ropeLayoutOf(c),
  };
}

function checkKeyFits(key: EeKey, base: Omit<EeKey, "v" | "secret">, where: string): void {
  const fields = ["baseModelHash", "level", "vocabHash", "vocabSize", "ropeLayout"] as const;
  for (const field of fields) {
    if (key[field] !== base[field]) {
      throw new EeKeyError(
        `${where}: the key's ${field} is ${JSON.stringify(key[field])}, but this model and level need ${JSON.stringify(base[field])}` +
          (field === "baseModelHash" ? " (the key was made for another checkpoint)" : ""),
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

/** Config keys holding plaintext token ids; they mean nothing to an encrypted model. */
const HF_TOKEN_ID_KEYS = ["bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id"];

/**
 * The config.json an encrypted folder publishes: the keys the loader reads (recorded by reading
 * the config through a proxy, so the list cannot fall behind the loader) and `architectures`,
 * without token ids. Everything else (`_name_or_path`, `transformers_version`, a model card's
 * fields) would only help a node name the public model it serves.
 */
export function publishedHfConfig(config: Record<string, unknown>, file: string): Record<string, unknown> {
  const read = new Set<string>(["architectures", "model_type"]);
  configFromHf(
    new Proxy(config, {
      get: (target, key) => {
        if (typeof key === "string") read.add(key);
        return target[key as string];
      },
    }),
    file,
  );
  return Object.fromEntries(Object.entries(config).filter(([k]) => read.has(k) && !HF_TOKEN_ID_KEYS.includes(k)));
}

/**
 * The GGUF metadata keys an encrypted file keeps: the architecture, layout and quantization keys
 * and the architecture's hyperparameters (`<arch>.*`); the tokenizer and every other `general.*`
 * key (name, basename, size label, base model, source URL, author, licence, tags) are dropped.
 */
export function publishedGgufKey(key: string, arch: string): boolean {
  if (key.startsWith("tokenizer.")) return false;
  if (key.startsWith(`${arch}.`)) return true;
  return ["general.architecture", "general.alignment", "general.file_type", "general.quantization_version"].includes(key);
}

async function writeHf(checkpoint: Checkpoint, plan: Map<string, TensorTransform>, opts: EncryptModelOptions): Promise<string[]> {
  const c = checkpoint.config;
  const names = [...expectedShapes(c).keys()];
  const byFile = new Map<string, string[]>();
  for (const name of names) {
    const file = checkpoint.info(name).file;
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }
  await mkdir(opts.out, { recursive: true });
  try {
    let done = 0;
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (const [file, fileNames] of [...byFile].sort(([a], [b]) => a.localeCompare(b))) {
      const tensors: SafetensorsInput[] = [];
      for (const name of fileNames) {
        const info = checkpoint.info(name);
        const transposed = checkpoint.storedTransposed(name);
        const storedShape = transposed ? [...info.shape].reverse() : info.shape;
        const t = plan.get(name);
        const raw = await readTensorBytes(info);
        const bytes = t ? applyToStored(raw, info.dtype, storedShape, transposed ? transposeTransform(t) : t) : raw;
        tensors.push({ name: info.name, dtype: info.dtype, shape: storedShape, bytes });
        weightMap[info.name] = basename(file);
        totalSize += bytes.length;
        opts.onProgress?.(++done, names.length);
      }
      // Of the header's free-form metadata only `format` stays (it can name the model or its source).
      const { format } = (await readSafetensors(file)).metadata ?? {};
      await writeSafetensors(join(opts.out, basename(file)), tensors, format ? { format } : undefined);
    }
    if (byFile.size > 1 || existsSync(join(checkpoint.path, INDEX_FILE_NAME))) {
      const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
      await writeFile(join(opts.out, INDEX_FILE_NAME), JSON.stringify(index, null, 2) + "\n");
    }
    const configFile = join(checkpoint.path, "config.json");
    const config = publishedHfConfig(JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>, configFile);
    await writeFile(join(opts.out, "config.json"), JSON.stringify(config, null, 2) + "\n");
  } catch (e) {
    await rm(opts.out, { recursive: true, force: true });
    throw e;
  }
  return []; // F32/F16/BF16 elements move exactly
}

// ---------------------------------------------------------------------------------------------
// GGUF files

async function writeGgufOut(checkpoint: Checkpoint, plan: Map<string, TensorTransform>, opts: EncryptModelOptions): Promise<string[]> {
  const file = await readGguf(checkpoint.path);
  const unsupported = [...file.unsupportedTensors.keys()];
  if (unsupported.length > 0) {
    throw new CheckpointError(`cannot copy tensors of unsupported ggml types: ${unsupported.join(", ")}`, checkpoint.path);
  }
  const arch = String(file.metadata.get("general.architecture"));
  // The tokenizer stays with the client, names and provenance are dropped (publishedGgufKey); the
  // vocabulary size the loader needs moves to <arch>.vocab_size.
  const metadata: Array<[string, GgufTyped]> = [...file.metadata.keys()].filter((k) => publishedGgufKey(k, arch)).map((k) => [k, typedMetadata(file, k)]);
  if (!file.metadata.has(`${arch}.vocab_size`)) metadata.push([`${arch}.vocab_size`, gguf.u32(checkpoint.config.vocabSize)]);

  const requantized: string[] = [];
  const infos = [...file.tensors.values()].sort((a, b) => a.offset - b.offset);
  let done = 0;
  const tensors: GgufTensorInput[] = infos.map((info) => ({
    name: info.name,
    dtype: info.dtype,
    shape: info.shape,
    bytes: async () => {
      const raw = await readTensorBytes(info);
      const t = plan.get(info.name);
      const bytes = t ? transformGgufTensor(info, raw, t, requantized) : raw;
      opts.onProgress?.(++done, infos.length);
      return bytes;
    },
  }));
  await mkdir(dirname(opts.out), { recursive: true });
  await writeGguf(opts.out, metadata, tensors);
  return requantized;
}

/**
 * Quantized rows move as whole blocks (exact); a column permutation of Q8_0/Q4_0 must
 * dequantize, permute and requantize to the same type, which is not bit-exact.
 */
function transformGgufTensor(info: TensorInfo, raw: Uint8Array, t: TensorTransform, requantized: string[]): Uint8Array {
  const dtype: DType = info.dtype;
  if (dtype !== "Q8_0" && dtype !== "Q4_0") return applyToStored(raw, dtype, info.shape, t);
  if (!t.cols) return moveQuantizedRows(raw, dtype, info.shape, t.rows!);
  requantized.push(info.name);
  const count = info.shape.reduce((a, b) => a * b, 1);
  return quantize(applyToF32(dequantize(dtype, raw, count), info.shape, t), dtype);
}
