// GGUF (v2/v3) checkpoints: header parsing without touching tensor data, and a streaming writer.
//
// Layout (little endian): "GGUF", u32 version, u64 tensor count, u64 metadata count,
// metadata [string key, u32 type, value]..., tensor infos [string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml type, u64 offset]..., padding to `general.alignment` (default 32),
// then tensor data; offsets are relative to that aligned start. Strings are u64 length + UTF-8.
// `ne[0]` is the innermost (contiguous) dimension, so row-major shapes are `ne` reversed.

import type { FileHandle } from "node:fs/promises";
import { openForReading, readExactly, readTensorBytes, tensorByteLength, writeFileAtomically, writeFully } from "./tensor-file.js";
import { CheckpointError, type DType, type RawTensor, type TensorInfo } from "./types.js";

export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** Tensor whose ggml type this engine cannot decode; listed, but an error when used. */
export interface GgufUnsupportedTensor {
  name: string;
  ggmlType: number;
  ggmlTypeName: string;
  shape: number[];
  offset: number;
  /** Unknown when the ggml type itself is unknown. */
  byteLength?: number;
  file: string;
}

export interface GgufFile {
  file: string;
  version: number;
  metadata: Map<string, GgufValue>;
  /** The GGUF value type of each metadata key (and of its elements, for arrays), to rewrite it as stored. */
  metadataTypes: Map<string, { type: number; elementType?: number }>;
  tensors: Map<string, TensorInfo>;
  unsupportedTensors: Map<string, GgufUnsupportedTensor>;
  alignment: number;
  /** Absolute offset of the data section. */
  dataOffset: number;
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types

interface GgmlType {
  name: string;
  blockSize: number;
  bytesPerBlock: number;
  dtype?: DType;
}

/** ggml's type_traits (ggml.c); ids missing here were removed from ggml. */
const GGML_TYPES: Readonly<Record<number, GgmlType>> = {
  0: { name: "F32", blockSize: 1, bytesPerBlock: 4, dtype: "F32" },
  1: { name: "F16", blockSize: 1, bytesPerBlock: 2, dtype: "F16" },
  2: { name: "Q4_0", blockSize: 32, bytesPerBlock: 18, dtype: "Q4_0" },
  3: { name: "Q4_1", blockSize: 32, bytesPerBlock: 20 },
  6: { name: "Q5_0", blockSize: 32, bytesPerBlock: 22 },
  7: { name: "Q5_1", blockSize: 32, bytesPerBlock: 24 },
  8: { name: "Q8_0", blockSize: 32, bytesPerBlock: 34, dtype: "Q8_0" },
  9: { name: "Q8_1", blockSize: 32, bytesPerBlock: 36 },
  10: { name: "Q2_K", blockSize: 256, bytesPerBlock: 84 },
  11: { name: "Q3_K", blockSize: 256, bytesPerBlock: 110 },
  12: { name: "Q4_K", blockSize: 256, bytesPerBlock: 144 },
  13: { name: "Q5_K", blockSize: 256, bytesPerBlock: 176 },
  14: { name: "Q6_K", blockSize: 256, bytesPerBlock: 210 },
  15: { name: "Q8_K", blockSize: 256, bytesPerBlock: 292 },
  16: { name: "IQ2_XXS", blockSize: 256, bytesPerBlock: 66 },
  17: { name: "IQ2_XS", blockSize: 256, bytesPerBlock: 74 },
  18: { name: "IQ3_XXS", blockSize: 256, bytesPerBlock: 98 },
  19: { name: "IQ1_S", blockSize: 256, bytesPerBlock: 50 },
  20: { name: "IQ4_NL", blockSize: 32, bytesPerBlock: 18 },
  21: { name: "IQ3_S", blockSize: 256, bytesPerBlock: 110 },
  22: { name: "IQ2_S", blockSize: 256, bytesPerBlock: 82 },
  23: { name: "IQ4_XS", blockSize: 256, bytesPerBlock: 136 },
  24: { name: "I8", blockSize: 1, bytesPerBlock: 1 },
  25: { name: "I16", blockSize: 1, bytesPerBlock: 2 },
  26: { name: "I32", blockSize: 1, bytesPerBlock: 4, dtype: "I32" },
  27: { name: "I64", blockSize: 1, bytesPerBlock: 8, dtype: "I64" },
  28: { name: "F64", blockSize: 1, bytesPerBlock: 8 },
  29: { name: "IQ1_M", blockSize: 256, bytesPerBlock: 56 },
  30: { name: "BF16", blockSize: 1, bytesPerBlock: 2, dtype: "BF16" },
  34: { name: "TQ1_0", blockSize: 256, bytesPerBlock: 54 },
  35: { name: "TQ2_0", blockSize: 256, bytesPerBlock: 66 },
  39: { name: "MXFP4", blockSize: 32, bytesPerBlock: 17 },
  40: { name: "NVFP4", blockSize: 64, bytesPerBlock: 36 },
  41: { name: "Q1_0", blockSize: 128, bytesPerBlock: 18 },
  42: { name: "Q2_0", blockSize: 64, bytesPerBlock: 18 },
};

const GGML_TYPE_ID_OF: Partial<Record<DType, number>> = Object.fromEntries(
  Object.entries(GGML_TYPES).flatMap(([id, t]) => (t.dtype ? [[t.dtype, Number(id)]] : [])),
);

const SUPPORTED_DTYPES = Object.keys(GGML_TYPE_ID_OF).join(", ");

// ---------------------------------------------------------------------------------------------
// Metadata value types

const VALUE_TYPE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  str: 8,
  arr: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export type GgufScalarType = Exclude<keyof typeof VALUE_TYPE, "arr">;

interface ScalarValues {
  u8: number;
  i8: number;
  u16: number;
  i16: number;
  u32: number;
  i32: number;
  f32: number;
  f64: number;
  u64: bigint | number;
  i64: bigint | number;
  bool: boolean;
  str: string;
}

/** A metadata value tagged with the GGUF type it is written as. */
export type GgufTyped =
  | { [T in GgufScalarType]: { type: T; value: ScalarValues[T] } }[GgufScalarType]
  | { [T in GgufScalarType]: { type: "arr"; elementType: T; values: readonly ScalarValues[T][] } }[GgufScalarType];

/** Constructors for typed metadata values: `gguf.u32(4096)`, `gguf.arr("str", tokens)`. */
export const gguf = {
  u8: (value: number): GgufTyped => ({ type: "u8", value }),
  i8: (value: number): GgufTyped => ({ type: "i8", value }),
  u16: (value: number): GgufTyped => ({ type: "u16", value }),
  i16: (value: number): GgufTyped => ({ type: "i16", value }),
  u32: (value: number): GgufTyped => ({ type: "u32", value }),
  i32: (value: number): GgufTyped => ({ type: "i32", value }),
  f32: (value: number): GgufTyped => ({ type: "f32", value }),
  f64: (value: number): GgufTyped => ({ type: "f64", value }),
  u64: (value: bigint | number): GgufTyped => ({ type: "u64", value }),
  i64: (value: bigint | number): GgufTyped => ({ type: "i64", value }),
  bool: (value: boolean): GgufTyped => ({ type: "bool", value }),
  str: (value: string): GgufTyped => ({ type: "str", value }),
  arr: <T extends GgufScalarType>(elementType: T, values: readonly ScalarValues[T][]): GgufTyped => ({ type: "arr", elementType, values }) as GgufTyped,
};

/** Smallest encoding of a value of each type, used to reject absurd counts before allocating. */
const MIN_VALUE_BYTES: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  9: 12,
  10: 8,
  11: 8,
  12: 8,
};

