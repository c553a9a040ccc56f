// What a swarm client needs of a model: its config, its tokenizer and the id the nodes announce
// it under, never its weights. A Hugging Face folder needs only config.json and the tokenizer
// files (CLIENT_FILES); of a .gguf file only the header (metadata and tensor table) is parsed,
// and its tensor data is never needed (a copy with the data zeroed gives the same ModelInfo).
import { access, stat } from "node:fs/promises";
import { join } from "node:path";
import { type EeManifest, manifestFileFor, readManifestFor } from "../ee/manifest.js";
import { modelIdFor } from "./model-id.js";
import { type CheckpointFormat, ggufConfig, readHfConfig } from "../model/checkpoint.js";
import { readGguf } from "../model/gguf.js";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.js";
import { CheckpointError, type ModelConfig } from "../model/types.js";

/**
 * The files of a Hugging Face folder a client reads, when present: config.json and tokenizer.json
 * are required, the rest optional (ee-manifest.json only beside an encrypted deployment). A folder
 * holding just these is a complete client model.
 */
export const CLIENT_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "chat_template.jinja",
  "generation_config.json",
  "ee-manifest.json",
] as const;

const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"];

export interface ModelInfo {
  format: CheckpointFormat;
  path: string;
  /**
   * The checkpoint's config, as openCheckpoint gives it, except that a GGUF's ropeFreqFactors
   * (tensor data, which only the nodes' rotary embedding uses) is not read.
   */
  config: ModelConfig;
  /** The id nodes serving this checkpoint announce it under by default (modelIdFor). */
  modelId: string;
  /** The EE manifest beside the checkpoint: set for an encrypted deployment. */
  manifest?: EeManifest;
  /** GGUF metadata (tokenizer etc.); empty for Hugging Face folders. */
  metadata: Map<string, unknown>;
  /** The files read so far: config.json or the .gguf header, tokenizer files, the EE manifest. */
  files: string[];
  /** The tokenizer, loaded on first call (by openModelInfo already, unless told `tokenizer: false`). */
  tokenizer(): Promise<Tokenizer>;
}

export interface ModelInfoOptions {
  /** Load (and so require) the tokenizer now; false defers it to the first `tokenizer()` call. Default true. */
  tokenizer?: boolean;
}

/** Opens a Hugging Face folder or a .gguf file for a client: config, tokenizer, model id; no tensors. */
export async function openModelInfo(path: string, opts: ModelInfoOptions = {}): Promise<ModelInfo> {
  const st = await stat(path).catch(() => {
    throw new CheckpointError("no such file or directory", path);
  });
  const { loadTokenizer: load, ...info } = st.isDirectory() ? await hfInfo(path) : await ggufInfo(path);
  const manifest = await readManifestFor(path);
  if (manifest) info.files.push(manifestFileFor(path));
  const modelId = await modelIdFor(path);
  let tokenizer: Promise<Tokenizer> | undefined;
  const result: ModelInfo = {
    ...info,
    modelId,
    ...(manifest ? { manifest } : {}),
    tokenizer: () => (tokenizer ??= load()),
  };
  if (opts.tokenizer ?? true) await result.tokenizer();
  return result;
}

interface FormatInfo {
  format: CheckpointFormat;
  path: string;
  config: ModelConfig;
  metadata: Map<string, unknown>;
  files: string[];
  loadTokenizer(): Promise<Tokenizer>;
}

async function hfInfo(dir: string): Promise<FormatInfo> {
  const config = await readHfConfig(dir);
  const files = [join(dir, "config.json")];
  const metadata = new Map<string, unknown>();
  return {
    format: "hf",
    path: dir,
    config,
    metadata,
    files,
    async loadTokenizer() {
      if (!(await exists(join(dir, "tokenizer.json")))) {
        throw new CheckpointError(
          "missing tokenizer.json (the client tokenizes: copy the checkpoint's tokenizer.json, and tokenizer_config.json if it has one, beside config.json)",
          dir,
        );
      }
      const tokenizer = await loadTokenizer({ format: "hf", path: dir, metadata });
      for (const name of TOKENIZER_FILES) {
        const file = join(dir, name);
        if (await exists(file)) files.push(file);
      }
      return tokenizer;
    },
  };
}

/** readGguf parses the header (metadata, tensor names and shapes); no tensor is read. */
async function ggufInfo(file: string): Promise<FormatInfo> {
  const gguf = await readGguf(file, { headerOnly: true });
  return {
    format: "gguf",
    path: file,
    config: ggufConfig(gguf),
    metadata: gguf.metadata,
    files: [file],
    loadTokenizer: () => loadTokenizer({ format: "gguf", path: file, metadata: gguf.metadata }),
  };
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}
