import { existsSync } from "node:fs";
import { encryptModel } from "../ee/encrypt-model.js";
import type { EeLevel } from "../ee/key.js";
import type { WeightFormat } from "../engine/interface.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { buildManifest, defaultManifestPath, writeManifest } from "../verify/manifest.js";
import { withProgress } from "./progress.js";

interface EncryptFlags {
  model: string;
  key: string;
  level: EeLevel;
  out: string;
  weights: WeightFormat;
}

export async function encryptModelCommand(flags: EncryptFlags): Promise<void> {
  if (!existsSync(flags.key)) console.error(`creating key ${flags.key} (mode 0600; keep it secret: it decrypts this deployment's token ids)`);
  const result = await withProgress(`encrypting (${flags.level})`, true, (onProgress) =>
    encryptModel({ model: flags.model, keyFile: flags.key, level: flags.level, out: flags.out, onProgress }),
  );
  if (result.requantized.length > 0) {
    console.error(`requantized ${result.requantized.length} quantized tensors after a column permutation: not bit-exact`);
  }
  console.log(`wrote ${flags.out} and ${result.manifestFile} (deployment ${result.manifest.deploymentId.slice(0, 16)}…)`);
  // The encrypted checkpoint's own model manifest, for `tessera node --manifest` and clients' `--manifest`.
  const encrypted = await openCheckpoint(flags.out);
  const model = await withProgress("hashing the encrypted tensors", true, (onProgress) => buildManifest(encrypted, flags.weights, onProgress));
  const modelManifestFile = defaultManifestPath(flags.out);
  await writeManifest(modelManifestFile, model);
  console.log(`wrote ${modelManifestFile} (model manifest ${model.id})`);
}
