import { convertToGguf } from "../model/convert.js";
import { openCheckpoint } from "../model/checkpoint.js";
import type { GgufExportType } from "../model/gguf-export.js";
import { withProgress } from "./progress.js";

export async function convertCommand(flags: { model: string; out: string; dtype: GgufExportType }): Promise<void> {
  const checkpoint = await openCheckpoint(flags.model);
  await withProgress(`converting to GGUF ${flags.dtype}`, true, (onProgress) => convertToGguf(checkpoint, flags.out, flags.dtype, onProgress));
  console.log(`wrote ${flags.out}`);
}
