// Model manifests (secure inference, arXiv 2407.19401: per-block content hashes): what a node
// must be running for a client to trust its span. A manifest holds a SHA-256 per tensor, one per
// block (over its tensors' hashes), one for the embedding and one for the head, a hash of the
// config, and the engine weight format; its id is the SHA-256 of its canonical JSON. Tensors are
// hashed by their values as the engine reads them (f32, row-major, canonical names and
// orientation), so the same weights stored another way (sharded or not, F32 or BF16 holding the
// same values) share a manifest. A GGUF conversion has its own: llama.cpp permutes the q/k rows
// for interleaved rotary and stores the norm epsilon as f32, so its numbers differ slightly.
// A node checks each span it loads against the manifest and announces the manifest id; a client
// routes only through nodes announcing the id it asked for.
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import type { ServedModel, WeightFormat } from "../engine/interface.js";
import { WEIGHT_FORMATS } from "../engine/interface.js";
import { canonicalJson } from "../canonical-json.js";
import { logger } from "../log.js";
import type { Checkpoint } from "../model/checkpoint.js";
import { spanTensorNames } from "../model/config.js";
import type { ModelConfig } from "../model/types.js";

const log = logger("verify:manifest");

export const MANIFEST_VERSION = 1;

export interface ModelManifest {
  version: typeof MANIFEST_VERSION;
  architecture: ModelConfig["architecture"];
  numBlocks: number;
  /** The engine weight format the nodes must run (it changes the numbers they compute). */
  format: WeightFormat;
  /** SHA-256 of the config's canonical JSON (shapes, norms, rotary settings). */
  config: string;
  /** SHA-256 of each tensor's name, shape and f32 values. */
  tensors: Record<string, string>;
  /** Per block: SHA-256 over its tensors' hashes, in name order. */
  blocks: string[];
  embedding: string;
  head: string;
  /** SHA-256 of the canonical JSON of everything above. */
  id: string;
}

/** A checkpoint that does not match a manifest, naming the first tensor (or field) that differs. */
export class ManifestError extends Error {
  override name = "ManifestError";
}

const sha256 = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex");

export function configHash(c: ModelConfig): string {
  return sha256(canonicalJson(c));
}

/** The hash of one tensor: its name, its canonical shape and its f32 values (little-endian). */
export async function tensorHash(checkpoint: Checkpoint, name: string): Promise<string> {
  const values = await checkpoint.readF32(name);
  const h = createHash("sha256");
  h.update(`${name}\0${checkpoint.info(name).shape.join(",")}\0`);
  h.update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  return h.digest("hex");
}

/** A part of a model the manifest hashes: a block, the embedding or the head. */
export type ModelPart = number | "embedding" | "head";

/** The parts a span [start, end) runs: its blocks, with the embedding from block 0 and the head at the last block. */
export function spanParts(c: ModelConfig, start: number, end: number): ModelPart[] {
  const blocks = Array.from({ length: end - start }, (_, i) => start + i);
  return [...(start === 0 ? ["embedding" as const] : []), ...blocks, ...(end === c.numLayers ? ["head" as const] : [])];
}

/** Which tensors make up a part (canonical names, sorted). */
export function partTensors(c: ModelConfig, part: ModelPart): string[] {
  if (part === "embedding") return spanTensorNames(c, { start: 0, end: 0, embed: true, head: false }).sort();
  if (part === "head") return spanTensorNames(c, { start: 0, end: 0, embed: false, head: true }).sort();
  return spanTensorNames(c, { start: part, end: part + 1, embed: false, head: false }).sort();
}

const partHash = (names: string[], tensors: Record<string, string>) => sha256(names.map((n) => `${n}=${tensors[n] ?? ""}`).join("\n"));

/** Builds the manifest of a checkpoint for a weight format, reading every tensor once. */
export async function buildManifest(checkpoint: Checkpoint, format: WeightFormat, onProgress?: (done: number, total: number) => void): Promise<ModelManifest> {
  const c = checkpoint.config;
  const names = [...new Set(spanParts(c, 0, c.numLayers).flatMap((p) => partTensors(c, p)))];
  const tensors: Record<string, string> = {};
  for (const [i, name] of names.entries()) {
    tensors[name] = await tensorHash(checkpoint, name);
    onProgress?.(i + 1, names.length);
  }
  const body = {
    version: MANIFEST_VERSION,
    architecture: c.architecture,
    numBlocks: c.numLayers,
    format,
    config: configHash(c),
    tensors,
    blocks: Array.from({ length: c.numLayers }, (_, i) => partHash(partTensors(c, i), tensors)),
    embedding: partHash(partTensors(c, "embedding"), tensors),
    head: partHash(partTensors(c, "head"), tensors),
  } as const;
  return { ...body, id: sha256(canonicalJson(body)) };
}

