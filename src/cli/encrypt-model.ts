import { existsSync } from "node:fs";
import { encryptModel } from "../ee/encrypt-model.js";
import type { EeLevel } from "../ee/key.js";
import { withProgress } from "./progress.js";

interface EncryptFlags {
  model: string;
  key: string;
  level: EeLevel;
  out: string;
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
}
