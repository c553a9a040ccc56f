// Hugging Face safetensors: single files and sharded folders, reading (header only) and writing.
//
// File layout: u64 LE header length N, N bytes of JSON
// `{"__metadata__": {..}, name: {dtype, shape, data_offsets: [begin, end]}, ..}` padded with spaces
// to a multiple of 8, then the data section; offsets are relative to its start (8 + N).

import { mkdir, readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { DTYPE_LAYOUT, elementCount, openForReading, readExactly, writeFileAtomically, writeFully } from "./tensor-file.js";
import { CheckpointError, type DType, type TensorInfo } from "./types.js";

export const SINGLE_FILE_NAME = "model.safetensors";
export const INDEX_FILE_NAME = "model.safetensors.index.json";

/** The safetensors library refuses headers above 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;

const SAFETENSORS_DTYPES = ["F32", "F16", "BF16", "I32", "I64", "U8"] as const satisfies readonly DType[];
type SafetensorsDType = (typeof SAFETENSORS_DTYPES)[number];

/** Rank in the Rust library's `Dtype` enum, whose order decides the layout of written files. */
const DTYPE_RANK: Record<SafetensorsDType, number> = { U8: 1, F16: 7, BF16: 8, I32: 9, F32: 11, I64: 13 };

export interface SafetensorsInput {
  name: string;
  dtype: DType;
  shape: number[];
  bytes: Uint8Array;
}

export interface SafetensorsContents {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Tensor descriptions of one .safetensors file, validated against the file size. */
export async function readSafetensorsHeader(file: string): Promise<Map<string, TensorInfo>> {
  return (await readSafetensors(file)).tensors;
}

/** Tensors and `__metadata__` of one .safetensors file. Reads only the header. */
export async function readSafetensors(file: string): Promise<SafetensorsContents> {
  const handle = await openForReading(file);
  try {
    const fileSize = (await handle.stat()).size;
    if (fileSize < 8) throw new CheckpointError(`file is ${fileSize} bytes, too short for the 8-byte header length`, file);
    const lengthBytes = await readExactly(handle, 0, 8, file);
    const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw new CheckpointError(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`, file);
    }
    if (8n + headerLength > BigInt(fileSize)) {
      throw new CheckpointError(`header length ${headerLength} runs past the end of the file (${fileSize} bytes)`, file);
    }
    const headerBytes = await readExactly(handle, 8, Number(headerLength), file);
    return parseHeader(headerBytes, file, fileSize);
  } finally {
    await handle.close();
  }
}

function parseHeader(headerBytes: Uint8Array, file: string, fileSize: number): SafetensorsContents {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new CheckpointError(`header is not valid UTF-8 JSON: ${(e as Error).message}`, file);
  }
  if (!isPlainObject(header)) throw new CheckpointError("header must be a JSON object", file);

  const dataStart = 8 + headerBytes.length;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") metadata = parseMetadata(entry, file);
    else tensors.set(name, parseTensorEntry(name, entry, file, dataStart, fileSize));
  }
  checkNoOverlap([...tensors.values()], file);
  return { tensors, metadata };
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === "string")) {
    throw new CheckpointError("__metadata__ must be an object of strings", file);
  }
  return entry as Record<string, string>;
}

function parseTensorEntry(name: string, entry: unknown, file: string, dataStart: number, fileSize: number): TensorInfo {
  const fail = (message: string) => new CheckpointError(message, file, name);
  if (!isPlainObject(entry)) throw fail(`expected an object {dtype, shape, data_offsets}, found ${JSON.stringify(entry)}`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== "string" || !(SAFETENSORS_DTYPES as readonly string[]).includes(dtype)) {
    throw fail(`unsupported dtype ${JSON.stringify(dtype)}, expected one of ${SAFETENSORS_DTYPES.join(", ")}`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw fail(`shape must be an array of non-negative integers, found ${JSON.stringify(shape)}`);
  }
  if (!isOffsetPair(offsets)) {
    throw fail(`data_offsets must be [begin, end] with 0 <= begin <= end, found ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets;
  const elementSize = DTYPE_LAYOUT[dtype as SafetensorsDType].bytesPerBlock;
  let expected: number;
  try {
    expected = elementCount(shape) * elementSize;
  } catch (e) {
    throw fail((e as Error).message);
  }
  if (end - begin !== expected) {
    throw fail(
      `shape [${shape}] of ${dtype} (${elementSize} bytes each) needs ${expected} bytes, ` + `but data_offsets [${begin}, ${end}] span ${end - begin}`,
    );
  }
  if (dataStart + end > fileSize) {
    throw fail(`data ends at byte ${dataStart + end}, past the end of the file (${fileSize} bytes)`);
  }
  return { name, dtype: dtype as DType, shape, offset: dataStart + begin, byteLength: expected, file };
}

function checkNoOverlap(tensors: TensorInfo[], file: string): void {
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    const current = sorted[i]!;
    if (current.offset < previous.offset + previous.byteLength) {
      throw new CheckpointError(
        `data [${current.offset}, ${current.offset + current.byteLength}) overlaps tensor '${previous.name}' ` +
          `[${previous.offset}, ${previous.offset + previous.byteLength})`,
        file,
        current.name,
      );
    }
  }
}

/**
 * All tensors of a Hugging Face model folder: `model.safetensors`, or the shards listed in
 * `model.safetensors.index.json`. The index must match the shards exactly.
 */
export async function readSafetensorsDir(dir: string): Promise<Map<string, TensorInfo>> {
  const indexFile = join(dir, INDEX_FILE_NAME);
  if (await exists(indexFile)) return readShardedDir(dir, indexFile);
  const single = join(dir, SINGLE_FILE_NAME);
  if (await exists(single)) return readSafetensorsHeader(single);
  throw new CheckpointError(`no ${SINGLE_FILE_NAME} or ${INDEX_FILE_NAME} in the folder`, dir);
}

async function readShardedDir(dir: string, indexFile: string): Promise<Map<string, TensorInfo>> {
  const weightMap = parseIndex(await readFile(indexFile, "utf8"), indexFile);
  const namesByShard = new Map<string, string[]>();
  for (const [name, shard] of weightMap) {
    if (shard !== basename(shard) || shard === "." || shard === "..") {
      throw new CheckpointError(`shard "${shard}" must be a file name inside the folder`, indexFile, name);
    }
    const names = namesByShard.get(shard);
    if (names) names.push(name);
    else namesByShard.set(shard, [name]);
  }
  for (const [shard, names] of namesByShard) {
    if (!(await exists(join(dir, shard)))) {
      throw new CheckpointError(`shard file ${shard} listed in the index is missing`, join(dir, shard), names[0]);
    }
  }
  const shards = await Promise.all([...namesByShard.keys()].map(async (shard) => [shard, await readSafetensorsHeader(join(dir, shard))] as const));
  const shardTensors = new Map(shards);
  for (const [shard, tensors] of shardTensors) {
    for (const name of tensors.keys()) {
      if (weightMap.get(name) !== shard) {
        const listed = weightMap.get(name);
        throw new CheckpointError(
          listed === undefined ? "present in the shard but missing from the index" : `present in the shard but the index says ${listed}`,
          join(dir, shard),
          name,
        );
      }
    }
  }
  const out = new Map<string, TensorInfo>();
  for (const [name, shard] of weightMap) {
    const info = shardTensors.get(shard)!.get(name);
    if (!info) throw new CheckpointError(`listed in ${INDEX_FILE_NAME} but not present in the shard`, join(dir, shard), name);
    out.set(name, info);
  }
  return out;
}

function parseIndex(text: string, indexFile: string): Map<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`index is not valid JSON: ${(e as Error).message}`, indexFile);
  }
  const weightMap = isPlainObject(index) ? index.weight_map : undefined;
  if (!isPlainObject(weightMap)) throw new CheckpointError(`expected an object "weight_map": {tensor: shard file}`, indexFile);
  const out = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string") {
      throw new CheckpointError(`expected a shard file name, found ${JSON.stringify(shard)}`, indexFile, name);
    }
    out.set(name, shard);
  }
  return out;
}