const DEFAULT_ALIGNMENT = 32;
// Caps on single header items, far above real files (vocabularies hold ~10^5 short strings,
// chat templates and tokenizer JSON blobs a few MB), so a lying header cannot exhaust memory.
const MAX_STRING_BYTES = 64 * 1024 * 1024;
const MAX_ARRAY_ELEMENTS = 1 << 24;
const MAX_DIMS = 4;
/** ggml keeps names in a 64-byte buffer including the terminating NUL. */
const MAX_NAME_BYTES = 63;
/** Minimal sizes of a metadata pair and a tensor info, for count sanity checks. */
const MIN_KV_BYTES = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8;

// ---------------------------------------------------------------------------------------------
// Reading

/** Sequential reader over a file that buffers `chunkSize` bytes at a time. */
class ChunkedReader {
  private buffer: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buffer.buffer);
  private start = 0; // file offset of buffer[0]
  private at = 0; // cursor within buffer
  private readonly decoder = new TextDecoder("utf-8");

  constructor(
    private readonly handle: FileHandle,
    readonly file: string,
    readonly fileSize: number,
    private readonly chunkSize = 1 << 20,
  ) {}

  get position(): number {
    return this.start + this.at;
  }

  get remaining(): number {
    return this.fileSize - this.position;
  }

  /** Makes `n` bytes available at the cursor; returns undefined when they already are. */
  ensure(n: number, what: string, tensor?: string): Promise<void> | undefined {
    if (this.buffer.length - this.at >= n) return undefined;
    if (n > this.remaining) {
      throw new CheckpointError(
        `truncated header: ${what} needs ${n} bytes at offset ${this.position}, only ${this.remaining} left in the file`,
        this.file,
        tensor,
      );
    }
    return this.refill(n, tensor);
  }

  private async refill(n: number, tensor?: string): Promise<void> {
    const position = this.position;
    const length = Math.min(Math.max(n, this.chunkSize), this.remaining);
    this.buffer = await readExactly(this.handle, position, length, this.file, tensor);
    this.view = new DataView(this.buffer.buffer);
    this.start = position;
    this.at = 0;
  }

  u8(): number {
    return this.buffer[this.at++]!;
  }
  i8(): number {
    return this.view.getInt8(this.at++);
  }
  u16(): number {
    const v = this.view.getUint16(this.at, true);
    this.at += 2;
    return v;
  }
  i16(): number {
    const v = this.view.getInt16(this.at, true);
    this.at += 2;
    return v;
  }
  u32(): number {
    const v = this.view.getUint32(this.at, true);
    this.at += 4;
    return v;
  }
  i32(): number {
    const v = this.view.getInt32(this.at, true);
    this.at += 4;
    return v;
  }
  f32(): number {
    const v = this.view.getFloat32(this.at, true);
    this.at += 4;
    return v;
  }
  f64(): number {
    const v = this.view.getFloat64(this.at, true);
    this.at += 8;
    return v;
  }
  u64(): bigint {
    const v = this.view.getBigUint64(this.at, true);
    this.at += 8;
    return v;
  }
  i64(): bigint {
    const v = this.view.getBigInt64(this.at, true);
    this.at += 8;
    return v;
  }
  /** u64 that must be a safe integer no larger than `max`. */
  count(what: string, max: number, tensor?: string): number {
    const v = this.u64();
    if (v > BigInt(max)) throw new CheckpointError(`${what} is ${v}, at most ${max} is possible here`, this.file, tensor);
    return Number(v);
  }

  async string(what: string, tensor?: string): Promise<string> {
    const buffered = this.bufferedString();
    if (buffered !== undefined) return buffered;
    await this.ensure(8, what, tensor);
    const length = this.count(`${what} length`, Math.min(MAX_STRING_BYTES, this.remaining - 8), tensor);
    await this.ensure(length, what, tensor);
    return this.decode(length);
  }

  /** The next string when it lies entirely in the buffer (the common case), without awaiting. */
  bufferedString(): string | undefined {
    if (this.buffer.length - this.at < 8) return undefined;
    const length = this.view.getBigUint64(this.at, true);
    if (length > BigInt(this.buffer.length - this.at - 8)) return undefined;
    this.at += 8;
    return this.decode(Number(length));
  }

  private decode(length: number): string {
    const bytes = this.buffer.subarray(this.at, this.at + length);
    this.at += length;
    return decodeAscii(bytes) ?? this.decoder.decode(bytes);
  }
}

