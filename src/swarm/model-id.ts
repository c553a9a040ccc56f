// The name a model's blocks are announced under in the DHT. Nodes and clients derive the same
// default from the checkpoint's name (a folder `tessera-kjv` and a file `tessera-kjv.gguf` hold
// the same model), and either can be told another with --model-id. An EE-encrypted checkpoint
// (one with an ee-manifest.json, src/ee/manifest.ts) is announced under its deployment id, which
// a client holding the key computes with deploymentId(key).
import { basename } from "node:path";
import { readManifestFor } from "../ee/manifest.js";

export function defaultModelId(checkpointPath: string): string {
  return basename(checkpointPath.replace(/[\\/]+$/, "")).replace(/\.gguf$/i, "");
}

/** The manifest's deploymentId for an encrypted checkpoint, else defaultModelId. */
export async function modelIdFor(checkpointPath: string): Promise<string> {
  return (await readManifestFor(checkpointPath))?.deploymentId ?? defaultModelId(checkpointPath);
}