/**
 * Writes one .safetensors file byte-identical to the Python/Rust library: tensors ordered by
 * descending dtype alignment then name, compact JSON header with `__metadata__` first, padded
 * with spaces to a multiple of 8.
 */
export async function writeSafetensors(file: string, tensors: readonly SafetensorsInput[], metadata?: Record<string, string>): Promise<void> {
  const ordered = tensors.map((t) => checkInput(t, file)).sort(compareForLayout);
  checkUniqueNames(ordered, file);
  const header = encodeHeader(ordered, metadata);
  await writeFileAtomically(file, async (handle) => {
    await writeFully(handle, header);
    for (const tensor of ordered) await writeFully(handle, tensor.bytes);
  });
}

/**
 * Writes a model folder the way `save_pretrained` does: `model.safetensors` when everything fits
 * in one shard, else `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`.
 * Shards are filled in the order given; a tensor larger than the limit gets a shard of its own.
 * Returns the files written.
 */
export async function writeSafetensorsSharded(
  dir: string,
  tensors: readonly SafetensorsInput[],
  maxShardBytes: number,
  metadata: Record<string, string> = { format: "pt" },
): Promise<string[]> {
  if (!(maxShardBytes > 0)) throw new RangeError(`maxShardBytes must be positive, got ${maxShardBytes}`);
  await mkdir(dir, { recursive: true });
  checkUniqueNames(tensors, dir);
  const shards = splitIntoShards(tensors, maxShardBytes);
  if (shards.length <= 1) {
    const file = join(dir, SINGLE_FILE_NAME);
    await writeSafetensors(file, shards[0] ?? [], metadata);
    return [file];
  }
  const width = 5;
  const shardName = (i: number) => `model-${String(i + 1).padStart(width, "0")}-of-${String(shards.length).padStart(width, "0")}.safetensors`;
  const files: string[] = [];
  const weightMap: Record<string, string> = Object.create(null);
  for (const [i, shard] of shards.entries()) {
    const file = join(dir, shardName(i));
    await writeSafetensors(file, shard, metadata);
    files.push(file);
    for (const tensor of shard) weightMap[tensor.name] = shardName(i);
  }
  const totalSize = tensors.reduce((sum, t) => sum + t.bytes.length, 0);
  const indexFile = join(dir, INDEX_FILE_NAME);
  const indexJson = pythonJsonDumps({ metadata: { total_size: totalSize }, weight_map: weightMap });
  await writeFileAtomically(indexFile, (handle) => writeFully(handle, new TextEncoder().encode(indexJson)));
  files.push(indexFile);
  return files;
}

