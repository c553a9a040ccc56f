// The public manifest of an EE deployment: where it sits beside an encrypted checkpoint, and
// reading it back (nodes announce under its deploymentId; it never holds key material).
import { existsSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { EE_LEVELS, EeKeyError, type EeLevel, type RopeLayout } from "./key.js";

/** Public description of an EE deployment; never holds key material. */
export interface EeManifest {
  level: EeLevel;
  ropeLayout: RopeLayout;
  deploymentId: string;
  /** checkpointHash of the encrypted output. */
  modelHash: string;
}

export const MANIFEST_FILE_NAME = "ee-manifest.json";

/**
 * `<folder>/ee-manifest.json` for a Hugging Face folder, `<name>.ee-manifest.json` beside
 * `<name>.gguf` (or beside a GGUF file of any other name). Without `format`, a folder is
 * Hugging Face and anything else GGUF.
 */
export function manifestFileFor(checkpointPath: string, format?: "hf" | "gguf"): string {
  const path = checkpointPath.replace(/[\\/]+$/, "");
  const hf = format ? format === "hf" : existsSync(path) && statSync(path).isDirectory();
  return hf ? join(path, MANIFEST_FILE_NAME) : path.replace(/(\.gguf)?$/i, `.${MANIFEST_FILE_NAME}`);
}

/** The manifest beside an encrypted checkpoint, or undefined for a plaintext one (no manifest file). */
export async function readManifestFor(checkpointPath: string): Promise<EeManifest | undefined> {
  const file = manifestFileFor(checkpointPath);
  if (!existsSync(file)) return undefined;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await readFile(file, "utf8"));
  } catch (e) {
    throw new EeKeyError(`${file}: EE manifest is not readable JSON: ${(e as Error).message}`);
  }
  const hex = (field: string) => {
    if (typeof json[field] !== "string" || !/^[0-9a-f]{64}$/.test(json[field] as string)) {
      throw new EeKeyError(`${file}: EE manifest field '${field}' must be a sha256 in lowercase hex, found ${JSON.stringify(json[field])}`);
    }
    return json[field] as string;
  };
  if (!EE_LEVELS.includes(json.level as EeLevel)) {
    throw new EeKeyError(`${file}: EE manifest field 'level' must be one of ${EE_LEVELS.join(", ")}, found ${JSON.stringify(json.level)}`);
  }
  // A `baseModelHash` written by earlier versions is ignored (it named the public base model).
  return {
    level: json.level as EeLevel,
    ropeLayout: json.ropeLayout as RopeLayout,
    deploymentId: hex("deploymentId"),
    modelHash: hex("modelHash"),
  };
}