/** Fast path for the short ASCII strings that make up most vocabularies. */
function decodeAscii(bytes: Uint8Array): string | undefined {
  if (bytes.length > 32) return undefined;
  let s = "";
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (c >= 0x80) return undefined;
    s += String.fromCharCode(c);
  }
  return s;
}

/**
 * Parses a GGUF header (metadata and tensor table) without reading tensor data. With `headerOnly`
 * the file may end after its header (a client's copy of a model it never runs): tensors are not
 * checked against the file's size, and reading one fails as a truncated file.
 */
export async function readGguf(file: string, opts: { headerOnly?: boolean } = {}): Promise<GgufFile> {
  const handle = await openForReading(file);
  try {
    const reader = new ChunkedReader(handle, file, (await handle.stat()).size);
    const { version, tensorCount, kvCount } = await readPreamble(reader);
    const metadata = new Map<string, GgufValue>();
    const metadataTypes = new Map<string, { type: number; elementType?: number }>();
    let alignment = DEFAULT_ALIGNMENT;
    for (let i = 0; i < kvCount; i++) {
      const key = await reader.string(`metadata key #${i}`);
      await reader.ensure(4, `type of metadata '${key}'`);
      const type = reader.u32();
      if (metadata.has(key)) throw new CheckpointError(`duplicate metadata key '${key}'`, file);
      const value = await readValue(reader, type, key, (elementType) => metadataTypes.set(key, { type, elementType }));
      if (!metadataTypes.has(key)) metadataTypes.set(key, { type });
      if (key === "general.alignment") alignment = checkAlignment(type, value, file);
      metadata.set(key, value);
    }
    const rawTensors = [];
    for (let i = 0; i < tensorCount; i++) rawTensors.push(await readTensorInfo(reader, i));
    const dataOffset = alignUp(reader.position, alignment);
    const tensors = new Map<string, TensorInfo>();
    const unsupportedTensors = new Map<string, GgufUnsupportedTensor>();
    const extents: { name: string; begin: number; end: number }[] = [];
    for (const raw of rawTensors) {
      if (tensors.has(raw.name) || unsupportedTensors.has(raw.name)) {
        throw new CheckpointError("duplicate tensor name", file, raw.name);
      }
      const placed = placeTensor(raw, dataOffset, alignment, reader, opts.headerOnly ?? false);
      if ("dtype" in placed) tensors.set(raw.name, placed);
      else unsupportedTensors.set(raw.name, placed);
      if (placed.byteLength !== undefined && placed.byteLength > 0) {
        extents.push({ name: raw.name, begin: placed.offset, end: placed.offset + placed.byteLength });
      }
    }
    checkNoOverlap(extents, file);
    return { file, version, metadata, metadataTypes, tensors, unsupportedTensors, alignment, dataOffset };
  } finally {
    await handle.close();
  }
}

