// A checkpoint's identity: SHA-256 over its files (config and weights, name-sorted, each name then its bytes), so two
// nodes serving the same weights announce the same hash, whatever their paths.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { basename, join } from "node:path";
import type { Checkpoint } from "./checkpoint.js";

export async function checkpointHash(checkpoint: Pick<Checkpoint, "files" | "format" | "path">): Promise<string> {
  const hash = createHash("sha256");
  const configFile = checkpoint.format === "hf" ? [join(checkpoint.path, "config.json")] : [];
  const files = [...configFile, ...checkpoint.files].sort((a, b) => basename(a).localeCompare(basename(b)));
  for (const file of files) {
    hash.update(`${basename(file)}\0`);
    for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
  }
  return hash.digest("hex");
}
