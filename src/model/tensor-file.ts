// Byte-level access to checkpoint files: ranged tensor reads, complete writes, dtype storage sizes.

import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { CheckpointError, type DType, type TensorInfo } from "./types.js";
import { errorMessage, logger } from "../log.js";

const log = logger("model:files");

/** How a dtype is stored: `blockSize` elements take `bytesPerBlock` bytes (1 element per block for plain types). */
export interface DTypeLayout {
  blockSize: number;
  bytesPerBlock: number;
}

export const DTYPE_LAYOUT: Readonly<Record<DType, DTypeLayout>> = {
  F32: { blockSize: 1, bytesPerBlock: 4 },
  F16: { blockSize: 1, bytesPerBlock: 2 },
  BF16: { blockSize: 1, bytesPerBlock: 2 },
  I32: { blockSize: 1, bytesPerBlock: 4 },
  I64: { blockSize: 1, bytesPerBlock: 8 },
  U8: { blockSize: 1, bytesPerBlock: 1 },
  Q8_0: { blockSize: 32, bytesPerBlock: 34 },
  Q4_0: { blockSize: 32, bytesPerBlock: 18 },
};

/** Product of the dimensions; throws RangeError when it is not an exact (safe) integer. */
export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) throw new RangeError(`invalid dimension ${dim} in shape [${shape}]`);
    n *= dim;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`shape [${shape}] has too many elements`);
  return n;
}

/**
 * Bytes a tensor of this dtype and row-major shape occupies. Block dtypes need the innermost
 * dimension to be a multiple of the block size. Throws RangeError otherwise.
 */
export function tensorByteLength(dtype: DType, shape: readonly number[]): number {
  const { blockSize, bytesPerBlock } = DTYPE_LAYOUT[dtype];
  const count = elementCount(shape);
  if (blockSize > 1) {
    const inner = shape.length === 0 ? 1 : shape[shape.length - 1]!;
    if (inner % blockSize !== 0) {
      throw new RangeError(`${dtype} needs the innermost dimension to be a multiple of ${blockSize}, got ${inner}`);
    }
  }
  const bytes = (count / blockSize) * bytesPerBlock;
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`shape [${shape}] is too large`);
  return bytes;
}

/** Reads exactly `length` bytes at `position`; a short read (truncated file) is a CheckpointError. */
export async function readExactly(handle: FileHandle, position: number, length: number, file: string, tensor?: string): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    // A single read(2) returns at most ~2 GiB on Linux, so large tensors take several calls.
    const { bytesRead } = await handle.read(out, done, length - done, position + done);
    if (bytesRead === 0) {
      throw new CheckpointError(`truncated file: expected ${length} bytes at offset ${position}, only ${done} available`, file, tensor);
    }
    done += bytesRead;
  }
  return out;
}

/** The stored bytes of one tensor, read from [offset, offset + byteLength) of its file. */
export async function readTensorBytes(info: TensorInfo): Promise<Uint8Array> {
  const [bytes] = await readTensorsBytes([info]);
  return bytes!;
}

/** The stored bytes of many tensors, in the order given; each file is opened once. */
export async function readTensorsBytes(infos: readonly TensorInfo[]): Promise<Uint8Array[]> {
  const out = new Array<Uint8Array>(infos.length);
  const byFile = new Map<string, number[]>();
  infos.forEach((info, i) => {
    const indices = byFile.get(info.file);
    if (indices) indices.push(i);
    else byFile.set(info.file, [i]);
  });
  for (const [file, indices] of byFile) {
    const handle = await openForReading(file);
    try {
      for (const i of indices) {
        const info = infos[i]!;
        out[i] = await readExactly(handle, info.offset, info.byteLength, file, info.name);
      }
    } finally {
      await handle.close();
    }
  }
  return out;
}

export async function openForReading(file: string): Promise<FileHandle> {
  try {
    return await open(file, "r");
  } catch (e) {
    throw new CheckpointError(`cannot open: ${(e as Error).message}`, file);
  }
}

/** Writes all of `bytes` at the handle's current position (FileHandle.write may write less). */
export async function writeFully(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done);
    done += bytesWritten;
  }
}

/**
 * Creates `file` by running `write` on a temporary sibling that is renamed into place on success,
 * so an interrupted write never leaves a truncated checkpoint under the final name.
 */
export async function writeFileAtomically(file: string, write: (handle: FileHandle) => Promise<void>): Promise<void> {
  const temporary = `${file}.${process.pid}.partial`;
  const handle = await open(temporary, "w");
  try {
    await write(handle);
    await handle.close();
    await rename(temporary, file);
  } catch (e) {
    // The write's own error is the one to report; a failed close on top of it is only logged.
    await handle.close().catch((closeError) => log.error("closing %s after a failed write: %s", temporary, errorMessage(closeError)));
    await rm(temporary, { force: true });
    throw e;
  }
}