async function readPreamble(reader: ChunkedReader) {
  const { file } = reader;
  await reader.ensure(24, "GGUF preamble (magic, version, counts)");
  const magic = String.fromCharCode(reader.u8(), reader.u8(), reader.u8(), reader.u8());
  if (magic !== "GGUF") throw new CheckpointError(`bad magic ${JSON.stringify(magic)}, expected "GGUF"`, file);
  const version = reader.u32();
  if (version !== 2 && version !== 3) {
    const hint = (version & 0xffff) === 0 ? " (a big-endian file?)" : version === 1 ? " (GGUF v1 is obsolete)" : "";
    throw new CheckpointError(`unsupported GGUF version ${version}${hint}, expected 2 or 3`, file);
  }
  const tensorCount = reader.count("tensor count", Math.floor(reader.remaining / MIN_TENSOR_INFO_BYTES));
  const kvCount = reader.count("metadata count", Math.floor(reader.remaining / MIN_KV_BYTES));
  return { version, tensorCount, kvCount };
}

async function readValue(reader: ChunkedReader, type: number, key: string, onElementType?: (elementType: number) => void): Promise<GgufValue> {
  if (type === VALUE_TYPE.str) return reader.string(`value of '${key}'`);
  if (type === VALUE_TYPE.arr) return readArray(reader, key, onElementType);
  const size = MIN_VALUE_BYTES[type];
  if (size === undefined) throw new CheckpointError(`metadata '${key}' has unknown value type ${type}`, reader.file);
  await reader.ensure(size, `value of '${key}'`);
  return readScalar(reader, type);
}

