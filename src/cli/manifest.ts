import { openCheckpoint } from "../model/checkpoint.js";
import type { WeightFormat } from "../engine/interface.js";
import { buildManifest, defaultManifestPath, writeManifest } from "../verify/manifest.js";
import { withProgress } from "./progress.js";

/** Writes a checkpoint's model manifest (per-tensor, per-block, embedding and head hashes) and prints its id. */
export async function manifestCommand(flags: { model: string; weights: WeightFormat; out?: string; progress?: boolean }): Promise<void> {
  const checkpoint = await openCheckpoint(flags.model);
  const manifest = await withProgress("hashing tensors", flags.progress !== false, (onProgress) => buildManifest(checkpoint, flags.weights, onProgress));
  const out = flags.out ?? defaultManifestPath(flags.model);
  await writeManifest(out, manifest);
  console.log(`manifest ${manifest.id}`);
  console.log(`wrote ${out} (${Object.keys(manifest.tensors).length} tensors, ${manifest.numBlocks} blocks, weights ${manifest.format})`);
}
