// Converts a Hugging Face folder into a GGUF file (F32, F16, Q8_0 or Q4_0) that llama.cpp and
// Tessera both load, tokenizer and chat template included.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ggufTokenizerMetadata, type BpeVocab } from "./bpe-train.js";
import type { Checkpoint } from "./checkpoint.js";
import { expectedShapes } from "./config.js";
import { gguf, type GgufTyped } from "./gguf.js";
import { exportGguf, ggufArchitectureOf, type GgufExportType } from "./gguf-export.js";
import { CheckpointError } from "./types.js";

export async function convertToGguf(
  checkpoint: Checkpoint,
  out: string,
  dtype: GgufExportType,
  onTensor?: (done: number, total: number) => void,
): Promise<void> {
  if (checkpoint.format !== "hf") throw new CheckpointError("is already GGUF; convert takes a Hugging Face folder", checkpoint.path);
  const total = expectedShapes(checkpoint.config).size;
  let done = 0;
  await exportGguf(out, {
    config: checkpoint.config,
    architecture: ggufArchitectureOf(checkpoint.config),
    name: checkpoint.path.split("/").filter(Boolean).at(-1) ?? "model",
    dtype,
    read: async (name) => {
      const values = await checkpoint.readF32(name);
      onTensor?.(++done, total);
      return values;
    },
    extraMetadata: await tokenizerMetadata(checkpoint.path),
  });
}

/** GGUF tokenizer keys for a byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen2 style). */
async function tokenizerMetadata(dir: string): Promise<Array<[string, GgufTyped]>> {
  const file = join(dir, "tokenizer.json");
  const json = JSON.parse(await readFile(file, "utf8").catch(() => {
    throw new CheckpointError("missing tokenizer.json", dir);
  }));
  const config = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8").catch(() => "{}"));
  const model = json.model ?? {};
  if (model.type !== "BPE" || json.pre_tokenizer?.type !== "ByteLevel") {
    throw new CheckpointError(
      `only byte-level BPE tokenizers convert to GGUF so far (found model ${model.type}, pre-tokenizer ${json.pre_tokenizer?.type})`,
      file,
    );
  }
  const tokens: string[] = [];
  for (const [token, id] of Object.entries(model.vocab as Record<string, number>)) tokens[id] = token;
  const specialTokens: BpeVocab["specialTokens"] = [];
  for (const added of json.added_tokens ?? []) {
    tokens[added.id] = added.content;
    if (added.special) specialTokens.push({ token: added.content, id: added.id });
  }
  const merges = (model.merges as (string | [string, string])[]).map((m) =>
    (typeof m === "string" ? m.split(" ") : m) as [string, string],
  );
  const idOf = (t: unknown) => (typeof t === "string" ? tokens.indexOf(t) : typeof t === "object" && t ? tokens.indexOf((t as { content: string }).content) : -1);
  const bosId = idOf(config.bos_token);
  const eosId = idOf(config.eos_token);
  const meta = ggufTokenizerMetadata(
    { tokens, merges, specialTokens },
    { bosId: Math.max(bosId, 0), eosId: Math.max(eosId, 0), addBos: Boolean(config.add_bos_token) },
  );
  if (typeof config.chat_template === "string") meta.push(["tokenizer.chat_template", gguf.str(config.chat_template)]);
  return meta;
}