function readScalar(reader: ChunkedReader, type: number): number | bigint | boolean {
  switch (type) {
    case VALUE_TYPE.u8:
      return reader.u8();
    case VALUE_TYPE.i8:
      return reader.i8();
    case VALUE_TYPE.u16:
      return reader.u16();
    case VALUE_TYPE.i16:
      return reader.i16();
    case VALUE_TYPE.u32:
      return reader.u32();
    case VALUE_TYPE.i32:
      return reader.i32();
    case VALUE_TYPE.f32:
      return reader.f32();
    case VALUE_TYPE.bool:
      return reader.u8() !== 0;
    case VALUE_TYPE.u64:
      return reader.u64();
    case VALUE_TYPE.i64:
      return reader.i64();
    case VALUE_TYPE.f64:
      return reader.f64();
    default:
      throw new Error(`unreachable: scalar type ${type}`);
  }
}

async function readArray(reader: ChunkedReader, key: string, onElementType?: (elementType: number) => void): Promise<GgufValue[]> {
  await reader.ensure(12, `array header of '${key}'`);
  const elementType = reader.u32();
  onElementType?.(elementType);
  const elementSize = MIN_VALUE_BYTES[elementType];
  if (elementSize === undefined) {
    throw new CheckpointError(`array '${key}' has unknown element type ${elementType}`, reader.file);
  }
  const length = reader.count(`element count of array '${key}'`, Math.min(MAX_ARRAY_ELEMENTS, Math.floor((reader.remaining - 8) / elementSize)));
  const values = new Array<GgufValue>(length);
  if (elementType === VALUE_TYPE.str) {
    for (let i = 0; i < length; i++) values[i] = reader.bufferedString() ?? (await reader.string(`${key}[${i}]`));
  } else if (elementType === VALUE_TYPE.arr) {
    for (let i = 0; i < length; i++) values[i] = await readArray(reader, `${key}[${i}]`);
  } else {
    await reader.ensure(length * elementSize, `array '${key}'`);
    for (let i = 0; i < length; i++) values[i] = readScalar(reader, elementType);
  }
  return values;
}

function checkAlignment(type: number, value: GgufValue, file: string): number {
  if (type !== VALUE_TYPE.u32 || typeof value !== "number" || value === 0 || (value & (value - 1)) !== 0) {
    throw new CheckpointError(`general.alignment must be a u32 power of two, found ${String(value)}`, file);
  }
  return value;
}

interface RawTensorInfo {
  name: string;
  ne: number[];
  ggmlType: number;
  relativeOffset: number;
}

async function readTensorInfo(reader: ChunkedReader, index: number): Promise<RawTensorInfo> {
  const name = await reader.string(`name of tensor #${index}`);
  await reader.ensure(4, "dimension count", name);
  const dims = reader.u32();
  if (dims > MAX_DIMS) throw new CheckpointError(`has ${dims} dimensions, at most ${MAX_DIMS} allowed`, reader.file, name);
  await reader.ensure(8 * dims + 12, "shape, type and offset", name);
  const ne: number[] = [];
  for (let d = 0; d < dims; d++) ne.push(reader.count(`dimension ${d}`, Number.MAX_SAFE_INTEGER, name));
  const ggmlType = reader.u32();
  const relativeOffset = reader.count("data offset", Number.MAX_SAFE_INTEGER, name);
  return { name, ne, ggmlType, relativeOffset };
}