/** huggingface_hub's split_state_dict_into_shards_factory. */
function splitIntoShards(tensors: readonly SafetensorsInput[], maxShardBytes: number): SafetensorsInput[][] {
  const shards: SafetensorsInput[][] = [];
  let current: SafetensorsInput[] = [];
  let currentBytes = 0;
  for (const tensor of tensors) {
    const size = tensor.bytes.length;
    if (size > maxShardBytes) {
      shards.push([tensor]);
      continue;
    }
    if (currentBytes + size > maxShardBytes) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(tensor);
    currentBytes += size;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

function checkInput(tensor: SafetensorsInput, file: string): SafetensorsInput {
  const fail = (message: string) => new CheckpointError(message, file, tensor.name);
  if (!(SAFETENSORS_DTYPES as readonly string[]).includes(tensor.dtype)) {
    throw fail(`unsupported dtype ${tensor.dtype}, expected one of ${SAFETENSORS_DTYPES.join(", ")}`);
  }
  let expected: number;
  try {
    expected = elementCount(tensor.shape) * DTYPE_LAYOUT[tensor.dtype].bytesPerBlock;
  } catch (e) {
    throw fail((e as Error).message);
  }
  if (tensor.bytes.length !== expected) {
    throw fail(`shape [${tensor.shape}] of ${tensor.dtype} needs ${expected} bytes, got ${tensor.bytes.length}`);
  }
  return tensor;
}

function checkUniqueNames(tensors: readonly SafetensorsInput[], file: string): void {
  const seen = new Set<string>();
  for (const { name } of tensors) {
    if (name === "__metadata__") throw new CheckpointError("reserved tensor name", file, name);
    if (seen.has(name)) throw new CheckpointError("duplicate tensor name", file, name);
    seen.add(name);
  }
}

function compareForLayout(a: SafetensorsInput, b: SafetensorsInput): number {
  const byDtype = DTYPE_RANK[b.dtype as SafetensorsDType] - DTYPE_RANK[a.dtype as SafetensorsDType];
  // Rust compares names as bytes, i.e. UTF-8 order.
  return byDtype !== 0 ? byDtype : Buffer.compare(Buffer.from(a.name), Buffer.from(b.name));
}

function encodeHeader(ordered: readonly SafetensorsInput[], metadata?: Record<string, string>): Uint8Array {
  // Built by hand: a JS object would move integer-like keys ("0", "1") to the front.
  const entries: string[] = [];
  if (metadata) entries.push(`"__metadata__":${jsonObject(Object.entries(metadata))}`);
  let offset = 0;
  for (const { name, dtype, shape, bytes } of ordered) {
    const info = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    entries.push(`${JSON.stringify(name)}:${JSON.stringify(info)}`);
    offset += bytes.length;
  }
  const json = new TextEncoder().encode(`{${entries.join(",")}}`);
  const padded = json.length + ((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

function jsonObject(entries: [string, string][]): string {
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",")}}`;
}

/** Python's `json.dumps(value, indent=2, sort_keys=True) + "\n"`, ensure_ascii included. */
function pythonJsonDumps(value: JsonValue): string {
  return dumpJson(value, "") + "\n";
}

type JsonValue = string | number | { [key: string]: JsonValue };

function dumpJson(value: JsonValue, indent: string): string {
  if (typeof value === "number") return String(value);
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }
  // Python sorts keys by code point, which is UTF-8 byte order.
  const keys = Object.keys(value).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  if (keys.length === 0) return "{}";
  const inner = indent + "  ";
  const items = keys.map((k) => `${inner}${dumpJson(k, inner)}: ${dumpJson(value[k]!, inner)}`);
  return `{\n${items.join(",\n")}\n${indent}}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** `[begin, end]` data offsets with 0 <= begin <= end. */
function isOffsetPair(value: unknown): value is [number, number] {
  if (!Array.isArray(value) || value.length !== 2) return false;
  const [begin, end]: unknown[] = value;
  return isNonNegativeInteger(begin) && isNonNegativeInteger(end) && begin <= end;
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