/** Reads and validates a manifest file: every field present, the id matching its content. */
export async function readManifest(file: string): Promise<ModelManifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, "utf8"));
  } catch (e) {
    throw new ManifestError(`${file}: not a readable JSON manifest (${(e as Error).message})`);
  }
  const m = raw as Partial<ModelManifest>;
  const hex = (v: unknown) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);
  const problems: string[] = [];
  if (m.version !== MANIFEST_VERSION) problems.push(`version ${String(m.version)} (expected ${MANIFEST_VERSION})`);
  if (!WEIGHT_FORMATS.includes(m.format as WeightFormat)) problems.push(`format ${String(m.format)}`);
  if (!(Number.isInteger(m.numBlocks) && (m.numBlocks ?? 0) > 0)) problems.push(`numBlocks ${String(m.numBlocks)}`);
  if (!Array.isArray(m.blocks) || m.blocks.length !== m.numBlocks || !m.blocks.every(hex)) problems.push("blocks");
  if (!hex(m.config) || !hex(m.embedding) || !hex(m.head) || !hex(m.id)) problems.push("config, embedding, head or id hash");
  if (typeof m.tensors !== "object" || m.tensors === null || !Object.values(m.tensors).every(hex)) problems.push("tensors");
  if (problems.length) throw new ManifestError(`${file}: malformed manifest: ${problems.join("; ")}`);
  const { id, ...body } = m as ModelManifest;
  if (sha256(canonicalJson(body)) !== id) throw new ManifestError(`${file}: manifest id ${id} does not match its content`);
  return m as ModelManifest;
}

export async function writeManifest(file: string, manifest: ModelManifest): Promise<void> {
  await writeFile(file, `${JSON.stringify(manifest, null, 1)}\n`);
}

/**
 * Checks blocks [start, end) of a checkpoint (with the embedding when start is 0 and the head when
 * end is the last block) against a manifest; throws a ManifestError naming the first tensor that
 * differs. Reads only the span's tensors, and none of the parts in `verified` (which it extends).
 */
export async function checkSpan(
  checkpoint: Checkpoint,
  manifest: ModelManifest,
  start: number,
  end: number,
  format: WeightFormat,
  verified: Set<ModelPart> = new Set(),
): Promise<void> {
  const c = checkpoint.config;
  const where = checkpoint.path;
  if (manifest.format !== format) throw new ManifestError(`${where}: the manifest is for weight format ${manifest.format}, this node runs ${format}`);
  if (manifest.numBlocks !== c.numLayers || manifest.architecture !== c.architecture) {
    throw new ManifestError(
      `${where}: the manifest is for a ${manifest.numBlocks}-block ${manifest.architecture} model, this is a ${c.numLayers}-block ${c.architecture}`,
    );
  }
  if (configHash(c) !== manifest.config) throw new ManifestError(`${where}: the config differs from the manifest's`);
  for (const part of spanParts(c, start, end)) {
    if (verified.has(part)) continue;
    for (const name of partTensors(c, part)) {
      const expected = manifest.tensors[name];
      if (!expected) throw new ManifestError(`${where}: tensor '${name}' is not in the manifest`);
      const actual = await tensorHash(checkpoint, name);
      if (actual !== expected)
        throw new ManifestError(`${where}: tensor '${name}' hashes to ${actual.slice(0, 16)}…, the manifest says ${expected.slice(0, 16)}…`);
    }
    verified.add(part);
  }
  log("blocks [%d, %d) of %s match manifest %s", start, end, where, manifest.id.slice(0, 16));
}

/**
 * A served model whose every span is checked against the manifest before it loads (moves and
 * sub-ranges included); each part is hashed once, so a sub-range of a checked span costs nothing.
 */
export function checkedModel(model: ServedModel, checkpoint: Checkpoint, manifest: ModelManifest, format: WeightFormat): ServedModel {
  const verified = new Set<ModelPart>();
  return {
    ...model,
    load: async (start, end) => {
      await checkSpan(checkpoint, manifest, start, end, format, verified);
      return model.load(start, end);
    },
  };
}

/** Where a checkpoint's manifest sits by default: beside a .gguf, or inside a folder. */
export function defaultManifestPath(checkpointPath: string): string {
  const p = checkpointPath.replace(/[\\/]+$/, "");
  return /\.gguf$/i.test(p) ? p.replace(/\.gguf$/i, ".manifest.json") : `${p}/tessera-manifest.json`;
}