function placeTensor(
  raw: RawTensorInfo,
  dataOffset: number,
  alignment: number,
  reader: ChunkedReader,
  headerOnly: boolean,
): TensorInfo | GgufUnsupportedTensor {
  const { file } = reader;
  const fail = (message: string) => new CheckpointError(message, file, raw.name);
  const shape = [...raw.ne].reverse();
  const offset = dataOffset + raw.relativeOffset;
  const type = GGML_TYPES[raw.ggmlType];
  if (raw.relativeOffset % alignment !== 0) {
    throw fail(`data offset ${raw.relativeOffset} is not a multiple of the alignment ${alignment}`);
  }
  if (!type) {
    return { name: raw.name, ggmlType: raw.ggmlType, ggmlTypeName: `unknown`, shape, offset, file };
  }
  const inner = raw.ne[0] ?? 1;
  if (inner % type.blockSize !== 0) {
    throw fail(`${type.name} stores blocks of ${type.blockSize}, but the innermost dimension is ${inner}`);
  }
  const elements = raw.ne.reduce((a, b) => a * b, 1);
  const byteLength = (elements / type.blockSize) * type.bytesPerBlock;
  if (!Number.isSafeInteger(byteLength)) throw fail(`shape [${shape}] is too large`);
  if (!headerOnly && offset + byteLength > reader.fileSize) {
    throw fail(`${type.name} [${shape}] needs bytes [${offset}, ${offset + byteLength}), past the end of the file (${reader.fileSize} bytes)`);
  }
  if (!type.dtype) return { name: raw.name, ggmlType: raw.ggmlType, ggmlTypeName: type.name, shape, offset, byteLength, file };
  return { name: raw.name, dtype: type.dtype, shape, offset, byteLength, file };
}

function checkNoOverlap(extents: { name: string; begin: number; end: number }[], file: string): void {
  extents.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < extents.length; i++) {
    const previous = extents[i - 1]!;
    const current = extents[i]!;
    if (current.begin < previous.end) {
      throw new CheckpointError(
        `data [${current.begin}, ${current.end}) overlaps tensor '${previous.name}' [${previous.begin}, ${previous.end})`,
        file,
        current.name,
      );
    }
  }
}

/** The tensor's description; a CheckpointError when it is missing or of a type this engine cannot use. */
export function ggufTensor(model: GgufFile, name: string): TensorInfo {
  const info = model.tensors.get(name);
  if (info) return info;
  const unsupported = model.unsupportedTensors.get(name);
  if (unsupported) {
    throw new CheckpointError(
      `ggml type ${unsupported.ggmlType} (${unsupported.ggmlTypeName}) is not supported, expected one of ${SUPPORTED_DTYPES}`,
      model.file,
      name,
    );
  }
  throw new CheckpointError("no such tensor", model.file, name);
}

export async function readGgufTensor(model: GgufFile, name: string): Promise<RawTensor> {
  const info = ggufTensor(model, name);
  return { info, bytes: await readTensorBytes(info) };
}

/**
 * A metadata entry with the type it is stored as, ready for writeGguf (so a file can be rewritten
 * with its keys unchanged). Arrays of arrays are not supported.
 */
export function typedMetadata(model: GgufFile, key: string): GgufTyped {
  const value = model.metadata.get(key);
  const types = model.metadataTypes.get(key);
  if (value === undefined || !types) throw new CheckpointError(`no metadata key '${key}'`, model.file);
  const name = (t: number) => (Object.keys(VALUE_TYPE) as (keyof typeof VALUE_TYPE)[]).find((k) => VALUE_TYPE[k] === t);
  const type = name(types.type);
  if (type === "arr") {
    const elementType = types.elementType === undefined ? undefined : name(types.elementType);
    if (!elementType || elementType === "arr") throw new CheckpointError(`metadata '${key}': arrays of arrays cannot be rewritten`, model.file);
    return gguf.arr(elementType, value as never[]);
  }
  if (!type) throw new CheckpointError(`metadata '${key}' has unknown value type ${types.type}`, model.file);
  return { type, value } as GgufTyped;
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface GgufTensorInput {
  name: string;
  dtype: DType;
  /** Row-major (outermost first). */
  shape: number[];
  /** The stored bytes, or a function producing them when the tensor's turn comes. */
  bytes: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
}

/**
 * Writes a GGUF v3 file as llama.cpp expects it: tensors in the order given, each padded to the
 * alignment (`general.alignment` if given as a u32, else 32). Tensor data is streamed one tensor
 * at a time.
 */
export async function writeGguf(
  file: string,
  metadata: ReadonlyArray<readonly [key: string, value: GgufTyped]>,
  tensors: readonly GgufTensorInput[],
): Promise<void> {
  const alignmentEntry = metadata.find(([key]) => key === "general.alignment")?.[1];
  const alignment = alignmentEntry
    ? checkAlignment(VALUE_TYPE[alignmentEntry.type], alignmentEntry.type === "arr" ? [] : alignmentEntry.value, file)
    : DEFAULT_ALIGNMENT;
  const layout = layOutTensors(tensors, alignment, file);
  const header = new ByteWriter();
  header.bytes(new TextEncoder().encode("GGUF"));
  header.u32(3);
  header.u64(BigInt(tensors.length));
  header.u64(BigInt(metadata.length));
  const keys = new Set<string>();
  for (const [key, value] of metadata) {
    if (keys.has(key)) throw new CheckpointError(`duplicate metadata key '${key}'`, file);
    keys.add(key);
    header.string(key);
    writeTypedValue(header, value, key, file);
  }
  for (const { tensor, ggmlType, relativeOffset } of layout) {
    header.string(tensor.name);
    header.u32(tensor.shape.length);
    for (const dim of [...tensor.shape].reverse()) header.u64(BigInt(dim));
    header.u32(ggmlType);
    header.u64(BigInt(relativeOffset));
  }
  header.pad(alignment);

  await writeFileAtomically(file, async (handle) => {
    await writeFully(handle, header.finish());
    const padding = new Uint8Array(alignment);
    for (const { tensor, byteLength } of layout) {
      const bytes = typeof tensor.bytes === "function" ? await tensor.bytes() : tensor.bytes;
      if (bytes.length !== byteLength) {
        throw new CheckpointError(`${tensor.dtype} [${tensor.shape}] needs ${byteLength} bytes, got ${bytes.length}`, file, tensor.name);
      }
      await writeFully(handle, bytes);
      await writeFully(handle, padding.subarray(0, alignUp(byteLength, alignment) - byteLength));
    }
  });
}

function layOutTensors(tensors: readonly GgufTensorInput[], alignment: number, file: string) {
  const names = new Set<string>();
  let relativeOffset = 0;
  return tensors.map((tensor) => {
    const fail = (message: string) => new CheckpointError(message, file, tensor.name);
    if (names.has(tensor.name)) throw fail("duplicate tensor name");
    names.add(tensor.name);
    if (new TextEncoder().encode(tensor.name).length > MAX_NAME_BYTES) {
      throw fail(`name is longer than ${MAX_NAME_BYTES} bytes, which llama.cpp cannot load`);
    }
    const ggmlType = GGML_TYPE_ID_OF[tensor.dtype];
    if (ggmlType === undefined) throw fail(`dtype ${tensor.dtype} has no ggml type, expected one of ${SUPPORTED_DTYPES}`);
    if (tensor.shape.length > MAX_DIMS) throw fail(`has ${tensor.shape.length} dimensions, at most ${MAX_DIMS} allowed`);
    let byteLength: number;
    try {
      byteLength = tensorByteLength(tensor.dtype, tensor.shape);
    } catch (e) {
      throw fail((e as Error).message);
    }
    const placed = { tensor, ggmlType, relativeOffset, byteLength };
    relativeOffset += alignUp(byteLength, alignment);
    return placed;
  });
}

function writeTypedValue(out: ByteWriter, typed: GgufTyped, key: string, file: string): void {
  // Checked at run time too: untyped callers could pass a misspelt type name.
  const scalarType: unknown = typed.type === "arr" ? typed.elementType : typed.type;
  if (typeof scalarType !== "string" || scalarType === "arr" || !Object.hasOwn(VALUE_TYPE, scalarType)) {
    throw new CheckpointError(
      `metadata '${key}': unknown GGUF type ${JSON.stringify(scalarType)}, expected one of ${Object.keys(VALUE_TYPE).join(", ")}`,
      file,
    );
  }
  out.u32(VALUE_TYPE[typed.type]);
  if (typed.type === "arr") {
    out.u32(VALUE_TYPE[typed.elementType]);
    out.u64(BigInt(typed.values.length));
    typed.values.forEach((value, i) => writeScalar(out, typed.elementType, value, `${key}[${i}]`, file));
  } else {
    writeScalar(out, typed.type, typed.value, key, file);
  }
}

const INTEGER_RANGES: Partial<Record<GgufScalarType, readonly [bigint, bigint]>> = {
  u8: [0n, 0xffn],
  i8: [-0x80n, 0x7fn],
  u16: [0n, 0xffffn],
  i16: [-0x8000n, 0x7fffn],
  u32: [0n, 0xffffffffn],
  i32: [-0x80000000n, 0x7fffffffn],
  u64: [0n, 2n ** 64n - 1n],
  i64: [-(2n ** 63n), 2n ** 63n - 1n],
};

function writeScalar(out: ByteWriter, type: GgufScalarType, value: unknown, key: string, file: string): void {
  const range = INTEGER_RANGES[type];
  if (range) {
    const integer = typeof value === "bigint" ? value : Number.isInteger(value) ? BigInt(value as number) : undefined;
    if (integer === undefined || integer < range[0] || integer > range[1]) {
      throw new CheckpointError(`metadata '${key}': ${String(value)} is not a valid ${type}`, file);
    }
  } else if (type === "str" ? typeof value !== "string" : type === "bool" ? typeof value !== "boolean" : typeof value !== "number") {
    throw new CheckpointError(`metadata '${key}': ${String(value)} is not a valid ${type}`, file);
  }
  switch (type) {
    case "u8":
      return out.u8(value as number);
    case "i8":
      return out.u8((value as number) & 0xff);
    case "u16":
    case "i16":
      return out.u16((value as number) & 0xffff);
    case "u32":
    case "i32":
      return out.u32((value as number) >>> 0);
    case "u64":
    case "i64":
      return out.u64(BigInt.asUintN(64, BigInt(value as bigint | number)));
    case "f32":
      return out.f32(value as number);
    case "f64":
      return out.f64(value as number);
    case "bool":
      return out.u8(value ? 1 : 0);
    case "str":
      return out.string(value as string);
  }
}

/** Growable little-endian byte buffer for the header. */
class ByteWriter {
  private buffer = new Uint8Array(1 << 16);
  private view = new DataView(this.buffer.buffer);
  private length = 0;
  private readonly encoder = new TextEncoder();

  private reserve(n: number): number {
    if (this.length + n > this.buffer.length) {
      const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.length + n));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
      this.view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  // reserve() may replace buffer and view, so it must run before they are read.
  u8(v: number): void {
    const at = this.reserve(1);
    this.buffer[at] = v;
  }
  u16(v: number): void {
    const at = this.reserve(2);
    this.view.setUint16(at, v, true);
  }
  u32(v: number): void {
    const at = this.reserve(4);
    this.view.setUint32(at, v, true);
  }
  u64(v: bigint): void {
    const at = this.reserve(8);
    this.view.setBigUint64(at, v, true);
  }
  f32(v: number): void {
    const at = this.reserve(4);
    this.view.setFloat32(at, v, true);
  }
  f64(v: number): void {
    const at = this.reserve(8);
    this.view.setFloat64(at, v, true);
  }
  bytes(b: Uint8Array): void {
    const at = this.reserve(b.length);
    this.buffer.set(b, at);
  }
  string(s: string): void {
    // Encode straight into the buffer: at most 3 UTF-8 bytes per UTF-16 unit.
    const lengthAt = this.reserve(8 + 3 * s.length);
    const { written } = this.encoder.encodeInto(s, this.buffer.subarray(lengthAt + 8));
    this.view.setBigUint64(lengthAt, BigInt(written), true);
    this.length = lengthAt + 8 + written;
  }
  pad(alignment: number): void {
    const n = alignUp(this.length, alignment) - this.length;
    const at = this.reserve(n);
    this.buffer.fill(0, at, at + n);
  }
  finish(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
